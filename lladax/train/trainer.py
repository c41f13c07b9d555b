"""Training: the `TrainState` pytree and a pure jitted `train_step` (the loop is in `loop.py`).

    state, metrics = train_step(state, batch)      # jitted, state donated

`train_step` draws the forward-process noise from `state.rng` folded with the step, runs the
micro-batches with `lax.scan` (gradient accumulation), and applies one optax update. Everything
static (model config, run config) is closed over; the state is a plain pytree of arrays.

Batches are dicts of [batch, ...] arrays:
  {"tokens"}                                  pretraining on rows cut from a token stream
  {"tokens", "segment_ids", "positions"}      packed documents: no attention across documents,
                                              RoPE positions restart, segment id 0 = padding
  {"tokens", "prompt_lengths" [batch]}        SFT: prompt never masked, `losses.sft_loss`
  {"chosen", "rejected", "prompt_lengths"}    preference pairs (`pref`: DPO / VRPO against
                                              `state.reference`, frozen; `objectives`)

Robustness, all inside the jitted step (no host sync): a step whose loss or gradients are not
finite leaves params and optimizer state untouched and is counted in `state.guard` (the skip,
LR-drop and spike counters of `guard`); with `ema_decay` > 0 an f32 exponential moving average
of the params is kept in `state.ema`. The loop logs the counters.

Block diffusion: `metrics["block_size"]` is the block size the step trained, which with
`train.block_curriculum` follows `state.step` (`curriculum`: a `lax.switch` over its sizes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lladax.config import ModelConfig
from lladax.diffusion import preference
from lladax.model import sharding, transformer
from lladax.train.guard import all_finite, new_guard, update_guard
from lladax.train.objectives import eval_loss, loss_and_grad, loss_fn
from lladax.train.run_config import PreferenceConfig, TrainConfig

__all__ = [
    "TrainState",
    "abstract_state",
    "eval_loss",
    "init_state",
    "jit_train_step",
    "loss_fn",
    "lr_schedule",
    "make_optimizer",
    "reference_of",
    "shardings_of",
    "state_shardings",
    "train_step",
]


@struct.dataclass
class TrainState:
    step: jax.Array  # [] int32: steps taken, skipped ones included (drives the noise)
    params: Any  # model params pytree
    opt_state: Any  # optax state pytree
    rng: jax.Array  # base key; each step folds in `step`
    guard: dict[str, jax.Array]  # [] counters of the non-finite/spike guard, see `new_guard`
    ema: Any = None  # f32 EMA of params (train.ema_decay > 0), else None
    reference: Any = None  # frozen reference params (preference optimisation), else None


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """Warmup-stable-decay (the paper's schedule): linear warmup, constant, linear decay."""
    decay_steps = max(1, int(tc.steps * tc.decay_fraction))
    warmup = min(tc.warmup_steps, max(0, tc.steps - decay_steps))
    stable_end = tc.steps - decay_steps
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, tc.lr, max(1, warmup)),
            optax.constant_schedule(tc.lr),
            optax.linear_schedule(tc.lr, tc.lr * tc.final_lr_ratio, decay_steps),
        ],
        boundaries=[warmup, stable_end],
    )


