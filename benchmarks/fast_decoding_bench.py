"""Fast decoding on a trained model: tokens/s, NFE, model FLOPs and agreement with plain decoding.

    python benchmarks/fast_decoding_bench.py --checkpoint runs/small [--batches 1 8] \
        [--gen 256 --block 32] [--sft runs/sft_small]

Prompts are the first `--prompt-len` tokens of held-out documents of the default data (or, with
`--prompts instructions`, chat-formatted held-out prompts of the synthetic instruction set). Every
configuration decodes the same prompts greedily (low-confidence remasking, steps = gen: one
token per step is the plain baseline) in one process, one after another:

  plain            sampling.generate (block window on the last layer, no cache)
  prefix cache     fast_sampling.generate(cache="prefix")
  dual cache       fast_sampling.generate(cache="dual")
  threshold 0.9    fast_sampling.generate(cache="none", threshold=0.9)
  dual + 0.9       fast_sampling.generate(cache="dual", threshold=0.9)
  dual + factor 1  fast_sampling.generate(cache="dual", factor=1.0)

Wall time is the best of `--repeats` rounds after a compiling warm-up; each round runs every
configuration once in turn, so load changes on a shared machine hit all of them alike. NFE is
per row (mean over the batch); model FLOPs count each evaluation's real query / key sizes over
the whole batch (`fast_sampling.model_flops`, `ModelConfig.forward_flops`); agreement is the
fraction of generated tokens identical to plain decoding. With `--sft DIR` (a model fine-tuned
on the synthetic instruction set, e.g. benchmarks/sft_demo.py) the held-out exact-match accuracy
of every configuration is added, at gen `--sft-gen`, block `--sft-block` (answers are short).
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

import harness
import jax
import numpy as np

from lladax.diffusion import fast_sampling, sampling
from lladax.store.loading import load_model

CONFIGS: dict[str, dict[str, Any] | None] = {
    "plain": None,
    "prefix cache": dict(cache="prefix"),
    "dual cache": dict(cache="dual"),
    "threshold 0.9": dict(cache="none", threshold=0.9),
    "dual + threshold 0.9": dict(cache="dual", threshold=0.9),
    "dual + factor 1.0": dict(cache="dual", factor=1.0),
}

SPEED_COLUMNS = "configuration,tokens/s,speed-up,NFE/row,model GFLOP,FLOP ratio,GFLOP/s,agreement"
ACCURACY_COLUMNS = "configuration,exact match,per task,NFE/row,FLOP ratio,agreement"


def decode(params, cfg, prompt, mask, fast: dict | None, *, gen: int, block: int):
    """(canvas [B, P + gen], mean NFE per row, model FLOPs) of one configuration."""
    B, P = prompt.shape
    kw = dict(steps=gen, gen_length=gen, block_length=block)
    if fast is None:
        canvas, stats = sampling.generate(params, cfg, prompt, mask, **kw, return_stats=True)
        fwd, win = int(stats["forward_passes"]), int(stats["window_passes"])
        flops = B * (
            win * cfg.forward_flops(P + gen, block) + (fwd - win) * cfg.forward_flops(P + gen)
        )
        return np.asarray(canvas), float(fwd), flops
    canvas, stats = fast_sampling.generate(
        params, cfg, prompt, mask, **kw, **fast, return_stats=True
    )
    flops = fast_sampling.model_flops(
        cfg, stats, batch=B, canvas_len=P + gen, block_length=block, cache=fast["cache"]
    )
    return np.asarray(canvas), float(np.mean(stats["nfe"])), flops


def instruction_prompts(cfg, tok, items) -> tuple[np.ndarray, np.ndarray]:
    """Chat-formatted held-out instruction prompts, left-padded: (tokens, attention_mask)."""
    from lladax.data.chat import apply_chat_template

    rows = [apply_chat_template(tok, ex.messages(with_answer=False)) for ex in items]
    width = max(len(r) for r in rows)
    prompt = np.full((len(rows), width), cfg.pad_token_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for r, ids in enumerate(rows):
        prompt[r, width - len(ids) :], mask[r, width - len(ids) :] = ids, 1
    return prompt, mask


def speed_table(params, cfg, prompt, mask, args) -> None:
    B, P = prompt.shape
    print(
        f"\nbatch {B}, prompt {P} tokens, gen {args.gen}, block {args.block}, "
        f"steps {args.gen}, greedy"
    )
    print(harness.table_header(SPEED_COLUMNS.split(",")))
    fns = {
        name: functools.partial(
            decode, params, cfg, prompt, mask, fast, gen=args.gen, block=args.block
        )
        for name, fast in CONFIGS.items()
    }
    results = {name: fn() for name, fn in fns.items()}  # compile + warm up; the outputs
    times = harness.interleaved_best_times(fns, args.repeats)
    t0, (_, _, flops0), plain = times["plain"], results["plain"], results["plain"][0]
    for name, (canvas, nfe, flops) in results.items():
        agree = (canvas[:, P:] == plain[:, P:]).mean()
        t = times[name]
        cells = [name, f"{B * args.gen / t:.1f}", f"{t0 / t:.2f}x", f"{nfe:.1f}"]
        cells += [f"{flops / 1e9:.1f}", f"{flops0 / flops:.1f}x", f"{flops / t / 1e9:.0f}"]
        print(harness.table_row([*cells, f"{agree:.3f}"]), flush=True)


def accuracy_table(args) -> None:
    from lladax.data import instructions

    cfg, params, tok = load_model(args.sft)
    items = instructions.examples(list(instructions.TASKS), "eval", per_task=args.sft_per_task)
    prompt, mask = instruction_prompts(cfg, tok, items)
    width = prompt.shape[1]
    print(
        f"\nSFT model {args.sft}: {len(items)} held-out prompts ({args.sft_per_task} per "
        f"task), gen {args.sft_gen}, block {args.sft_block}, steps {args.sft_gen}, greedy"
    )
    print(harness.table_header(ACCURACY_COLUMNS.split(",")))
    base = None
    for name, fast in CONFIGS.items():
        canvas, nfe, flops = decode(
            params, cfg, prompt, mask, fast, gen=args.sft_gen, block=args.sft_block
        )
        replies = [tok.decode_reply(canvas[r, width:]) for r in range(len(items))]
        acc = instructions.accuracy_by_task(items, replies)
        hits = np.mean(
            [instructions.exact_match(p, ex.answer) for p, ex in zip(replies, items, strict=True)]
        )
        if base is None:
            base = (flops, canvas)
        agree = (canvas[:, width:] == base[1][:, width:]).mean()
        per_task = " ".join(f"{k} {v:.2f}" for k, v in acc.items())
        cells = [name, f"{hits:.3f}", per_task, f"{nfe:.1f}", f"{base[0] / flops:.1f}x"]
        print(harness.table_row([*cells, f"{agree:.3f}"]), flush=True)


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_options(ap, checkpoint=harness.REQUIRED)
    ap.add_argument(
        "--prompts",
        choices=["docs", "instructions"],
        default="docs",
        help="held-out documents (pretrained model) or synthetic instructions (SFT)",
    )
    harness.add_options(
        ap, source="embedded", batches=[1, 8], prompt_len=16, gen=256, block=32, repeats=3
    )
    ap.add_argument("--sft", default=None, help="an SFT run on the synthetic instruction set")
    ap.add_argument("--sft-per-task", type=int, default=40)
    ap.add_argument("--sft-gen", type=int, default=32)
    ap.add_argument("--sft-block", type=int, default=8)
    args = ap.parse_args()

    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"date: {now}; devices: {jax.devices()}")
    cfg, params, tok = load_model(args.checkpoint)
    print(
        f"checkpoint {args.checkpoint}: {cfg.n_layers} layers, d={cfg.d_model}, "
        f"vocab {cfg.vocab_size}"
    )
    for batch in args.batches:
        if args.prompts == "docs":
            prompt = harness.held_out_prompts(tok, args.source, args.prompt_len, batch)
            mask = None
        else:  # held-out prompts of the tasks in turn
            from lladax.data import instructions

            tasks = list(instructions.TASKS)
            items = instructions.examples(tasks, "eval", per_task=batch)  # task by task
            items = [items[(i % len(tasks)) * batch + i // len(tasks)] for i in range(batch)]
            prompt, mask = instruction_prompts(cfg, tok, items)
        speed_table(params, cfg, prompt, mask, args)
    if args.sft:
        accuracy_table(args)


if __name__ == "__main__":
    main()
