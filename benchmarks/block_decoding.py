"""Long-answer decoding: LLaDA vs block diffusion vs the autoregressive baseline (issue 23).

    python benchmarks/block_decoding.py [--workdir /tmp/block_decoding] [--batches 1 8] \
        [--steps 400] [--rounds 3] [--gen 512] [--out /tmp/block_decoding.md] \
        [--bd-init-from RUN] [--smoke]

1. Train one small model shape (2 layers, d=128, one 128-dim head, the 2048-piece tokenizer:
   0.95M parameters) three times, as LLaDA (kind "diffusion"), block diffusion (kind
   "block_diffusion", block_size `--block`) and the autoregressive baseline: the same random
   init, the same SFT data (`--task`, default `synthetic:long_copy` of `lladax.data.instructions`:
   200-word answers), the same steps, batch and optimizer, through `lladax.train.loop.run`. Every
   row is EOS-padded to prompt + `--gen` (`data.min_answer_len`, `data.seq_len` = the prompt +
   gen): LLaDA is sampled on canvases of the shape it was trained on. A finished run in
   WORKDIR/<kind> is reused (a different model there is refused). `--bd-init-from RUN` starts
   the block-diffusion run from another run's params instead (LLaDA 2.0's AR -> BD adaptation).
2. Decode held-out prompts greedily, gen `--gen`, with each method, at each batch size:

     LLaDA plain              sampling.generate, steps = gen, block_length `--block`
     LLaDA dual + 0.9         fast_sampling (cache="dual", threshold 0.9)
     LLaDA dual + 0.9 + exit  the same with early_exit (stops once every answer is final)
     BD exact cache           sampling.generate_with on the BD model (block_sampling: exact K/V
                              cache, one token per step, early exit: the kind's default)
     BD + threshold 0.9       the same, also committing every mask with confidence >= 0.9
     AR (KV cache)            diffusion.autoregressive.generate (runs all gen steps)

   For a batch size B, `--rounds` + 1 batches of B prompts each: the first compiles (it counts
   for accuracy, not for time); every method decodes batch r before any decodes batch r + 1, so
   load changes on a shared machine hit all of them alike.
3. One markdown table per batch size: tokens/s (answer tokens before the first EOS/EoT per warm
   wall second), speed-up and FLOP ratio vs LLaDA plain of the same run, NFE per row (model
   evaluations while the row was live), model FLOPs per batch (every evaluation's real query /
   key sizes; `fast_sampling.model_flops`, `block_sampling.model_flops`), exact match and
   per-token accuracy (`instructions.token_accuracy`) over every prompt of that batch size.

The issue's target: BD + threshold 0.9 >= 25x LLaDA plain tokens/s at batch 1, gen 512, exact
match within 1 point of LLaDA plain; the verdict line says where the run stands.
`--smoke`: a 2-layer d=32 model, 3 steps, gen 64, batch 2, one round (about a minute: most
of it compiling three train steps and six decoders).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import harness
import numpy as np
from fast_decoding_bench import decode as llada_decode
from fast_decoding_bench import instruction_prompts
from sft_demo import finished, train_unless_finished

from lladax.data import instructions
from lladax.data.chat import apply_chat_template
from lladax.data.tokenizer import load_tokenizer
from lladax.diffusion import autoregressive, block_sampling, sampling
from lladax.diffusion.fast_sampling import evaluation_flops
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.store.loading import load_model
from lladax.train.run_config import model_config_from, run_config

KINDS = {"LLaDA": "diffusion", "BD": "block_diffusion", "AR": "autoregressive"}
FULL = dict(d_model=128, n_layers=2, n_heads=1, steps=400, batch_size=8, gen=512, rounds=3)
SMOKE = dict(d_model=32, n_layers=2, n_heads=1, steps=3, batch_size=4, gen=64, rounds=1)
EVAL_BATCHES = {False: 2, True: 0}  # held-out loss batches after training (none in --smoke)
COLUMNS = "method,tokens/s,speed-up,NFE/row,GFLOP/batch,FLOP ratio,exact match,token acc,prompts"
TARGET_SPEEDUP, TARGET_POINTS = 25.0, 1.0

# decode(params, cfg, prompt [B, P], mask [B, P], gen) -> (canvas [B, P + gen], NFE/row, FLOPs)
Decode = Callable[[Any, Any, np.ndarray, np.ndarray, int], tuple[np.ndarray, float, float]]


def _llada(fast: dict | None, block: int) -> Decode:
    """LLaDA's exact sampler (fast None) or fast decoding, as benchmarks/fast_decoding_bench.py
    runs them."""

    def decode(params, cfg, prompt, mask, gen):
        return llada_decode(params, cfg, prompt, mask, fast, gen=gen, block=block)

    return decode


def _block_diffusion(threshold: float | None) -> Decode:
    """The block sampler (exact K/V cache; block_length = the model's block_size)."""

    def decode(params, cfg, prompt, mask, gen):
        sampler = SamplerConfig(gen_length=gen, block_length=cfg.block_size, threshold=threshold)
        canvas, stats = sampling.generate_with(
            params, cfg, prompt, mask, sampler, return_stats=True
        )
        B, P = prompt.shape
        flops = block_sampling.model_flops(cfg, stats, batch=B, canvas_len=P + gen)
        return np.asarray(canvas), float(np.mean(stats["nfe"])), flops

    return decode


def _autoregressive(params, cfg, prompt, mask, gen):
    """Left-to-right with the KV cache: a prefill, then gen - 1 one-token evaluations against the
    whole [P + gen] cache (static shapes: every step runs, EOS or not)."""
    canvas = autoregressive.generate(params, cfg, prompt, mask, gen_length=gen)
    B, P = prompt.shape
    step = evaluation_flops(cfg, keys=P + gen, fresh=1, queries=1)
    flops = B * (cfg.forward_flops(P) + (gen - 1) * step)
    return np.asarray(canvas), float(gen), flops


def methods(block: int) -> dict[str, tuple[str, Decode]]:
    """Method name -> (the model it decodes: a `KINDS` key, its decoder); LLaDA plain first."""
    dual = dict(cache="dual", threshold=0.9)
    return {
        "LLaDA plain": ("LLaDA", _llada(None, block)),
        "LLaDA dual + 0.9": ("LLaDA", _llada(dual, block)),
        "LLaDA dual + 0.9 + exit": ("LLaDA", _llada({**dual, "early_exit": True}, block)),
        "BD exact cache": ("BD", _block_diffusion(None)),
        "BD + threshold 0.9": ("BD", _block_diffusion(0.9)),
        "AR (KV cache)": ("AR", _autoregressive),
    }


# --- training ----------------------------------------------------------------------------------
class Stopped(Exception):
    """A training run was stopped by a signal: the benchmark stops too (nothing is decoded)."""


def run_config_for(kind: str, args: argparse.Namespace, seq_len: int, workdir: Path) -> Any:
    """The SFT run ConfigDict of one kind: everything but the kind (and block_size) shared."""
    model = dict(
        d_model=args.d_model,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_heads,
        mlp_hidden_size=3 * args.d_model,
        max_seq_len=seq_len,
        remat_policy="none",  # activations are small: rematerialisation only adds recompute
        # Copying from ~210 positions back starts on a plateau (the attention and the word-to-word
        # path must both form). Measured on LLaDA, 200 steps (2026-12-03, this CPU): 4 heads at
        # init 0.02 left it after ~130 steps (loss 0.49 at 200), at init 0.05 after ~70 (0.61);
        # ONE head of 128 dims (64 rotary frequencies, scores sum over 128 dims) reached 0.10.
        init_std=0.05,
        kind=kind,
        block_size=args.block if kind == "block_diffusion" else None,
    )
    c = run_config("small", **model)  # the 2048-piece tokenizer: each task word is one token
    c.data.update(format="chat", source=f"synthetic:{args.task}", seq_len=seq_len)
    # Every row [prompt | answer EOT | EOS ...] is prompt + gen long: the sampled canvas.
    c.data.min_answer_len = args.gen
    # sft_small's settings (configs/sft_small.py explains mask_eps 0.2 and stratified t).
    c.train.update(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=2e-3,
        warmup_steps=min(20, max(1, args.steps // 10)),
        decay_fraction=0.3,
        mask_eps=0.2,
        stratified_t=True,
        seed=args.seed,
    )
    c.eval.update(every=args.steps, batches=EVAL_BATCHES[args.smoke], batch_size=args.batch_size)
    c.log.update(every=max(1, args.steps // 10), workdir=str(workdir), progress=False)
    c.checkpoint.every = 0
    if kind == "block_diffusion" and args.bd_init_from:  # AR -> BD adaptation (LLaDA 2.0)
        c.checkpoint.init_from = args.bd_init_from
    return c


def trained_models(args: argparse.Namespace, seq_len: int) -> dict[str, tuple[Any, Any]]:
    """{KINDS key: (ModelConfig, params)}: each kind trained in WORKDIR/<kind> unless done."""
    models, seconds = {}, {}
    for name, kind in KINDS.items():
        run_dir = Path(args.workdir) / kind
        config = run_config_for(kind, args, seq_len, run_dir)
        want = model_config_from(config.model)
        if finished(run_dir, args.steps):
            cfg, params, _ = load_model(str(run_dir))
            if cfg != want:
                raise ValueError(
                    f"{run_dir} holds another model ({cfg.kind}, d={cfg.d_model}, "
                    f"{cfg.n_layers} layers, max_seq_len {cfg.max_seq_len}): pass another "
                    "--workdir or delete it"
                )
        else:
            seconds |= train_unless_finished(config, run_dir, kind, f"{name}:", "eval loss")
            if not finished(run_dir, args.steps):  # SIGINT / SIGTERM: the loop saved and returned
                raise Stopped(f"training in {run_dir} was stopped: rerun the command to resume")
            cfg, params, _ = load_model(str(run_dir))
        models[name] = (cfg, params)
    print("train wall seconds:", {k: round(v) for k, v in seconds.items()} or "reused")
    return models


# --- decoding ----------------------------------------------------------------------------------
@dataclasses.dataclass
class Tally:
    """One method at one batch size: what it decoded and how long the warm batches took."""

    seconds: float = 0.0
    tokens: int = 0  # answer tokens (before the first EOS/EoT) of the timed batches
    nfe: list[float] = dataclasses.field(default_factory=list)
    flops: list[float] = dataclasses.field(default_factory=list)
    exact: list[bool] = dataclasses.field(default_factory=list)
    token_acc: list[float] = dataclasses.field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")


def measure(models, tok, items, batch: int, args) -> dict[str, Tally]:
    """Every method on `rounds` + 1 batches of `batch` held-out prompts, batch by batch."""
    table = methods(args.block)
    tallies = {name: Tally() for name in table}
    for r in range(args.rounds + 1):
        chunk = items[r * batch : (r + 1) * batch]
        for name, (model, decode) in table.items():
            cfg, params = models[model]
            prompt, mask = instruction_prompts(cfg, tok, chunk)
            t0 = time.perf_counter()
            canvas, nfe, flops = decode(params, cfg, prompt, mask, args.gen)
            seconds = time.perf_counter() - t0  # decode returns host arrays: the work is done
            P, t = prompt.shape[1], tallies[name]
            answers = [sampling.decode_answer(row, P, cfg) for row in canvas]
            replies = [tok.decode_reply(row[P:]) for row in canvas]
            if r:  # the first batch compiles
                t.seconds += seconds
                t.tokens += sum(len(a) for a in answers)
            t.nfe.append(nfe)
            t.flops.append(flops)
            for ex, reply in zip(chunk, replies, strict=True):
                t.exact.append(instructions.exact_match(reply, ex.answer))
                t.token_acc.append(instructions.token_accuracy(reply, ex.answer))
    return tallies


def report(tallies: dict[str, Tally], batch: int, args) -> tuple[str, list[dict]]:
    """The markdown table of one batch size (ratios vs LLaDA plain) and its JSON rows."""
    base = tallies["LLaDA plain"]
    lines = [
        f"\nbatch {batch}, gen {args.gen}, block {args.block}, greedy; {args.rounds} timed "
        f"batch(es) after a compiling one",
        harness.table_header(COLUMNS.split(",")),
    ]
    records = []
    for name, t in tallies.items():
        flops = float(np.mean(t.flops))
        record = dict(
            method=name,
            batch=batch,
            tokens_per_s=t.tokens_per_s,
            speedup=t.tokens_per_s / base.tokens_per_s,
            nfe_per_row=float(np.mean(t.nfe)),
            gflop_per_batch=flops / 1e9,
            flop_ratio=float(np.mean(base.flops)) / flops,
            exact_match=float(np.mean(t.exact)),
            token_accuracy=float(np.mean(t.token_acc)),
            prompts=len(t.exact),
        )
        records.append(record)
        cells = [name, f"{record['tokens_per_s']:.1f}", f"{record['speedup']:.1f}x"]
        cells += [f"{record['nfe_per_row']:.1f}", f"{flops / 1e9:.2f}"]
        cells += [f"{record['flop_ratio']:.1f}x", f"{record['exact_match']:.1%}"]
        cells += [f"{record['token_accuracy']:.1%}", record["prompts"]]
        lines.append(harness.table_row(cells))
    return "\n".join(lines), records


def verdict(records: list[dict]) -> str:
    """Where BD + threshold 0.9 stands against the issue's target, and against the AR baseline:
    tokens/s at the smallest batch measured (batch 1), accuracy over the prompts of the largest
    (the most prompts; greedy decoding gives the same tokens at any batch size)."""
    rows = {(r["batch"], r["method"]): r for r in records}
    small, large = min(b for b, _ in rows), max(b for b, _ in rows)
    bd, ar = rows[small, "BD + threshold 0.9"], rows[small, "AR (KV cache)"]
    bd_acc, plain_acc, ar_acc = (
        rows[large, m]["exact_match"]
        for m in ("BD + threshold 0.9", "LLaDA plain", "AR (KV cache)")
    )
    points = 100 * (bd_acc - plain_acc)
    met = bd["speedup"] >= TARGET_SPEEDUP and points >= -TARGET_POINTS
    return (
        f"target: BD + threshold 0.9 at {bd['speedup']:.1f}x LLaDA plain tokens/s at batch "
        f"{small} (target >= {TARGET_SPEEDUP:.0f}x), exact match {points:+.1f} points vs LLaDA "
        f"plain over the {rows[large, 'LLaDA plain']['prompts']} prompts of batch {large} "
        f"(target >= -{TARGET_POINTS:.0f}): {'MET' if met else 'NOT MET'}; vs AR: "
        f"{bd['tokens_per_s'] / ar['tokens_per_s']:.2f}x its tokens/s at batch {small}, exact "
        f"match {100 * (bd_acc - ar_acc):+.1f} points"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = harness.parser(__doc__)
    ap.add_argument("--workdir", default=None, help="default /tmp/block_decoding[_smoke]")
    ap.add_argument("--task", default="long_copy", help="synthetic task(s) to train and score")
    harness.add_options(ap, batches=None, gen=None, block=32, seed=0)
    ap.add_argument("--steps", type=int, default=None, help="train steps of every kind")
    ap.add_argument("--rounds", type=int, default=None, help="timed batches per batch size")
    ap.add_argument("--out", default=None, help="also write the tables (.md) and JSON there")
    ap.add_argument(
        "--bd-init-from",
        default="",
        help="start the block-diffusion run from these params (e.g. WORKDIR/autoregressive of "
        "an earlier run: AR -> BD adaptation) instead of the shared random init",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny model, 3 steps, gen 64, batch 2")
    args = ap.parse_args(argv)
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    args.batches = args.batches or ([2] if args.smoke else [1, 8])
    args.workdir = args.workdir or f"/tmp/block_decoding{'_smoke' if args.smoke else ''}"
    for name in ("steps", "rounds", "gen"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} {getattr(args, name)} must be >= 1")
    if args.gen % args.block:
        ap.error(f"--gen {args.gen} is not a multiple of --block {args.block}: pass a multiple")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/block_decoding.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    head = f"date: {now}; {harness.device_line()}\ncommand: {command}"
    print(head, flush=True)
    tok = load_tokenizer("embedded", vocab_size=2048)
    tasks = instructions.parse_source(f"synthetic:{args.task}")
    per_task = -(-(args.rounds + 1) * max(args.batches) // len(tasks))
    by_task = instructions.examples(tasks, "eval", seed=args.seed, per_task=per_task)
    items = [by_task[t * per_task + i] for i in range(per_task) for t in range(len(tasks))]
    width = max(len(apply_chat_template(tok, ex.messages(with_answer=False))) for ex in items)
    try:
        models = trained_models(args, width + args.gen)
    except ValueError as e:
        print(f"block_decoding.py: error: {e}", file=sys.stderr)
        return 2
    except Stopped as e:
        print(f"block_decoding.py: {e}", file=sys.stderr)
        return 1
    tables, records = [head], []
    for batch in args.batches:
        text, rows = report(measure(models, tok, items, batch, args), batch, args)
        print(text, flush=True)
        tables.append(text)
        records += rows
    tables.append("\n" + verdict(records))
    print(tables[-1])
    if args.out:
        harness.write_report(
            args.out, "\n".join(tables) + "\n", {"args": vars(args), "rows": records}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
