"""SFT demo: pretrain `small`, fine-tune on the synthetic instruction set, score held-out.

    python benchmarks/sft_demo.py [--workdir /tmp/sft_demo] [--pretrained runs/small]

1. pretrain: `configs/small.py` on the default (embedded) data, via `lladax.train.loop.run`
   — skipped
   with `--pretrained DIR` or when `WORKDIR/pretrain` already holds the finished run;
2. before: greedy `sampling.generate` replies of the pretrained model to held-out prompts of every
   task (`instructions.examples(..., "eval")`, chat template applied), exact match per task;
3. SFT: `configs/sft_small.py` (`data.format="chat"`, copy + reverse of the synthetic set) from
   the pretrained params (`checkpoint.init_from`), again via `lladax.train.loop.run`;
4. after: the same held-out prompts, the same sampler settings.

The sampler's canvas is prompt + gen_length positions; the default gen_length is the config's
`data.min_answer_len`, the answer region every SFT row is padded to, so the model is sampled on
canvases of the shape it was trained on.

Prints a table of exact-match accuracy before / after per task, a few replies, and wall times.
The equivalent CLI commands are printed first.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import harness

from lladax.data import instructions
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.eval import instruction_eval
from lladax.store import integrity, params_checkpoint
from lladax.store.loading import load_model
from lladax.train import loop
from lladax.train.config_files import load_config_file

ROOT = Path(__file__).resolve().parents[1]


def finished(run_dir: Path, steps: int) -> bool:
    """True if `run_dir` holds a checkpoint at step >= `steps`."""
    try:
        return params_checkpoint.read_meta(run_dir)[0] >= steps
    except (integrity.CheckpointError, FileNotFoundError, ValueError):
        return False


def train_unless_finished(config, run_dir: Path, name: str, done: str, loss: str) -> dict:
    """Run `lladax.train.loop.run(config)` unless `run_dir` already holds its last step; prints
    the steps and eval loss, returns {name: seconds} ({} when skipped)."""
    if finished(run_dir, config.train.steps):
        return {}
    t0 = time.perf_counter()
    out = loop.run(config)
    seconds = time.perf_counter() - t0
    print(
        f"{done} {out['step']} steps: {loss} {out.get('eval_loss', float('nan')):.3f}"
        f" ({seconds:.0f} s)"
    )
    return {name: seconds}


def score(run_dir: Path, items: list, args: argparse.Namespace) -> tuple[dict, list, float]:
    """(accuracy per task, replies, seconds) of the model in `run_dir` on `items`."""
    cfg, params, tok = load_model(str(run_dir))
    t0 = time.perf_counter()
    replies = instruction_eval.generate_replies(
        params,
        cfg,
        tok,
        items,
        SamplerConfig(
            gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length
        ),
        batch_size=args.eval_batch,
    )
    return instructions.accuracy_by_task(items, replies), replies, time.perf_counter() - t0


def parse_args() -> argparse.Namespace:
    ap = harness.parser(__doc__)
    ap.add_argument("--workdir", default="/tmp/sft_demo")
    ap.add_argument(
        "--pretrained",
        default=None,
        help="an existing `small` run to fine-tune (skips pretraining)",
    )
    ap.add_argument("--sft-steps", type=int, default=None, help="default: configs/sft_small.py")
    ap.add_argument("--tasks", default="all", help="comma-separated, or 'all'")
    ap.add_argument("--per-task", type=int, default=100, help="held-out prompts per task")
    ap.add_argument(
        "--gen-length",
        type=int,
        default=None,
        help="default: data.min_answer_len of configs/sft_small.py (the answer region "
        "every SFT row was trained with)",
    )
    ap.add_argument("--block-length", type=int, default=None, help="default: gen-length")
    ap.add_argument("--eval-batch", type=int, default=128)
    return ap.parse_args()


def report(args, tasks, trained, items, before: dict, after: dict, replies: list) -> None:
    """The before / after exact-match table per task, and two replies after SFT per task."""
    block = args.block_length or args.gen_length
    print(
        f"\nexact match on {args.per_task} held-out prompts per task (greedy, gen_length "
        f"{args.gen_length}, steps {args.gen_length}, block {block})"
    )
    print(harness.table_header(["task", "SFT trained on it", "before SFT", "after SFT"]))
    for task in tasks:
        cells = [task, "yes" if task in trained else "no", f"{before[task]:.1%}"]
        print(harness.table_row([*cells, f"{after[task]:.1%}"]))
    print("\nsample replies after SFT:")
    for i in range(0, len(items), args.per_task):
        for ex, reply in list(zip(items, replies, strict=True))[i : i + 2]:
            mark = "ok " if instructions.exact_match(reply, ex.answer) else "BAD"
            print(f"  {mark} {ex.prompt!r} -> {reply!r} (expected {ex.answer!r})")


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    print("date:", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))
    work = Path(args.workdir)
    tasks = instructions.parse_source(f"synthetic:{args.tasks}")
    items = instructions.examples(tasks, "eval", per_task=args.per_task)
    times: dict[str, float] = {}

    pre_cfg = load_config_file(str(ROOT / "configs/small.py"))
    pre_dir = Path(args.pretrained) if args.pretrained else work / "pretrain"
    pre_cfg.log.update(workdir=str(pre_dir), progress=False)
    sft_cfg = load_config_file(str(ROOT / "configs/sft_small.py"))
    sft_dir = work / "sft"
    sft_cfg.log.update(workdir=str(sft_dir), progress=False)
    sft_cfg.checkpoint.init_from = str(pre_dir)
    if args.sft_steps:
        sft_cfg.train.steps = args.sft_steps
    args.gen_length = args.gen_length or sft_cfg.data.min_answer_len
    print("equivalent commands:")
    if not args.pretrained:
        print(f"  lladax train --config configs/small.py --workdir {pre_dir}")
    print(
        f"  lladax train --config configs/sft_small.py --workdir {sft_dir} "
        f"--config.checkpoint.init_from={pre_dir} --config.train.steps={sft_cfg.train.steps}"
    )

    if not args.pretrained:
        times |= train_unless_finished(pre_cfg, pre_dir, "pretrain", "pretrained", "eval loss")
    before, _, times["eval before"] = score(pre_dir, items, args)

    times |= train_unless_finished(sft_cfg, sft_dir, "sft", "fine-tuned", "SFT eval loss")
    after, replies, times["eval after"] = score(sft_dir, items, args)

    trained = instructions.parse_source(sft_cfg.data.source)
    report(args, tasks, trained, items, before, after, replies)
    times["total"] = time.perf_counter() - start
    print("\nwall seconds:", json.dumps({k: round(v, 1) for k, v in times.items()}))
    good = [t for t in tasks if after[t] >= 0.8]
    print(f"tasks at >= 80% after SFT: {len(good)} ({', '.join(good) or 'none'})")


if __name__ == "__main__":
    main()
