"""The block-size curriculum of block-diffusion training (LLaDA 2.0's warmup-stable-decay).

    train.block_curriculum = "1:200,4:200,2048:400,32"

Stages `SIZE:STEPS` in order, the last a bare `SIZE` that runs to the end of training and equals
`model.block_size` (the model the run produces and saves). Block size 1 is the task closest to
next-token prediction (every token denoised given the clean tokens before it: where an adapted
autoregressive model starts), a size >= data.seq_len is one block (LLaDA's loss: the "stable"
phase, at half the cost of the two-copy forward), and decay stages shrink back to the target.
"" = no curriculum: every step trains `model.block_size`. Only for kind="block_diffusion".

The stage is a function of the step, like the learning rate: the jitted train step reads it from
`state.step` (steps taken, skipped ones included) and a `lax.switch` over the curriculum's
distinct sizes (`branch_sizes`) runs the loss with that block size. One compiled program, each
branch with static attention masks (splash needs them); a resumed run continues where it was.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from lladax.config import ConfigError, ModelConfig

Stage = tuple[int, int | None]  # (block size, the step the stage ends before; None: the end)
EXAMPLE = "1:200,4:200,2048:400,32"


def _size_and_steps(item: str, last: bool, where: str) -> tuple[int, int | None]:
    """One stage `SIZE:STEPS` (or the last one's bare `SIZE`) as ints; a one-line ConfigError."""
    size, colon, steps = (part.strip() for part in item.partition(":"))
    if last and colon:
        raise ConfigError(
            f"{where}: the last stage {item.strip()!r} runs to the end of training: write it as "
            f"a bare block size ({size!r}), e.g. {EXAMPLE!r}"
        )
    if not last and not colon:
        raise ConfigError(
            f"{where}: stage {item.strip()!r} needs its steps (SIZE:STEPS); only the last stage "
            f"is a bare block size, e.g. {EXAMPLE!r}"
        )
    numbers = [size, *([steps] if colon else [])]
    if not all(n.isdigit() and int(n) >= 1 for n in numbers):
        raise ConfigError(
            f"{where}: stage {item.strip()!r} is not SIZE:STEPS with positive integers: write "
            f"the stages in order, the last a bare block size, e.g. {EXAMPLE!r}"
        )
    return int(size), int(steps) if colon else None


def stages(text: str, cfg: ModelConfig | None = None) -> tuple[Stage, ...]:
    """`train.block_curriculum` parsed and checked: ((size, end step), ..., (size, None)), ()
    for "". With `cfg` also checked against the model: block diffusion only, the last size =
    `cfg.block_size`. Every error is a one-line ConfigError naming the key and the fix."""
    if not text.strip():
        return ()
    where = f"train.block_curriculum={text!r}"
    items = text.split(",")
    out, end = [], 0
    for i, item in enumerate(items):
        size, steps = _size_and_steps(item, i == len(items) - 1, where)
        end = None if steps is None else end + steps
        out.append((size, end))
    if cfg is not None and cfg.kind != "block_diffusion":
        raise ConfigError(
            f"{where} only applies to model.kind='block_diffusion', not {cfg.kind!r}: set "
            "--config.train.block_curriculum='' or --config.model.kind=block_diffusion"
        )
    if cfg is not None and out[-1][0] != cfg.block_size:
        raise ConfigError(
            f"{where} ends at block size {out[-1][0]} but model.block_size={cfg.block_size}: "
            f"end it with the block size the run trains for (..., {cfg.block_size})"
        )
    return tuple(out)


def last_stage_start(plan: tuple[Stage, ...]) -> int:
    """The step from which the last stage (the target block size) trains."""
    return plan[-2][1] if len(plan) > 1 else 0


def branch_sizes(plan: tuple[Stage, ...], seq_len: int) -> tuple[int, ...]:
    """The distinct block sizes the train step compiles, in order of first use: every size >=
    `seq_len` is one block, the same computation, so they share the branch of size `seq_len`."""
    return tuple(dict.fromkeys(min(size, seq_len) for size, _ in plan))


def _stage_of(plan: tuple[Stage, ...], step: jax.Array) -> jax.Array:
    """[] int32: the index of the stage that `step` ([] int) is in."""
    ends = jnp.asarray([end for _, end in plan[:-1]], jnp.int32)
    return jnp.sum(step >= ends, dtype=jnp.int32)


def branch_index(plan: tuple[Stage, ...], seq_len: int, step: jax.Array) -> jax.Array:
    """[] int32: the index into `branch_sizes` of the stage that `step` ([] int) is in."""
    sizes = branch_sizes(plan, seq_len)
    stage_branch = [sizes.index(min(size, seq_len)) for size, _ in plan]
    return jnp.asarray(stage_branch, jnp.int32)[_stage_of(plan, step)]


def size_of_step(plan: tuple[Stage, ...], step: jax.Array | int) -> jax.Array:
    """[] int32: the block size of `step`'s stage as the curriculum writes it (the metric, the
    logs)."""
    return jnp.asarray([size for size, _ in plan], jnp.int32)[_stage_of(plan, step)]
