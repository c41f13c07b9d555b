"""Early exit on a trained model's real outputs: steps and time saved, answers unchanged.

    python benchmarks/early_exit_bench.py --checkpoint runs/small [--source DATA] [--prompts 8]

Prompts are the first `--prompt-len` tokens of held-out documents; each is sampled with the
reference schedule (semi-AR blocks, low-confidence remasking, `--temperature`) with and without
`early_exit`. Reports forward passes, wall time (best of `--repeats` after a warm-up) and checks
that every decoded answer (the tokens up to the first EOS/EoT) is identical.
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np

from lladax.data import sources
from lladax.diffusion import sampling
from lladax.store.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--source", default="embedded", help="where held-out prompts come from")
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    cfg, params, tok = load_model(args.checkpoint)
    docs = [
        d
        for d in sources.load_documents(args.source, split="eval")
        if len(tok.encode(d)) >= args.prompt_len
    ][: args.prompts]
    prompt = np.asarray(
        [[tok.bos_id, *tok.encode(d)[: args.prompt_len - 1]] for d in docs], np.int32
    )
    kw = dict(
        steps=args.gen,
        gen_length=args.gen,
        block_length=args.block,
        temperature=args.temperature,
        rng=jax.random.key(args.seed),
    )

    def run(early_exit: bool):
        return sampling.generate(
            params, cfg, prompt, **kw, early_exit=early_exit, return_stats=True
        )

    results = {}
    for early_exit in (False, True):
        canvas, stats = run(early_exit)  # compile + warm up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            canvas, stats = run(early_exit)
            np.asarray(canvas)
            best = min(best, time.perf_counter() - t0)
        results[early_exit] = (best, np.asarray(canvas), stats)

    (t_full, full, s_full), (t_exit, exit_, s_exit) = results[False], results[True]
    P = prompt.shape[1]
    same = all(
        sampling.decode_answer(a, P, cfg) == sampling.decode_answer(b, P, cfg)
        for a, b in zip(full, exit_, strict=True)
    )
    lengths = [len(sampling.decode_answer(a, P, cfg)) for a in full]
    print(
        f"checkpoint {args.checkpoint}: {args.prompts} prompts x {P} tokens, gen {args.gen}, "
        f"block {args.block}, steps {args.gen}, T={args.temperature} low_confidence"
    )
    print(f"answer lengths (tokens before EOS/EoT): {lengths}")
    print("| mode | forward passes | wall s | speed-up | answers identical |")
    print("|---|---|---|---|---|")
    print(f"| full run | {int(s_full['forward_passes'])} | {t_full:.2f} | 1.00x | - |")
    print(
        f"| early_exit | {int(s_exit['forward_passes'])} | {t_exit:.2f} | "
        f"{t_full / t_exit:.2f}x | {same} |"
    )
    print(f"per-row freeze step: {np.asarray(s_exit['done_step']).tolist()}")


if __name__ == "__main__":
    main()
