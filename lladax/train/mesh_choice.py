"""Choosing the mesh: given a slice (`hardware`) and a run config's global batch, the layout
(data / fsdp / tensor within a slice, data or fsdp across slices, gradient accumulation) that
divides the batch, fits HBM and has the shortest expected step.

    best, runner_up = choose(config, hardware("v5p-1024"))[:2]
    best.layout.flags()     # ["--config.mesh.data=1", ..., "--config.train.grad_accum=5"]

Candidates: tensor sizes that split heads, MLP and vocabulary (powers of two up to 16), fsdp ×
data filling the rest of a slice, slices along data or fsdp, and every micro-batch per device
that divides the batch. Each is planned (`plan.estimate`: HBM per chip) and timed by a simple,
stated model — compute at the plan's MFU plus the collectives it adds, none overlapped:

  fsdp     per micro-batch: gather the params forward, again backward, reduce-scatter grads
           (3 × params / tensor × (fsdp − 1) / fsdp bytes per chip)
  tensor   per layer and micro-batch: 4 all-reduces of the activations (2 forward, 2 backward,
           2 more when `full` remat recomputes the forward), ring cost 2 (t − 1) / t
  data     per step: one all-reduce of the (fsdp × tensor-sharded) gradients

over the slice's fast links (ICI, NVLink), or the slow ones (DCN, InfiniBand) for an axis that
crosses slices. The model ranks layouts; it does not promise a step time. A layout fits when
its estimate is at most `HEADROOM` of HBM (the rest is for XLA's own buffers).

Tensor parallelism is used only when no layout without it (or with less) fits and divides the
batch: its all-reduces sit on the critical path of every layer, and its memory is what the
estimate models worst (the AOT matrix, docs/scaling.md: tensor=2 layouts with gradient
accumulation peak ~10 GiB above the estimate, on v6e-256 beyond the chip).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from lladax.train.hardware import Hardware, PlanError

HEADROOM = 0.85  # fraction of HBM a plan may use; the estimate is within ~15 % of the compiler
MAX_TENSOR = 16
# Layouts whose modelled steps are within this fraction of the fastest count as equally fast:
# the model is too coarse to separate them, and the simplest of them (least accumulation, then
# least replication) wins.
EQUAL = 0.02


@dataclasses.dataclass(frozen=True)
class Layout:
    """Mesh sizes within one slice, slices along data / fsdp, and gradient accumulation."""

    data: int
    fsdp: int
    tensor: int
    dcn_data: int = 1
    dcn_fsdp: int = 1
    grad_accum: int = 1

    def flags(self) -> list[str]:
        """The `lladax train` / `plan` overrides that select this layout."""
        mesh = {k: getattr(self, k) for k in ("data", "fsdp", "tensor", "dcn_data", "dcn_fsdp")}
        return [f"--config.mesh.{k}={v}" for k, v in mesh.items()] + [
            f"--config.train.grad_accum={self.grad_accum}"
        ]

    def describe(self) -> str:
        slices = ""
        if self.dcn_data > 1 or self.dcn_fsdp > 1:
            slices = f" × slices (data={self.dcn_data} fsdp={self.dcn_fsdp})"
        return (
            f"data={self.data} fsdp={self.fsdp} tensor={self.tensor}{slices}, "
            f"grad_accum {self.grad_accum}"
        )

    def applied(self, config: Any) -> Any:
        """A copy of run ConfigDict `config` with this layout's mesh and grad_accum."""
        out = copy.deepcopy(config)
        out.mesh.update(
            data=self.data,
            fsdp=self.fsdp,
            tensor=self.tensor,
            dcn_data=self.dcn_data,
            dcn_fsdp=self.dcn_fsdp,
        )
        out.train.grad_accum = self.grad_accum
        return out


def parse_layout(text: str) -> Layout:
    """`data=1,fsdp=256,tensor=2[,dcn_data=2][,grad_accum=5]` -> Layout (one-line errors)."""
    fields = {f.name for f in dataclasses.fields(Layout)}
    values: dict[str, int] = {}
    for part in text.split(","):
        key, eq, value = part.strip().partition("=")
        if not eq or key not in fields or not value.isdigit() or int(value) < 1:
            raise PlanError(
                f"--mesh {text!r}: write KEY=N pairs, e.g. data=1,fsdp=256,tensor=2,grad_accum=5 "
                f"(keys {sorted(fields)}, N >= 1), or 'auto' / 'config'"
            )
        values[key] = int(value)
    missing = sorted({"data", "fsdp", "tensor"} - set(values))
    if missing:
        raise PlanError(f"--mesh {text!r} lacks {missing}: give data, fsdp and tensor sizes")
    return Layout(**values)


@dataclasses.dataclass(frozen=True)
class Choice:
    layout: Layout
    plan: Any  # plan.Plan
    seconds: dict[str, float]  # compute, fsdp, tensor, data; "step" = their sum
    fits: bool


def _powers_of_two(limit: int) -> list[int]:
    return [1 << k for k in range(limit.bit_length()) if (1 << k) <= limit]