@functools.cache  # one object per config: jitted steps built on it share their compilation
def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on matrices only, not norms) with global-norm clipping.

    The schedule advances with the optimizer's own update count, so skipped steps do not move it.
    """
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(
            lr_schedule(tc),
            b1=tc.b1,
            b2=tc.b2,
            eps=tc.eps,
            weight_decay=tc.weight_decay,
            mask=decay_mask,
        ),
    )


def state_shardings(
    cfg: ModelConfig,
    tc: TrainConfig,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh | None = None,
    pref: PreferenceConfig | None = None,
) -> TrainState:
    """The sharding of every leaf of a TrainState: params (and the optimizer's param-shaped
    moments, the EMA and the reference) by the logical-axis rules, scalars replicated; without a
    mesh, everything on device 0. One rule for fresh and restored states, so both compile the
    same."""

    shapes = jax.eval_shape(
        lambda k: init_state(cfg, tc, optimizer, k, pref=pref), jax.random.key(0)
    )
    if mesh is None:
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        return jax.tree.map(lambda _: device, shapes)
    param_sh = sharding.tree_shardings(mesh, transformer.param_logical_axes(cfg))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    opt_sh = optax.tree_map_params(
        optimizer,
        lambda _, sh: sh,
        shapes.opt_state,
        param_sh,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct),
    )
    return TrainState(
        step=replicated,
        params=param_sh,
        opt_state=opt_sh,
        rng=replicated,
        guard=jax.tree.map(lambda _: replicated, shapes.guard),
        ema=None if shapes.ema is None else param_sh,
        reference=None if shapes.reference is None else param_sh,
    )


def abstract_state(
    cfg: ModelConfig,
    tc: TrainConfig,
    optimizer: optax.GradientTransformation,
    mesh: jax.sharding.Mesh | None = None,
    pref: PreferenceConfig | None = None,
) -> TrainState:
    """ShapeDtypeStructs (with shardings) of the TrainState: a restore target that allocates
    nothing, so resuming a big model never materialises a random init first."""
    shapes = jax.eval_shape(
        lambda k: init_state(cfg, tc, optimizer, k, pref=pref), jax.random.key(0)
    )
    return jax.tree.map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        state_shardings(cfg, tc, optimizer, mesh, pref),
    )


def reference_of(params: Any, pref: PreferenceConfig | None) -> Any:
    """The frozen reference of a preference run: a copy of `params` in
    `pref.reference_dtype` (never the params' own buffers: those are donated); None without."""
    if pref is None:
        return None
    dtype = jnp.dtype(pref.reference_dtype)
    return jax.jit(lambda p: jax.tree.map(lambda x: x.astype(dtype) + jnp.zeros((), dtype), p))(
        params
    )


def init_state(
    cfg: ModelConfig,
    tc: TrainConfig,
    optimizer: optax.GradientTransformation,
    key: jax.Array,
    mesh: jax.sharding.Mesh | None = None,
    *,
    pref: PreferenceConfig | None = None,
) -> TrainState:
    """Fresh state; with a mesh, every leaf is placed by `state_shardings` (params created
    sharded; scalars replicated, so every leaf is a global array in a multi-process run). With
    `pref` (preference optimisation) the reference is a copy of the params (`reference_of`;
    a run from `checkpoint.init_from` replaces both)."""
    param_key, rng = jax.random.split(key)
    params = transformer.init_params(cfg, param_key, mesh)
    # With a mesh, the moments and EMA are created in their sharded layout: initialising them
    # replicated first would put every optimizer byte on every chip (an 8B model OOMs there).
    target = None if mesh is None else state_shardings(cfg, tc, optimizer, mesh, pref)
    opt_state = jax.jit(optimizer.init, out_shardings=target and target.opt_state)(params)
    ema = None
    if tc.ema_decay > 0:  # a copy (never the params' own buffers: both are donated)
        ema = jax.jit(
            lambda p: jax.tree.map(lambda x: x.astype(jnp.float32) + 0.0, p),
            out_shardings=target and target.ema,
        )(params)
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=opt_state,
        rng=rng,
        guard=new_guard(),
        ema=ema,
        reference=reference_of(params, pref),
    )
    if mesh is None or isinstance(key, jax.core.Tracer):
        return state
    return jax.device_put(state, target)


