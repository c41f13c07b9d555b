"""Early exit on a trained model's real outputs: steps and time saved, answers unchanged.

    python benchmarks/early_exit_bench.py --checkpoint runs/small [--source DATA] [--prompts 8]

Prompts are the first `--prompt-len` tokens of held-out documents; each is sampled with the
reference schedule (semi-AR blocks, low-confidence remasking, `--temperature`) with and without
`early_exit`. Reports forward passes, wall time (best of `--repeats` after a warm-up) and checks
that every decoded answer (the tokens up to the first EOS/EoT) is identical.
"""

from __future__ import annotations

import harness
import jax
import numpy as np

from lladax.diffusion import sampling
from lladax.store.loading import load_model


def main() -> None:
    ap = harness.parser(__doc__)
    harness.add_options(ap, checkpoint=harness.REQUIRED, source="embedded")
    ap.add_argument("--prompts", type=int, default=8)
    harness.add_options(ap, prompt_len=16, gen=128, block=32, repeats=3)
    ap.add_argument("--temperature", type=float, default=0.0)
    harness.add_options(ap, seed=0)
    args = ap.parse_args()

    cfg, params, tok = load_model(args.checkpoint)
    prompt = harness.held_out_prompts(tok, args.source, args.prompt_len, args.prompts)
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
        best, (canvas, stats) = harness.best_time(lambda e=early_exit: run(e), args.repeats)
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
    passes = int(s_full["forward_passes"]), int(s_exit["forward_passes"])
    print(
        harness.table_header(["mode", "forward passes", "wall s", "speed-up", "answers identical"])
    )
    print(harness.table_row(["full run", passes[0], f"{t_full:.2f}", "1.00x", "-"]))
    print(
        harness.table_row(
            ["early_exit", passes[1], f"{t_exit:.2f}", f"{t_full / t_exit:.2f}x", same]
        )
    )
    print(f"per-row freeze step: {np.asarray(s_exit['done_step']).tolist()}")


if __name__ == "__main__":
    main()
