"""Training: the `TrainState` pytree, a pure jitted `train_step`, and the loop around it.

    state, metrics = train_step(state, batch)      # jitted, state donated

`train_step` draws the forward-process noise from `state.rng` folded with the step, runs the
micro-batches with `lax.scan` (gradient accumulation), and applies one optax update. Everything
static (model config, run config) is closed over; the state is a plain pytree of arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from lladax import diffusion, model, sharding
from lladax.config import ModelConfig, TrainConfig


@struct.dataclass
class TrainState:
    step: jax.Array           # [] int32
    params: Any               # model params pytree
    opt_state: Any            # optax state pytree
    rng: jax.Array            # base key; each step folds in `step`


def lr_schedule(tc: TrainConfig) -> optax.Schedule:
    """Warmup-stable-decay (the paper's schedule): linear warmup, constant, linear decay."""
    decay_steps = max(1, int(tc.steps * tc.decay_fraction))
    warmup = min(tc.warmup_steps, max(0, tc.steps - decay_steps))
    stable_end = tc.steps - decay_steps
    return optax.join_schedules(
        [optax.linear_schedule(0.0, tc.lr, max(1, warmup)),
         optax.constant_schedule(tc.lr),
         optax.linear_schedule(tc.lr, tc.lr * tc.final_lr_ratio, decay_steps)],
        boundaries=[warmup, stable_end])


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """AdamW (decoupled weight decay on matrices only, not norms) with global-norm clipping."""
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(lr_schedule(tc), b1=tc.b1, b2=tc.b2, eps=tc.eps,
                    weight_decay=tc.weight_decay, mask=decay_mask))


def init_state(cfg: ModelConfig, tc: TrainConfig, optimizer: optax.GradientTransformation,
               key: jax.Array, mesh: jax.sharding.Mesh | None = None) -> TrainState:
    """Fresh state; with a mesh, params and optimizer state are created sharded."""
    param_key, rng = jax.random.split(key)
    params = model.init_params(cfg, param_key, mesh)
    opt_state = jax.jit(optimizer.init)(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=opt_state, rng=rng)


