"""Capacity planning before a pod-month: parameters, FLOPs, HBM per chip, expected throughput.

    plan = estimate(config, hardware("v5p-128"))      # arithmetic only, runs anywhere
    print(render(plan))
    report = aot_compile(config, "v5p-64")            # needs libtpu: the compiler's own numbers

The HBM estimate counts, per device: parameters, AdamW moments and the float32 gradient
accumulator (all sharded over fsdp × tensor, replicated over data), the optional EMA copy, and
activations of one micro-batch (`batch / grad_accum / (data · fsdp)` sequences): the residual
stream saved at each scanned layer, what the remat policy keeps inside each layer, one layer's
working set while it is recomputed, and the float32 logits. Block diffusion trains on the noisy
and the clean copy side by side: every layer sees twice the rows (`twin_forward`), the logits
stay those of one copy. A preference run (`data.format="preference"`) adds the frozen reference
params (in `preference.reference_dtype`) and runs every pair as 2 answers × n noisy copies
(`preference.n_t·n_yt`; exact log-probs for the AR baseline: 2) through the policy, with
gradients, and through the reference, forward only. It is an estimate to choose a
mesh/remat/accumulation before compiling; `aot_compile` prints the compiler's numbers beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from lladax.config import ModelConfig
from lladax.model import sharding
from lladax.train import curriculum, trainer
from lladax.train.hardware import CHIPS, GiB, Hardware, PlanError, hardware
from lladax.train.objectives import flops_multiplier, policy_rows
from lladax.train.run_config import (
    MeshConfig,
    PreferenceConfig,
    TrainConfig,
    model_config_from,
)

__all__ = [  # the hardware table's names are part of the planner's face
    "Hardware",
    "Plan",
    "PlanError",
    "activation_bytes",
    "aot_compile",
    "as_record",
    "compile_train_step",
    "estimate",
    "hardware",
    "render",
    "twin_forward",
]


@dataclasses.dataclass(frozen=True)
class Plan:
    hardware: Hardware
    mesh: dict[str, int]
    params: int
    flops_per_token: float
    micro_batch_per_device: float
    memory: dict[str, float]  # bytes per device, by component
    tokens_per_s_per_chip: float  # at `mfu`
    step_seconds: float
    mfu: float
    objective: str = ""  # what the train step computes when it is not LLaDA's one forward
    unit: str = "seq"  # what a batch row is: a sequence, or a preference pair
    rows_per_unit: int = 1  # rows through every layer per unit (pair copies, the BD twin)

    @property
    def total_bytes(self) -> float:
        return sum(self.memory.values())


def _sections(config: Any) -> tuple[ModelConfig, TrainConfig, MeshConfig, PreferenceConfig | None]:
    """The typed sections of run ConfigDict `config` that a plan reads (it reads no data), and
    the preference objective (None unless `data.format="preference"`)."""
    pref = None
    if config.data.format == "preference":
        pref = PreferenceConfig.from_config(config.get("preference") or {})
    return (
        model_config_from(config.model),
        TrainConfig.from_config(config.train),
        MeshConfig.from_config(config.mesh),
        pref,
    )


def _mesh_sizes(mesh: MeshConfig, devices: int, slices: int = 1) -> dict[str, int]:
    """Total data/fsdp/tensor sizes of a config's mesh section (per-slice sizes × slices)."""
    dcn = {"data": mesh.dcn_data, "fsdp": mesh.dcn_fsdp, "tensor": 1}
    if dcn["data"] * dcn["fsdp"] != slices:
        raise PlanError(
            f"mesh.dcn_data×mesh.dcn_fsdp = {dcn['data'] * dcn['fsdp']} but the "
            f"hardware has {slices} slice(s): set them to the slice count"
        )
    sizes = {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    per_slice = devices // slices
    fixed = math.prod(v for v in sizes.values() if v != -1)
    for k, v in sizes.items():
        if v == -1:
            sizes[k] = per_slice // fixed
    if math.prod(sizes.values()) != per_slice:
        raise PlanError(
            f"mesh {sizes} does not use the {per_slice} devices of a slice: "
            "set --config.mesh.* so data×fsdp×tensor = devices (or one -1)"
        )
    return {k: sizes[k] * dcn[k] for k in sizes}


def twin_forward(cfg: ModelConfig, seq_len: int, block_curriculum: str = "") -> bool:
    """Whether training runs block diffusion's two-copy forward ([noisy | clean]: 2 · seq_len
    rows through every layer) at some step: a block size below seq_len, the target's or a
    curriculum stage's (a size >= seq_len is one block: the plain forward)."""
    plan = curriculum.stages(block_curriculum, cfg)
    sizes = [size for size, _ in plan] or [cfg.block_size]
    return cfg.kind == "block_diffusion" and min(sizes) < seq_len


def activation_bytes(
    cfg: ModelConfig, micro_batch: float, seq_len: int, tensor: int = 1, twin: bool | None = None
) -> dict[str, float]:
    """Activation memory of one micro-batch on one device (heads/MLP/vocab split over tensor).

    `twin` (default: `twin_forward(cfg, seq_len)`): block diffusion's two-copy forward, whose
    layers see 2 · seq_len rows (and attention scores over 2 · seq_len keys) while the LM head
    runs on the noisy half only."""
    twin = twin_forward(cfg, seq_len) if twin is None else twin
    b, n, d = micro_batch, seq_len * (2 if twin else 1), cfg.d_model
    c = jnp.dtype(cfg.dtype).itemsize
    h, f = cfg.n_heads / tensor, cfg.mlp_hidden_size / tensor
    qkv = b * n * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim / tensor
    scores = b * h * n * n  # one attention matrix, elements
    projections = qkv + b * n * d + 3 * b * n * f  # q k v, attn out, gate up hidden
    inside = {  # elements each scanned layer keeps for the backward pass, by remat policy
        "none": projections + 2 * b * n * d + scores,
        "full": 0.0,
        "dots": projections + scores * 2,  # f32 scores are a dot output too
        "dots_no_batch": projections,
        "save_attn_out": b * n * d,
        "save_qkv_proj": qkv,
        "offload": 0.0,  # kept in host memory, not HBM
    }[cfg.remat_policy]
    working = projections + 2 * b * n * d + scores * (4 + c) / c  # f32 scores + probs, one layer
    return {
        "residual stream (all layers)": cfg.n_layers * b * n * d * c,
        f"saved inside layers ({cfg.remat_policy})": cfg.n_layers * inside * c,
        "one layer recomputed": working * c,
        "logits (f32, + grad)": 2 * b * seq_len * cfg.vocab_size / tensor * 4,
    }


def estimate(config: Any, hw: Hardware, mfu: float = 0.45) -> Plan:
    """The plan of run config `config` (a `run_config` ConfigDict) on `hw` at `mfu`."""
    cfg, tc, mesh_config, pref = _sections(config)
    seq = int(config.data.seq_len)
    mesh = _mesh_sizes(mesh_config, hw.chips, hw.slices)
    batch_shards = mesh["data"] * mesh["fsdp"]
    if tc.batch_size % (tc.grad_accum * batch_shards):
        raise PlanError(
            f"batch {tc.batch_size} does not split into grad_accum {tc.grad_accum} "
            f"× {batch_shards} data·fsdp shards: change train.batch_size or mesh"
        )
    n = cfg.param_count()
    param_shards = mesh["fsdp"] * mesh["tensor"]
    pbytes = jnp.dtype(cfg.param_dtype).itemsize
    memory = {
        "params": n * pbytes / param_shards,
        "AdamW moments": 2 * n * pbytes / param_shards,
        "gradients (f32 accumulator + one micro-batch)": n * (4 + pbytes) / param_shards,
    }
    if tc.ema_decay:
        memory["EMA params"] = n * pbytes / param_shards
    if pref is not None:
        ref_bytes = jnp.dtype(pref.reference_dtype).itemsize
        memory[f"reference params ({pref.reference_dtype}, frozen)"] = n * ref_bytes / param_shards
    micro = tc.batch_size / tc.grad_accum / batch_shards
    twin = twin_forward(cfg, seq, tc.block_curriculum)
    memory |= activation_bytes(cfg, micro * policy_rows(cfg, pref), seq, mesh["tensor"], twin)
    fpt = cfg.flops_per_token(seq)
    tokens_per_s_chip = mfu * hw.peak_flops / fpt
    step = tc.batch_size * seq * flops_multiplier(cfg, pref) / (tokens_per_s_chip * hw.chips)
    objective = "\n".join(x for x in (_objective(cfg, tc, seq), _preference(cfg, pref)) if x)
    unit = "seq" if pref is None else "pair"
    rows = policy_rows(cfg, pref) * (2 if twin else 1)
    return Plan(
        hw, mesh, n, fpt, micro, memory, tokens_per_s_chip, step, mfu, objective, unit, rows
    )


def _preference(cfg: ModelConfig, pref: PreferenceConfig | None) -> str:
    """The plan's line on a preference objective ("" for pretraining / SFT)."""
    if pref is None:
        return ""
    if cfg.causal:
        estimate = "exact log-probs"
    else:
        anti = "antithetic" if pref.antithetic else "independent noise"
        estimate = f"ELBO n={pref.budget} (n_t={pref.n_t} × n_yt={pref.n_yt}, {anti})"
    return (
        f"preference (DPO, beta={pref.beta}): {estimate}; {policy_rows(cfg, pref)} rows per pair "
        f"through the policy (fwd + bwd) and the {pref.reference_dtype} reference (fwd): "
        f"{flops_multiplier(cfg, pref):.1f}x a training row's FLOPs"
    )


def _objective(cfg: ModelConfig, tc: TrainConfig, seq_len: int) -> str:
    """The plan's lines on a block-diffusion objective ("" for the other kinds)."""
    if cfg.kind != "block_diffusion":
        return ""
    stages = f"\n{'':18}block sizes {tc.block_curriculum}" if tc.block_curriculum else ""
    if not twin_forward(cfg, seq_len, tc.block_curriculum):
        return f"block diffusion, block {cfg.block_size}: one block, LLaDA's forward{stages}"
    return (
        f"block diffusion, block {cfg.block_size}: [noisy | clean] forward, {2 * seq_len} rows "
        f"per sequence (FLOPs: both copies){stages}"
    )


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= scale:
            return f"{nbytes / scale:8.2f} {unit}"
    return f"{nbytes:8.0f} B  "


def render(plan: Plan, aot: dict[str, float] | None = None, mesh_notes: Sequence[str] = ()) -> str:
    """The plan as the text `lladax plan` prints; `aot` adds the compiler's memory analysis,
    `mesh_notes` the lines on the mesh choice (`mesh_choice.explain`)."""
    hw = plan.hardware
    lines = [
        f"hardware          {hw.name}: {hw.chips} devices, {hw.hbm_bytes / GiB:.0f} GiB HBM and "
        f"{hw.peak_flops / 1e12:.0f} TFLOP/s bf16 each",
        *([f"objective         {plan.objective}"] if plan.objective else []),
        f"mesh              data={plan.mesh['data']} fsdp={plan.mesh['fsdp']} "
        f"tensor={plan.mesh['tensor']}; micro-batch {plan.micro_batch_per_device:g} "
        f"{plan.unit}/device",
        *[f"{'mesh choice' if i == 0 else '':18}{note}" for i, note in enumerate(mesh_notes)],
        f"parameters        {plan.params:,} ({plan.params / 1e9:.2f}B)",
        f"FLOPs per token   {plan.flops_per_token / 1e9:.2f} GFLOP ("
        + ("" if plan.objective else "6·N_matmul + 12·layers·seq·d; ")
        + "see ModelConfig.flops_per_token)",
        "HBM per device (estimate):",
        *[f"  {k:<46} {_size(v)}" for k, v in plan.memory.items()],
        f"  {'total':<46} {_size(plan.total_bytes)} of {hw.hbm_bytes / GiB:.0f} GiB"
        + ("" if plan.total_bytes <= hw.hbm_bytes else "  ** DOES NOT FIT **"),
        f"throughput        {plan.tokens_per_s_per_chip:,.0f} tokens/s/chip at {plan.mfu:.0%} "
        f"MFU; step {plan.step_seconds:.2f} s",
    ]
    if aot is not None:
        lines += [
            f"XLA ahead-of-time compile for {hw.topology} ({aot['compile_seconds']:.0f} s), "
            "per device:",
            *[f"  {k:<46} {_size(aot[k])}" for k in ("argument", "output", "alias", "temp")],
            f"  {'peak (argument + output - alias + temp)':<46} {_size(aot['peak'])} of "
            f"{hw.hbm_bytes / GiB:.0f} GiB"
            + ("" if aot["peak"] <= hw.hbm_bytes else "  ** DOES NOT FIT **"),
        ]
    return "\n".join(lines)


def as_record(
    plan: Plan, config: Any, aot: dict[str, float] | None = None, mesh_notes: Sequence[str] = ()
) -> dict[str, Any]:
    """The plan as plain JSON-able data (`lladax plan --json`): sizes in bytes."""
    hw = plan.hardware
    return {
        "hardware": hw.name,
        "chips": hw.chips,
        "slices": hw.slices,
        "hbm_bytes": hw.hbm_bytes,
        "mesh": {**plan.mesh, "dcn_data": config.mesh.dcn_data, "dcn_fsdp": config.mesh.dcn_fsdp},
        "grad_accum": int(config.train.grad_accum),
        "micro_batch_per_device": plan.micro_batch_per_device,
        "unit": plan.unit,
        "params": plan.params,
        "memory": plan.memory,
        "estimate_bytes": plan.total_bytes,
        "step_seconds": plan.step_seconds,
        "objective": plan.objective,
        "mesh_notes": list(mesh_notes),
        "aot": aot,
    }


def compile_train_step(config: Any, devices: Any) -> dict[str, float]:
    """Compile (not run) the real train step of `config` over `devices`; the compiler's
    per-device memory analysis in bytes, and the compile time. Devices may be abstract TPU
    devices from `jax.experimental.topologies` (see `aot_compile`) or real ones."""
    import time

    import jax

    cfg, tc, mesh_config, pref = _sections(config)
    if cfg.attention_impl == "auto" and devices[0].platform == "tpu":
        cfg = dataclasses.replace(cfg, attention_impl="splash")  # "auto" would see the CPU
    mesh = sharding.make_mesh(**dataclasses.asdict(mesh_config), devices=devices)
    optimizer = trainer.make_optimizer(tc)
    key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: no array on any device
    t0 = time.perf_counter()
    with jax.set_mesh(mesh):
        init = jax.jit(lambda k: trainer.init_state(cfg, tc, optimizer, k, mesh, pref=pref))
        state = jax.tree.map(
            lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
            init.eval_shape(key),
            init.lower(key).compile().output_shardings,
        )
        batch_sh = sharding.named_sharding(mesh, ("batch",))
        rows = (tc.batch_size, int(config.data.seq_len))
        names = ("tokens",) if pref is None else ("chosen", "rejected")
        batch = {k: jax.ShapeDtypeStruct(rows, jnp.int32, sharding=batch_sh) for k in names}
        if pref is not None:
            batch["prompt_lengths"] = jax.ShapeDtypeStruct(rows[:1], jnp.int32, sharding=batch_sh)
        state_sh = trainer.shardings_of(state)
        step = trainer.jit_train_step(cfg, tc, optimizer, state_sh, batch_sh, pref)
        compiled = step.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    report = {
        name: float(getattr(mem, f"{name}_size_in_bytes"))
        for name in ("argument", "output", "alias", "temp", "generated_code")
    }
    report["peak"] = report["argument"] + report["output"] - report["alias"] + report["temp"]
    report["compile_seconds"] = time.perf_counter() - t0
    return report


def aot_compile(config: Any, hw: Hardware) -> dict[str, float]:
    """`compile_train_step` for TPU slice `hw` from this (CPU) machine; needs libtpu. Nothing
    runs on a TPU: `jax.experimental.topologies` describes the slice's devices."""
    from jax.experimental import topologies

    from lladax.libtpu_env import quiet_without_tpu

    quiet_without_tpu()  # a no-op once JAX has started, but a script may call this first
    if hw.topology is None:
        raise PlanError(
            f"ahead-of-time compilation needs a TPU slice name (e.g. v5p-64), not {hw.name}"
        )
    try:
        # v4 / v5p chips have two TensorCores: one JAX device per chip ("megacore"), as on a pod
        megacore = CHIPS[hw.topology.partition(":")[0]].cores_in_name > 1
        options = {"chip_config_name": "megacore"} if megacore else {}
        topo = topologies.get_topology_desc(hw.topology, "tpu", num_slices=hw.slices, **options)
    except Exception as e:  # libtpu missing or the topology unknown to it
        first_line = str(e).splitlines()[0] if str(e) else ""
        raise PlanError(
            f"cannot describe TPU topology {hw.topology} ({type(e).__name__}: "
            f"{first_line}); install libtpu with `uv sync --extra tpu`"
        ) from e
    return compile_train_step(config, topo.devices)
