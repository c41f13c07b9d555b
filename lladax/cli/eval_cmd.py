"""`lladax eval`: lm-evaluation-harness tasks on a lladax or HF checkpoint (wraps simple_evaluate).

  lladax eval --checkpoint runs/small --tasks arc_easy --model-args mc_num=32,cfg_scale=0.5 \\
      --limit 50 --output results.json
  lladax eval --checkpoint DIR --eval-config configs/eval/base.py:arc_challenge --output r.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

INSTALL_HINT = "lm-eval is not installed: install with `uv sync --extra eval` (or pip install " \
               "'lladax[eval]')"


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = sub.add_parser(name, help="run lm-evaluation-harness tasks (loglikelihood via the ELBO, "
                                  "generation via the sampler)", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="a `lladax train` workdir or a Hugging Face LLaDA directory")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    p.add_argument("--model-args", default="",
                   help="key=value,... (mc_num, cfg_scale, gen_length, steps, block_length, "
                        "remasking, logits_eos_inf, confidence_eos_eot_inf, batch_size, dtype, "
                        "seed, ...)")
    p.add_argument("--eval-config", default=None,
                   help="configs/eval/<base|instruct>.py:<task>: the reference's settings for a "
                        "task (tasks, few-shot, model args); explicit flags override them")
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--include-path", default=None, help="directory of extra task YAMLs")
    p.add_argument("--only-include-path", action="store_true",
                   help="index only the --include-path tasks, not lm-eval's built-in ones (faster)")
    p.add_argument("--limit", type=float, default=None,
                   help="examples per task (an int, or a fraction < 1)")
    p.add_argument("--output", required=True, help="where to write lm-eval's results JSON")
    p.add_argument("--log-samples", action="store_true", help="also store per-sample outputs")


def _eval_config(spec: str) -> dict[str, Any]:
    from lladax.cli.config_files import load_config_file

    if ":" not in spec:
        raise ValueError(f"--eval-config {spec!r} needs a task: e.g. configs/eval/base.py:gsm8k")
    c = load_config_file(spec)
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    import lladax.evaluate  # registers the `lladax` model with lm-eval

    preset = _eval_config(args.eval_config) if args.eval_config else {}
    tasks = args.tasks or preset.get("tasks")
    if not tasks:
        raise ValueError("no tasks: pass --tasks name[,name...] or --eval-config FILE:TASK")
    model_args = dict(preset.get("model_args", {}))
    from lm_eval.utils import simple_parse_args_string

    model_args.update(simple_parse_args_string(args.model_args))
    model_args["checkpoint"] = args.checkpoint
    lm = lladax.evaluate.LLaDAEval(**model_args)  # validates args before any task is loaded
    limit = args.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    fewshot = args.num_fewshot if args.num_fewshot is not None else preset.get("num_fewshot")
    results = lm_eval.simple_evaluate(
        model=lm, tasks=tasks.split(",") if isinstance(tasks, str) else list(tasks),
        num_fewshot=fewshot, limit=limit, log_samples=args.log_samples,
        task_manager=TaskManager(include_path=args.include_path,
                                 include_defaults=not args.only_include_path),
        random_seed=lm.opts["seed"], numpy_random_seed=lm.opts["seed"],
        fewshot_random_seed=lm.opts["seed"])
    if results is None:
        raise ValueError("lm-eval returned no results (non-zero rank?)")
    results["config"]["model_args"] = {k: v for k, v in lm.opts.items()}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    for task, metrics in results.get("results", {}).items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        print(task, json.dumps(shown))
    print(f"wrote {out}")
    return 0
