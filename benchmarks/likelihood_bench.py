"""Monte-Carlo ELBO throughput: one jitted program vs a Python loop over the MC iterations.

(a) loop, the reference's structure (get_log_likelihood.py): for each of mc_num/batch_size
    iterations, a jitted mask draw and a jitted batch ELBO (`likelihood.batch_elbo`), with the
    loss fetched to the host every iteration (upstream's `loss.item()`).
(b) `likelihood.log_likelihood`: all iterations are one `lax.scan` in one jitted program.
(c) the same process's jitted float32 matmul peak, to put both on the machine's scale.

ELBO evaluations = sequences scored (mc_num per estimate). Random weights, preset `small`.

Usage: .venv/bin/python benchmarks/likelihood_bench.py [--mc-num 128] [--batch 16] [--len 256]
Prints a markdown table; checks that (a) and (b) give the same estimate on the same masks.
"""

from __future__ import annotations

import functools

import harness
import jax
import jax.numpy as jnp
import numpy as np

from lladax import config
from lladax.diffusion import block_likelihood, likelihood
from lladax.model import transformer


def loop_estimate(params, cfg, prompt, answer, *, mc_num, batch_size, rng) -> float:
    """(a): Python loop over the iterations, jitted draw + jitted batch ELBO, host sync each."""
    seq = np.concatenate([prompt, answer])
    L, T, b = len(seq), len(answer), batch_size
    n_iter = mc_num // b
    is_answer = jnp.arange(L) >= len(prompt)

    @functools.partial(jax.jit, static_argnums=(1,))
    def draw(u, b):
        return block_likelihood.draw_masks(u, jnp.int32(T), is_answer, b)

    noise = block_likelihood.uniforms(rng, L, n_iter, b)  # the same noise as (b)
    clean = np.repeat(seq[None], b, axis=0)
    losses = []
    for i in range(n_iter):
        masked, p_mask = draw(noise[:, i], b)
        noisy = jnp.where(masked, cfg.mask_token_id, clean)
        losses.append(float(likelihood.batch_elbo(params, cfg, clean, noisy, p_mask, len(prompt))))
    return -float(np.mean(losses))


def main() -> None:
    ap = harness.parser(__doc__)
    ap.add_argument("--mc-num", type=int, default=128)
    harness.add_options(ap, batch=16)
    ap.add_argument("--len", type=int, default=256, help="prompt + answer tokens")
    ap.add_argument("--prompt", type=int, default=128)
    harness.add_options(ap, repeats=3)
    args = ap.parse_args()
    cfg = config.preset("small")
    params = transformer.init_params(cfg, jax.random.key(0))
    r = np.random.default_rng(0)
    prompt = r.integers(5, cfg.vocab_size, args.prompt).astype(np.int32)
    answer = r.integers(5, cfg.vocab_size, args.len - args.prompt).astype(np.int32)
    opts = dict(mc_num=args.mc_num, batch_size=args.batch)

    peak = harness.same_run_peak(2048) / 1e9  # GFLOP/s
    results = {}
    for name, fn in (
        (
            "(a) Python loop over MC iterations",
            lambda k: loop_estimate(params, cfg, prompt, answer, rng=k, **opts),
        ),
        (
            "(b) one jitted program (lax.scan)",
            lambda k: likelihood.log_likelihood(params, cfg, prompt, answer, rng=k, **opts),
        ),
    ):
        best, est = harness.best_time(functools.partial(fn, jax.random.key(1)), args.repeats)
        results[name] = (est, best)
    flops = cfg.forward_flops(args.len) * args.mc_num
    print(
        f"preset small, random weights; prompt {args.prompt} + answer "
        f"{args.len - args.prompt} = {args.len} tokens, mc_num {args.mc_num}, batch "
        f"{args.batch} ({args.mc_num // args.batch} iterations); best of {args.repeats}"
    )
    print(f"matmul peak (jitted f32 2048^3): {peak:.1f} GFLOP/s\n")
    columns = ["path", "s / estimate", "ELBO evals/s", "GFLOP/s (% peak)", "estimate"]
    print(harness.table_header(columns))
    for name, (est, t) in results.items():
        gflops = flops / t / 1e9
        cells = [name, f"{t:.3f}", f"{args.mc_num / t:.1f}"]
        print(
            harness.table_row([*cells, f"{gflops:.1f} ({100 * gflops / peak:.0f}%)", f"{est:.4f}"])
        )
    (ea, ta), (eb, tb) = results.values()
    print(f"\nspeed-up (b)/(a): {ta / tb:.2f}x; |estimate (a) - (b)| = {abs(ea - eb):.2e}")


if __name__ == "__main__":
    main()
