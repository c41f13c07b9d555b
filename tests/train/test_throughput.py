"""Throughput figures of the training log: the meter's arithmetic and device memory statistics."""

import types

import jax
import pytest

from lladax.train import throughput


def test_meter_reports_rates_per_run_and_per_device(monkeypatch):
    clock = iter([100.0, 102.0, 102.0])  # start, read (2 s later), restart
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    meter = throughput.Meter(
        tokens_per_step=1000, flops_per_step=4e9, peak_per_device=1e9, devices=4
    )
    for _ in range(4):
        meter.tick()
    got = meter.read()
    assert got["tokens_per_s"] == pytest.approx(2000.0)  # 4 steps × 1000 tokens / 2 s
    assert got["tokens_per_s_per_device"] == pytest.approx(500.0)
    assert got["step_s"] == pytest.approx(0.5)
    assert got["mfu"] == pytest.approx(4 * 4e9 / 2 / 4e9)  # 8 GFLOP/s of a 4 GFLOP/s peak


def test_device_memory_is_reported_where_the_backend_keeps_statistics(monkeypatch):
    assert throughput.device_memory_gib() == {}  # CPU keeps none
    fake = [
        types.SimpleNamespace(
            memory_stats=lambda u=u: {"bytes_in_use": u * 2**30, "peak_bytes_in_use": 2 * u * 2**30}
        )
        for u in (3, 5)
    ]
    monkeypatch.setattr(jax, "local_devices", lambda: fake)
    assert throughput.device_memory_gib() == {"hbm_gib": 5.0, "hbm_peak_gib": 10.0}
