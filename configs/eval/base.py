"""LLaDA-8B-Base lm-eval settings (upstream eval_llada_lm_eval.sh + EVAL.md; reference.md §6).

  lladax eval --checkpoint DIR --eval-config configs/eval/base.py:arc_challenge --output r.json

get_config(task) -> ConfigDict(tasks, num_fewshot, model_args, anchor). `anchor` is the
published score (EVAL.md: without / with CFG for the ppl tasks). num_fewshot None = the task's
own default in lm-eval (gen tasks; upstream did not override it).
"""

import ml_collections

from lladax.eval.model_args import check_model_args

_PPL = dict(mc_num=128, batch_size=16)  # likelihood tasks: Monte-Carlo ELBO
_PPL_1 = dict(mc_num=1, batch_size=1)  # single-token answers: one sample is exact enough
_GEN = dict(gen_length=1024, steps=1024, block_length=1024)  # 512 or 256 give ~the same

TASKS = {
    # name: (lm-eval task, num_fewshot, model_args, anchor)
    "gpqa": ("gpqa_main_n_shot", 5, dict(_PPL, cfg_scale=0.5), "25.2 / 26.1"),
    "truthfulqa_mc2": ("truthfulqa_mc2", 0, dict(_PPL, cfg_scale=2.0), "46.1 / 46.4"),
    "arc_challenge": ("arc_challenge", 0, dict(_PPL, cfg_scale=0.5), "45.9 / 47.9"),
    "hellaswag": ("hellaswag", 0, dict(_PPL, cfg_scale=0.5), "70.5 / 72.5"),
    "winogrande": ("winogrande", 5, dict(_PPL, cfg_scale=0.0), "74.8 / 74.8"),
    "piqa": ("piqa", 0, dict(_PPL, cfg_scale=0.5), "73.6 / 74.4"),
    "mmlu": ("mmlu", 5, dict(_PPL_1, cfg_scale=0.0), "65.9"),
    "cmmlu": ("cmmlu", 5, dict(_PPL_1, cfg_scale=0.0), "69.9"),
    "ceval": ("ceval-valid", 5, dict(_PPL_1, cfg_scale=0.0), "70.5"),
    "bbh": ("bbh", None, dict(_GEN, batch_size=1), "49.7"),
    "gsm8k": ("gsm8k", None, dict(_GEN, batch_size=1), "70.3"),
    "minerva_math": ("minerva_math", None, dict(_GEN, batch_size=1), "31.4"),
    "humaneval": ("humaneval", None, dict(_GEN, batch_size=1), "35.4"),
    "mbpp": ("mbpp", None, dict(_GEN, batch_size=1), "40.0"),
}


def get_config(task: str = "arc_challenge"):
    if task not in TASKS:
        raise ValueError(f"unknown base eval task {task!r}: choose from {', '.join(TASKS)}")
    name, shots, args, anchor = TASKS[task]
    check_model_args(args)  # an unknown or bad model arg (sampler's included): one line, now
    return ml_collections.ConfigDict(
        dict(tasks=name, num_fewshot=shots, model_args=args, anchor=anchor)
    )