def _mean_over_micro_batches(
    state: TrainState,
    batch: dict[str, jax.Array],
    grad_fn: Callable,
    metric_names: tuple[str, ...],
    cfg: ModelConfig,
    tc: TrainConfig,
) -> tuple[jax.Array, dict[str, jax.Array], Any]:
    """(loss, metrics, f32 grads), each the mean over `tc.grad_accum` micro-batches of `batch`
    under the step's noise (`grad_fn` as `objectives.loss_and_grad` builds it, its metrics
    named `metric_names`)."""
    # Row i goes to micro-batch i % grad_accum: each device's contiguous block of the sharded
    # batch splits evenly over the micro-batches, so no rows move between devices.
    micro = jax.tree.map(lambda x: x.reshape(-1, tc.grad_accum, *x.shape[1:]).swapaxes(0, 1), batch)
    step_key = jax.random.fold_in(state.rng, state.step)

    def accumulate(carry, xs):
        micro_batch, index = xs
        (loss, aux), grads = grad_fn(state.params, micro_batch, jax.random.fold_in(step_key, index))
        return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

    # The f32 accumulator is laid out like the params (unconstrained, XLA may replicate it).
    zeros = jax.tree.map(
        lambda p, names: sharding.constrain(jnp.zeros(p.shape, jnp.float32), names),
        state.params,
        transformer.param_logical_axes(cfg),
    )
    metrics = {name: jnp.zeros((), jnp.float32) for name in metric_names}
    init = (jnp.zeros((), jnp.float32), metrics, zeros)
    total, _ = jax.lax.scan(accumulate, init, (micro, jnp.arange(tc.grad_accum)))
    return jax.tree.map(lambda x: x / tc.grad_accum, total)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    cfg: ModelConfig,
    tc: TrainConfig,
    optimizer: optax.GradientTransformation,
    pref: PreferenceConfig | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on `batch` (leading dim [batch]) in `grad_accum` micro-batches;
    with `pref`, of the preference loss on pairs against `state.reference` (never updated).

    A non-finite loss or gradient skips the update (params, optimizer state and EMA unchanged);
    the step counter still advances, so the next step draws fresh noise on the next batch.
    """
    seq_len = batch["chosen" if pref is not None else "tokens"].shape[1]
    grad_fn, block_size = loss_and_grad(cfg, tc, state.step, seq_len, pref, state.reference)
    names = () if pref is None else preference.METRICS
    loss, aux, grads = _mean_over_micro_batches(state, batch, grad_fn, names, cfg, tc)
    finite = jnp.isfinite(loss) & all_finite(grads)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    lr_scale = state.guard["lr_scale"]

    def apply(operand):
        params, opt_state, ema = operand
        updates, opt_state = optimizer.update(grads, opt_state, params)
        if tc.nan_lr_drop_after:  # the LR scale multiplies adamw's -lr·update exactly
            updates = jax.tree.map(lambda u: u * lr_scale.astype(u.dtype), updates)
        params = optax.apply_updates(params, updates)
        if ema is not None:
            d = tc.ema_decay
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p.astype(jnp.float32), ema, params)
        return params, opt_state, ema

    # lax.cond, not a select: a skipped step does not even compute the optimizer update.
    params, opt_state, ema = jax.lax.cond(
        finite, apply, lambda operand: operand, (state.params, state.opt_state, state.ema)
    )
    guard = update_guard(state.guard, loss, finite, state.step, tc)
    applied = state.step - state.guard["skipped"]  # = the optimizer's own update count
    metrics = {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
        "finite": finite,
        "lr": lr_schedule(tc)(applied) * lr_scale,
        **guard,
        **aux,
        **({} if block_size is None else {"block_size": block_size}),
    }
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, ema=ema, guard=guard
    )
    return new_state, metrics


@functools.cache
def _bound_step(
    cfg: ModelConfig,
    tc: TrainConfig,
    optimizer: optax.GradientTransformation,
    pref: PreferenceConfig | None,
) -> Callable:
    # The same function object for the same statics: JAX's tracing/lowering/compilation caches
    # are keyed on it, so a second run in one process (a resume, a test) reuses the program.
    return functools.partial(train_step, cfg=cfg, tc=tc, optimizer=optimizer, pref=pref)


def jit_train_step(
    cfg: ModelConfig,
    tc: TrainConfig,
    optimizer: optax.GradientTransformation,
    state_shardings: Any = None,
    batch_sharding: Any = None,
    pref: PreferenceConfig | None = None,
) -> Callable:
    """`train_step` jitted with the state donated (and pinned shardings when given); `pref`:
    the preference objective (`RunConfig.objective`).

    `batch_sharding` applies to every array of the batch dict (a prefix): shard the leading
    [batch] dimension only, e.g. `sharding.named_sharding(mesh, ("batch",))`, so [batch, seq]
    tokens and [batch] prompt lengths share it.
    """
    step = _bound_step(cfg, tc, optimizer, pref)
    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(
        step,
        donate_argnums=0,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=(state_shardings, None),
    )


def shardings_of(tree: Any) -> Any:
    """The shardings of a pytree of placed arrays (e.g. a TrainState created under a mesh)."""
    return jax.tree.map(lambda x: x.sharding, tree)
