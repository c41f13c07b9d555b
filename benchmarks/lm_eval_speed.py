"""lm-eval generation speed: plain vs early exit vs fast decoding, time and accuracy.

    python benchmarks/lm_eval_speed.py --checkpoint RUN [--limit 100] [--gen 32] [--block 8]

Runs the package's offline `lladax_synth_gen` task (held-out synthetic instructions, exact match;
`lladax/eval/tasks`) through `lm_eval.simple_evaluate` with the `lladax` adapter (model arg
chat=true: the SFT demo is a chat model), once per setting:

  plain        early_exit=false: every step of every block, as upstream's lm-eval run
  early exit   the adapter's default: a row freezes once its answer is final (same texts)
  fast         early exit + cache=dual, threshold=0.9 (Fast-dLLM's setting)

Each setting runs the task twice: a warm-up that compiles every bucketed shape, then the timed
run. Reports wall seconds of the timed run, batch forward passes (`LLaDAEval.forward_passes`),
exact match over all documents and on the tasks the SFT demo was trained on (copy, reverse), and
how many answers equal plain's.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

import harness
import lm_eval
from lm_eval.tasks import TaskManager

from lladax.eval.harness import LLaDAEval
from lladax.eval.tasks import TASK_DIR

TASK = "lladax_synth_gen"
TRAINED = ("copy", "reverse")  # what configs/sft_small.py trains on
SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {"early_exit": False},
    "early exit": {},
    "fast (dual cache, threshold 0.9)": {"cache": "dual", "threshold": 0.9},
}


def evaluate(lm: LLaDAEval, manager: TaskManager, limit: int) -> list[dict[str, Any]]:
    """The task's logged samples (doc, filtered response, exact_match) for `limit` documents."""
    out = lm_eval.simple_evaluate(
        model=lm, tasks=[TASK], limit=limit, task_manager=manager, log_samples=True
    )
    return out["samples"][TASK]


def run_setting(args: Any, extra: dict[str, Any], manager: TaskManager) -> dict[str, Any]:
    model_args = {
        "checkpoint": args.checkpoint,
        "chat": True,
        "batch_size": args.batch,
        "gen_length": args.gen,
        "steps": args.gen,
        "block_length": args.block,
    }
    lm = LLaDAEval(**model_args, **extra)
    evaluate(lm, manager, args.limit)  # compiles every bucketed shape
    lm.forward_passes = 0
    t0 = time.perf_counter()
    samples = evaluate(lm, manager, args.limit)
    seconds = time.perf_counter() - t0
    hits = {s["doc"]["prompt"]: s["exact_match"] for s in samples}
    trained = [s["exact_match"] for s in samples if s["doc"]["task"] in TRAINED]
    return {
        "seconds": seconds,
        "forward_passes": lm.forward_passes,
        "exact_match": sum(hits.values()) / len(hits),
        "exact_match_trained": sum(trained) / max(1, len(trained)),
        "texts": {s["doc"]["prompt"]: s["filtered_resps"][0] for s in samples},
        "model_args": lm.model_args,
    }


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_options(ap, checkpoint=harness.REQUIRED, batch=16, gen=32, block=8)
    ap.add_argument("--limit", type=int, default=100, help="documents (the task has 100)")
    args = ap.parse_args()
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    runs = {name: run_setting(args, extra, manager) for name, extra in SETTINGS.items()}
    plain = runs["plain"]
    print(
        f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {harness.device_line()}"
    )
    print(f"checkpoint {args.checkpoint}, {args.limit} docs, gen {args.gen}, block {args.block}")
    columns = ["setting", "s", "speed-up", "forwards", "exact match", "copy+reverse", "= plain"]
    print(harness.table_header(columns))
    for name, r in runs.items():
        same = sum(r["texts"][p] == t for p, t in plain["texts"].items())
        row = [name, f"{r['seconds']:.1f}", f"{plain['seconds'] / r['seconds']:.2f}×"]
        row += [r["forward_passes"], f"{r['exact_match']:.0%}", f"{r['exact_match_trained']:.0%}"]
        print(harness.table_row([*row, f"{same}/{len(plain['texts'])}"]))
        harness.print_record({k: v for k, v in r.items() if k != "texts"} | {"setting": name})


if __name__ == "__main__":
    main()
