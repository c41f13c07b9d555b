"""LLaDA-8B-Instruct / LLaDA-1.5 generation settings (upstream OpenCompass; reference.md §6).

Upstream evaluated the Instruct models only with OpenCompass, whose prompts differ from
lm-eval's; these configs carry the same SAMPLER settings onto the nearest lm-eval task, so scores
are comparable in spirit, not digit for digit. steps = gen_length throughout.

  lladax eval --checkpoint DIR --eval-config configs/eval/instruct.py:gsm8k --output r.json

get_config(task) -> ConfigDict(tasks, num_fewshot, model_args, anchor).
"""

import ml_collections

from lladax.eval.model_args import check_model_args


def _gen(length: int, block: int | None = None, **flags) -> dict:
    """Sampler settings (block None: one block) with one prompt per generate call."""
    return dict(gen_length=length, steps=length, block_length=block, batch_size=1, **flags)


_CONF = dict(confidence_eos_eot_inf=True)
TASKS = {
    # name: (lm-eval task, num_fewshot, model_args, anchor = internal / OpenCompass score)
    "mmlu": ("mmlu_generative", None, _gen(3), "65.5 / 65.4"),
    "mmlu_pro": ("mmlu_pro", None, _gen(256), "37.0 / 36.6"),
    "arc_challenge": ("arc_challenge_chat", None, _gen(512), "88.5 / 89.2"),
    "gsm8k": ("gsm8k", None, _gen(512, **_CONF), "69.4 / 68.8"),
    "minerva_math": ("minerva_math", None, _gen(512, **_CONF), "31.9 / 29.6"),
    "gpqa": ("gpqa_main_generative_n_shot", None, _gen(64, **_CONF), "33.3 / 32.3"),
    "humaneval": ("humaneval", None, _gen(512, logits_eos_inf=True), "49.4 / 47.0"),
    "mbpp": ("mbpp", None, _gen(256, **_CONF), "41.0 / 39.6"),
    # semi-autoregressive variants (small blocks)
    "gsm8k_semi_ar": ("gsm8k", None, _gen(256, 8), "78.6"),
    "minerva_math_semi_ar": ("minerva_math", None, _gen(512, 64), "42.2"),
    # LLaDA-1.5 (internal numbers)
    "llada15_gsm8k": ("gsm8k", None, _gen(256, 16), "83.8"),
    "llada15_minerva_math": ("minerva_math", None, _gen(1024, 128), "42.6"),
    "llada15_gpqa": ("gpqa_main_generative_n_shot", None, _gen(256, 16), "36.9"),
    "llada15_humaneval": ("humaneval", None, _gen(512, 32), "52.4"),
    "llada15_mbpp": ("mbpp", None, _gen(512, 32), "42.8"),
    "llada15_ifeval": ("ifeval", None, _gen(256, 16), "66.2"),
}


def get_config(task: str = "gsm8k"):
    if task not in TASKS:
        raise ValueError(f"unknown instruct eval task {task!r}: choose from {', '.join(TASKS)}")
    name, shots, args, anchor = TASKS[task]
    check_model_args(args)  # an unknown or bad model arg (sampler's included): one line, now
    return ml_collections.ConfigDict(
        dict(tasks=name, num_fewshot=shots, model_args=args, anchor=anchor)
    )