def loss_fn(params: Any, cfg: ModelConfig, tc: TrainConfig, tokens: jax.Array,
            key: jax.Array) -> jax.Array:
    """Pretraining loss of one micro-batch under fresh forward-process noise."""
    mask_key, trunc_key = jax.random.split(key)
    noisy, p_mask, _ = diffusion.mask_tokens(mask_key, tokens, cfg.mask_token_id, tc.mask_eps,
                                             stratified=tc.stratified_t)
    attention_mask = None
    if tc.truncate_prob > 0:
        attention_mask = diffusion.truncation_mask(trunc_key, *tokens.shape, tc.truncate_prob)
    return diffusion.pretrain_loss(params, cfg, tokens, noisy, p_mask, attention_mask)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: ModelConfig,
               tc: TrainConfig, optimizer: optax.GradientTransformation
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update on batch["tokens"] [batch, seq] in `grad_accum` micro-batches."""
    tokens = batch["tokens"]
    micro = tokens.reshape(tc.grad_accum, -1, tokens.shape[-1])
    step_key = jax.random.fold_in(state.rng, state.step)
    grad_fn = jax.value_and_grad(loss_fn)

    def accumulate(carry, xs):
        loss_sum, grad_sum = carry
        micro_tokens, index = xs
        loss, grads = grad_fn(state.params, cfg, tc, micro_tokens,
                              jax.random.fold_in(step_key, index))
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
    (loss, grads), _ = jax.lax.scan(accumulate, (jnp.zeros((), jnp.float32), zeros),
                                    (micro, jnp.arange(tc.grad_accum)))
    loss, grads = loss / tc.grad_accum, jax.tree.map(lambda g: g / tc.grad_accum, grads)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
               "lr": lr_schedule(tc)(state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def jit_train_step(cfg: ModelConfig, tc: TrainConfig, optimizer: optax.GradientTransformation,
                   state_shardings: Any = None, batch_sharding: Any = None) -> Callable:
    """`train_step` jitted with the state donated (and pinned shardings when given)."""
    step = functools.partial(train_step, cfg=cfg, tc=tc, optimizer=optimizer)
    if state_shardings is None:
        return jax.jit(step, donate_argnums=0)
    return jax.jit(step, donate_argnums=0,
                   in_shardings=(state_shardings, {"tokens": batch_sharding}),
                   out_shardings=(state_shardings, None))


def shardings_of(tree: Any) -> Any:
    """The shardings of a pytree of placed arrays (e.g. a TrainState created under a mesh)."""
    return jax.tree.map(lambda x: x.sharding, tree)


@functools.partial(jax.jit, static_argnames=("cfg",))
def eval_loss(params: Any, cfg: ModelConfig, tokens: jax.Array, key: jax.Array) -> jax.Array:
    """Pretraining loss on [batch, seq] with noise from `key` (fixed key = comparable numbers)."""
    noisy, p_mask, _ = diffusion.mask_tokens(key, tokens, cfg.mask_token_id)
    return diffusion.pretrain_loss(params, cfg, tokens, noisy, p_mask)


# --- throughput / MFU ----------------------------------------------------------------------------
_PEAK_TFLOPS = {  # dense bf16 per chip, from vendor data sheets
    "TPU v4": 275.0, "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0, "H100": 989.0, "H200": 989.0, "A100": 312.0,
}


def measure_matmul_peak(n: int = 1024, dtype: Any = jnp.float32, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of a jitted [n, n] @ [n, n] on the default device."""
    a = jnp.ones((n, n), dtype)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def peak_flops_per_device() -> tuple[float, str]:
    """(FLOP/s, source): the data-sheet peak for known accelerators, else a measured matmul."""
    kind = jax.devices()[0].device_kind
    for name, tflops in _PEAK_TFLOPS.items():
        if name.lower() in kind.lower():
            return tflops * 1e12, f"{kind} data sheet"
    return measure_matmul_peak(), f"measured f32 matmul on {kind}"


