"""Throughput figures of a training run: the per-device FLOP/s peak that MFU is measured against.

MFU = model FLOP/s (`ModelConfig.flops_per_token` × tokens/s) ÷ (peak × devices). On TPUs and
GPUs the peak is the data-sheet dense bf16 figure; elsewhere (CPU) it is measured in the same
process with a jitted matmul, so the ratio is taken within one run.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp

_PEAK_TFLOPS = {  # dense bf16 per chip, from vendor data sheets
    "TPU v4": 275.0,
    "TPU v5 lite": 197.0,
    "TPU v5e": 197.0,
    "TPU v5p": 459.0,
    "TPU v5": 459.0,
    "TPU v6 lite": 918.0,
    "TPU v6e": 918.0,
    "H100": 989.0,
    "H200": 989.0,
    "A100": 312.0,
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


def device_memory_gib() -> dict[str, float]:
    """{"hbm_gib": in use now, "hbm_peak_gib": peak so far}: the largest over local devices, in
    GiB; {} where the backend keeps no allocator statistics (CPU)."""
    stats = [d.memory_stats() for d in jax.local_devices()]
    if not all(stats) or "bytes_in_use" not in stats[0]:
        return {}
    out = {"hbm_gib": max(s["bytes_in_use"] for s in stats) / 2**30}
    if "peak_bytes_in_use" in stats[0]:
        out["hbm_peak_gib"] = max(s["peak_bytes_in_use"] for s in stats) / 2**30
    return out


class Meter:
    """Tokens/s (total and per device), step time and MFU between log points, with the compiling
    first step kept out.

    Call `start()` once the first step has finished (after `block_until_ready`), `tick()` after
    every later step, and `read()` at a log point (after the metrics were fetched, which syncs).
    """

    def __init__(
        self, tokens_per_step: int, flops_per_step: float, peak_per_device: float, devices: int
    ):
        self.tokens_per_step, self.flops_per_step = tokens_per_step, flops_per_step
        self.peak_per_device, self.devices = peak_per_device, devices
        self.start()

    def start(self) -> None:
        self.t0, self.steps = time.perf_counter(), 0

    def tick(self) -> None:
        self.steps += 1

    def read(self) -> dict[str, float]:
        """tokens_per_s, tokens_per_s_per_device, step_s, mfu since the last read or start (zeros
        if no timed step ran)."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        tok_s = self.steps * self.tokens_per_step / dt
        out = {
            "tokens_per_s": tok_s,
            "tokens_per_s_per_device": tok_s / self.devices,
            "step_s": dt / self.steps if self.steps else 0.0,
            "mfu": self.steps * self.flops_per_step / dt / (self.peak_per_device * self.devices),
        }
        self.start()
        return out
