"""`lladax eval`: lm-evaluation-harness tasks on a lladax or HF checkpoint (wraps simple_evaluate).

  lladax eval --checkpoint runs/small --tasks arc_easy --model-args mc_num=32,cfg_scale=0.5 \\
      --limit 50 --output results.json
  lladax eval --checkpoint DIR --eval-config configs/eval/base.py:arc_challenge --output r.json

Every flag, model arg, task name and the --output path are checked before the model loads.
--output is written atomically (a temporary file renamed into place) and never replaces a file
that is not an earlier `lladax eval` result; replacing one of those needs --overwrite.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from lladax.cli.common import TOKENIZER_HELP, command_parser
from lladax.eval.model_args import MODEL_ARGS, parse_arg_string, parse_model_args
from lladax.files import atomic_write
from lladax.store.loading import check_model_path

RESULT_KEY = "lladax_eval"  # top-level key of every results file `lladax eval` writes
INSTALL_HINT = (
    "lm-eval is not installed: install with `uv sync --extra eval` (or pip install 'lladax[eval]')"
)


def add_parser(sub: argparse._SubParsersAction, name: str) -> None:
    p = command_parser(
        sub,
        name,
        "run lm-evaluation-harness tasks (loglikelihood via the ELBO, generation via the sampler)",
        __doc__,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="a `lladax train` workdir or a Hugging Face LLaDA directory",
    )
    p.add_argument("--tokenizer", default=None, metavar="PATH", help=TOKENIZER_HELP)
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval task names")
    p.add_argument(
        "--model-args",
        default="",
        help=f"key=value,... ({', '.join(MODEL_ARGS)})",
    )
    p.add_argument(
        "--eval-config",
        default=None,
        help="configs/eval/<base|instruct>.py:<task>: the reference's settings for a "
        "task (tasks, few-shot, model args); explicit flags override them",
    )
    p.add_argument("--num-fewshot", type=int, default=None)
    p.add_argument("--include-path", default=None, help="directory of extra task YAMLs")
    p.add_argument(
        "--only-include-path",
        action="store_true",
        help="index only the --include-path tasks, not lm-eval's built-in ones (faster)",
    )
    p.add_argument(
        "--limit", type=float, default=None, help="examples per task (an int, or a fraction < 1)"
    )
    p.add_argument("--output", required=True, help="where to write lm-eval's results JSON")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output when it is an earlier `lladax eval` result",
    )
    p.add_argument("--log-samples", action="store_true", help="also store per-sample outputs")


def _eval_config(spec: str) -> dict[str, Any]:
    from lladax.train.config_files import load_config_file

    if ":" not in spec:
        raise ValueError(f"--eval-config {spec!r} needs a task: e.g. configs/eval/base.py:gsm8k")
    c = load_config_file(spec)
    return c.to_dict() if hasattr(c, "to_dict") else dict(c)


def _is_eval_result(path: Path) -> bool:
    """An earlier `lladax eval` output: a JSON object with RESULT_KEY (or, from versions before
    the key, lm-eval results whose model args are the lladax adapter's)."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    model_args = (
        (data.get("config") or {}).get("model_args")
        if isinstance(data.get("config"), dict)
        else None
    )
    return RESULT_KEY in data or (isinstance(model_args, dict) and "mc_num" in model_args)


def check_output(name: str, overwrite: bool) -> Path:
    """--output may be written: not a directory, its directory writable, and not an existing
    file unless that is an earlier eval result and --overwrite was given."""
    out = Path(name).expanduser()
    if out.is_dir():
        raise ValueError(
            f"--output {out} is a directory: pass a file path, e.g. {out / 'results.json'}"
        )
    if out.exists():
        if not _is_eval_result(out):
            raise ValueError(
                f"--output {out} exists and is not a `lladax eval` result: "
                "refusing to overwrite it; pass a new path"
            )
        if not overwrite:
            raise ValueError(
                f"--output {out} already holds a `lladax eval` result: pass a new "
                "path, or --overwrite to replace it"
            )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"--output {out}: {parent} is a file, not a directory: pass a path in a directory"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"--output {out}: directory {parent} is not writable: pass a path you can write"
        )
    return out


def _check_flags(args: argparse.Namespace) -> None:
    if args.limit is not None and not (
        0 < args.limit < 1 or (args.limit >= 1 and float(args.limit).is_integer())
    ):
        raise ValueError(
            f"--limit {args.limit:g} must be a whole number of examples >= 1 or a "
            "fraction in (0, 1)"
        )
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise ValueError(f"--num-fewshot {args.num_fewshot} must be >= 0")
    if args.include_path is not None and not Path(args.include_path).is_dir():
        raise ValueError(
            f"--include-path {args.include_path} is not a directory: pass the "
            "directory holding your task YAMLs"
        )
    if args.only_include_path and args.include_path is None:
        raise ValueError("--only-include-path needs --include-path DIR (the tasks to index)")


def _split_tasks(tasks: Any) -> list[str]:
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    if not names or not all(names):
        raise ValueError(f"--tasks {tasks!r} has an empty task name: write name[,name...]")
    return names


def _check_tasks(names: list[str], manager: Any) -> None:
    unknown = [n for n in names if not manager.match_tasks([n])]
    if unknown:
        raise ValueError(
            f"unknown lm-eval task(s) {unknown}: check the names (`lm_eval --tasks "
            "list`) or pass --include-path DIR for your own task YAMLs"
        )


def run(args: argparse.Namespace, overrides: list[str]) -> int:
    # Cheap checks first: nothing below may start an evaluation that could not be saved.
    out = check_output(args.output, args.overwrite)
    _check_flags(args)
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ValueError(INSTALL_HINT) from None
    check_model_path(args.checkpoint, args.tokenizer)
    import lladax.eval.harness  # registers the `lladax` model with lm-eval

    preset = _eval_config(args.eval_config) if args.eval_config else {}
    tasks = args.tasks or preset.get("tasks")
    if not tasks:
        raise ValueError("no tasks: pass --tasks name[,name...] or --eval-config FILE:TASK")
    task_names = _split_tasks(tasks)
    model_args = dict(preset.get("model_args", {}))
    model_args.update(parse_arg_string(args.model_args))
    model_args["checkpoint"] = args.checkpoint
    if args.tokenizer is not None:
        model_args["tokenizer"] = args.tokenizer
    parse_model_args(model_args)  # every model arg, before the task index
    manager = TaskManager(
        include_path=args.include_path, include_defaults=not args.only_include_path
    )
    _check_tasks(task_names, manager)  # the index simple_evaluate would build anyway
    lm = lladax.eval.harness.LLaDAEval(**model_args)
    limit = int(args.limit) if args.limit is not None and args.limit >= 1 else args.limit
    fewshot = args.num_fewshot if args.num_fewshot is not None else preset.get("num_fewshot")
    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=task_names,
        num_fewshot=fewshot,
        limit=limit,
        log_samples=args.log_samples,
        task_manager=manager,
        random_seed=lm.opts["seed"],
        numpy_random_seed=lm.opts["seed"],
        fewshot_random_seed=lm.opts["seed"],
    )
    if results is None:
        raise ValueError("lm-eval returned no results (non-zero rank?)")
    results["config"]["model_args"] = lm.model_args
    results[RESULT_KEY] = {"checkpoint": str(Path(args.checkpoint).resolve()), "tasks": task_names}
    atomic_write(out, json.dumps(results, indent=2, default=str))
    for task, metrics in results.get("results", {}).items():
        shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        print(task, json.dumps(shown))
    print(f"wrote {out}")
    return 0