# --- the loop ------------------------------------------------------------------------------------
def run(config: Any, stop_after: int | None = None) -> dict[str, float]:
    """Train as `config` (a run ConfigDict, see `config.run_config`) says; returns final metrics.

    Resumes from the newest checkpoint in `log.workdir` if there is one — params, optimizer
    state, step, rng and the data iterator's position, so a resumed run sees exactly the batches
    an uninterrupted one would. Evaluates the held-out loss every `eval.every` steps with fixed
    noise (comparable across steps), logs JSON lines to `workdir/metrics.jsonl` and saves the
    final state. `stop_after` ends (and checkpoints) the run early at that step, as a preemption
    would, without changing the schedule of `train.steps`.
    """
    import json
    import shutil
    from pathlib import Path

    from tqdm import tqdm

    from lladax import checkpoint, data
    from lladax.config import model_config_from
    from lladax.tokenizer import SentencePieceTokenizer, check_compatible, load_tokenizer

    cfg = model_config_from(config.model)
    tc = TrainConfig.from_config(config.train)
    workdir = Path(config.log.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(config.data.tokenizer or "embedded", vocab_size=cfg.vocab_size)
    check_compatible(tok, cfg)
    if isinstance(tok, SentencePieceTokenizer):  # the run directory is self-contained
        shutil.copyfile(tok.name, workdir / "tokenizer.model")

    mesh = sharding.make_mesh(**dict(config.mesh))
    n_batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
    if (tc.batch_size // tc.grad_accum) % n_batch_shards:
        raise ValueError(f"micro-batch {tc.batch_size // tc.grad_accum} is not divisible by the "
                         f"{n_batch_shards} data×fsdp shards: change train.batch_size or mesh")
    optimizer = make_optimizer(tc)
    mgr = checkpoint.manager(workdir, keep=config.checkpoint.keep)
    meta = {"model": dataclasses.asdict(cfg), "run": config.to_dict(),
            "tokenizer": "tokenizer.model" if (workdir / "tokenizer.model").exists() else
            str(config.data.tokenizer)}
    with jax.set_mesh(mesh):
        state = init_state(cfg, tc, optimizer, jax.random.key(tc.seed), mesh)
        data_state = None
        if mgr.latest_step() is not None:
            state = checkpoint.restore(mgr, state)
            data_state = checkpoint.read_meta(workdir, int(state.step))[1].get("data_state")
        state_sh = shardings_of(state)
        batch_sh = sharding.named_sharding(mesh, ("batch", None))
        step_fn = jit_train_step(cfg, tc, optimizer, state_sh, batch_sh)
        train_iter = iter(data.make_batches(tok, source=config.data.source, split="train",
                                            seq_len=config.data.seq_len,
                                            batch_size=tc.batch_size, seed=config.data.seed))
        if data_state is not None:
            train_iter.set_state(data_state)
        eval_set = [jax.device_put(b["tokens"], batch_sh) for b in data.eval_batches(
            tok, source=config.data.source, seq_len=config.data.seq_len,
            batch_size=config.eval.batch_size, max_batches=config.eval.batches)]
        eval_key = jax.random.key(12345)

        def evaluate(params) -> float:
            losses = [eval_loss(params, cfg, t, jax.random.fold_in(eval_key, i))
                      for i, t in enumerate(eval_set)]
            return float(jnp.mean(jnp.stack(losses))) if losses else float("nan")

        peak, peak_source = peak_flops_per_device()
        flops_per_step = cfg.flops_per_token(config.data.seq_len) * tc.batch_size * \
            config.data.seq_len
        tokens_per_step = tc.batch_size * config.data.seq_len
        start_step = int(state.step)
        metrics_file = open(workdir / "metrics.jsonl", "a")  # noqa: SIM115 (closed below)
        last: dict[str, float] = {}
        end_step = tc.steps if stop_after is None else min(tc.steps, stop_after)
        bar = tqdm(range(start_step, end_step), initial=start_step, total=tc.steps,
                   disable=not config.log.progress, dynamic_ncols=True)
        if start_step == 0:
            last["eval_loss"] = evaluate(state.params)
            metrics_file.write(json.dumps({"step": 0, "eval_loss": last["eval_loss"]}) + "\n")
        t_last, steps_since = time.perf_counter(), 0
        for step in bar:
            batch = {"tokens": jax.device_put(next(train_iter)["tokens"], batch_sh)}
            state, m = step_fn(state, batch)
            steps_since += 1
            done = step + 1
            if done == start_step + 1:  # keep compilation out of the throughput numbers
                jax.block_until_ready(m)
                t_last, steps_since = time.perf_counter(), 0
            if done % config.log.every == 0 or done == end_step:
                m = {k: float(v) for k, v in m.items()}
                dt = time.perf_counter() - t_last
                tok_s = steps_since * tokens_per_step / dt  # 0 if only the compiling step ran
                mfu = steps_since * flops_per_step / dt / (peak * mesh.size)
                t_last, steps_since = time.perf_counter(), 0
                record = {"step": done, **m, "tokens_per_s": tok_s, "mfu": mfu}
                if config.eval.every and (done % config.eval.every == 0 or done == end_step):
                    record["eval_loss"] = evaluate(state.params)
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
                last.update(record)
                bar.set_postfix(loss=f"{m['loss']:.3f}", eval=f"{last.get('eval_loss', 0):.3f}",
                                tok_s=f"{tok_s:,.0f}", mfu=f"{mfu:.1%}")
            if config.checkpoint.every and done % config.checkpoint.every == 0:
                checkpoint.save(mgr, state, meta | {"data_state": train_iter.get_state()})
        if mgr.latest_step() != int(state.step):
            checkpoint.save(mgr, state, meta | {"data_state": train_iter.get_state()}, force=True)
        mgr.wait_until_finished()
        metrics_file.close()
    last["peak_flops"] = peak
    last["peak_source"] = peak_source  # type: ignore[assignment]
    return last