def candidates(config: Any, hw: Hardware) -> list[Layout]:
    """Every layout of `hw` that divides the batch (module doc)."""
    cfg, batch = config.model, int(config.train.batch_size)
    per_slice, slices = hw.chips_per_slice, hw.slices
    out = []
    for t in _powers_of_two(min(MAX_TENSOR, per_slice)):
        if cfg.n_heads % t or cfg.mlp_hidden_size % t or cfg.vocab_size % t or per_slice % t:
            continue
        for f in _powers_of_two(per_slice // t):
            d = per_slice // (t * f)
            if d * f * t != per_slice:
                continue
            spreads = [(slices, 1), (1, slices)] if slices > 1 else [(1, 1)]
            for dcn_data, dcn_fsdp in spreads:
                shards = d * f * slices
                if batch % shards:
                    continue
                rows = batch // shards
                for micro in (m for m in range(1, rows + 1) if rows % m == 0):
                    out.append(Layout(d, f, t, dcn_data, dcn_fsdp, rows // micro))
    return out


def step_seconds(planned: Any, layout: Layout, hw: Hardware, config: Any) -> dict[str, float]:
    """The model's step time of a layout (`planned`: its `plan.Plan`), by part (module doc)."""
    p = planned.params * 4.0  # f32 params and gradients
    d_model, layers = int(config.model.d_model), int(config.model.n_layers)
    seq, t = int(config.data.seq_len), layout.tensor
    fsdp = layout.fsdp * layout.dcn_fsdp
    data = layout.data * layout.dcn_data
    fsdp_bw = hw.slow_bw if layout.dcn_fsdp > 1 else hw.fast_bw
    fsdp_s = layout.grad_accum * 3 * p / t * (fsdp - 1) / fsdp / fsdp_bw
    rows = planned.micro_batch_per_device * planned.rows_per_unit
    act = rows * seq * d_model * 2.0  # bf16 activations of one micro-batch
    reduces = 6 if config.model.remat_policy == "full" else 4
    tensor_s = layout.grad_accum * layers * reduces * 2 * (t - 1) / t * act / hw.fast_bw
    grads = p / (fsdp * t)
    data_s = 0.0
    if data > 1:
        inner = layout.data
        data_s = 2 * (inner - 1) / inner * grads / hw.fast_bw if inner > 1 else 0.0
        if layout.dcn_data > 1:
            data_s += 2 * (layout.dcn_data - 1) / layout.dcn_data * grads / hw.slow_bw
    parts = {
        "compute": planned.step_seconds,
        "fsdp": fsdp_s,
        "tensor": tensor_s,
        "data": data_s,
    }
    return {**parts, "step": sum(parts.values())}


def choose(config: Any, hw: Hardware, mfu: float = 0.45) -> list[Choice]:
    """Every candidate layout planned and timed, best first: those that fit, least tensor
    parallelism first; within one tensor size the ones within `EQUAL` of the fastest step
    (simplest first), then the rest by step time; then the layouts that do not fit."""
    from lladax.train import plan

    choices = []
    for layout in candidates(config, hw):
        estimate = plan.estimate(layout.applied(config), hw, mfu)
        seconds = step_seconds(estimate, layout, hw, config)
        fits = estimate.total_bytes <= HEADROOM * hw.hbm_bytes
        choices.append(Choice(layout, estimate, seconds, fits))
    if not choices:
        raise PlanError(
            f"no layout of {hw.name} ({hw.chips} chips) divides train.batch_size="
            f"{config.train.batch_size}: make it a multiple of {hw.chips // MAX_TENSOR}"
        )
    fitting = [c for c in choices if c.fits]
    least_tensor = min((c.layout.tensor for c in fitting), default=0)
    fastest = min(
        (c.seconds["step"] for c in fitting if c.layout.tensor == least_tensor), default=0
    )

    def rank(c: Choice) -> tuple:
        equal = c.fits and c.seconds["step"] <= fastest * (1 + EQUAL)
        simple = (c.layout.grad_accum, c.layout.data * c.layout.dcn_data)
        return (
            not c.fits,
            c.layout.tensor,
            not equal,
            *(simple if equal else ()),
            c.seconds["step"],
        )

    return sorted(choices, key=rank)


def explain(choices: list[Choice], hw: Hardware) -> list[str]:
    """The plan's lines on the choice: the best layout and why, the runner-up, the flags."""
    best = choices[0]
    if not best.fits:
        return [
            f"no layout of {hw.name} fits {HEADROOM:.0%} of HBM: the smallest needs "
            f"{best.plan.total_bytes / 2**30:.1f} GiB/chip; lower data.seq_len or the "
            "micro-batch, or use a remat policy that saves less (docs/scaling.md)"
        ]

    def line(c: Choice) -> str:
        s = c.seconds
        return (
            f"{c.layout.describe()} ({c.plan.micro_batch_per_device:g} {c.plan.unit}/device): "
            f"{c.plan.total_bytes / 2**30:.1f} GiB/chip, step ~{s['step']:.2f} s (compute "
            f"{s['compute']:.2f} + fsdp {s['fsdp']:.2f} + tensor {s['tensor']:.2f} + data "
            f"{s['data']:.2f})"
        )

    lines = [f"best: {line(best)}"]
    runner = next((c for c in choices[1:] if c.fits), None)
    if runner is not None:
        lines.append(f"runner-up: {line(runner)}")
    lines.append("flags: " + " ".join(best.layout.flags()))
    return lines
