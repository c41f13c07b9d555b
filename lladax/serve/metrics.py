"""The server's counters, rendered as Prometheus text for GET /metrics.

One `Metrics` object per engine (no module state); every update takes its lock, so the worker
thread and the event loop can both write.
"""

from __future__ import annotations

import threading
from collections import Counter

# name -> (type, help); labelled series are keyed "name{label=...}"
_SERIES = {
    "lladax_requests_total": ("counter", "HTTP requests answered, by endpoint and status"),
    "lladax_prompt_tokens_total": ("counter", "prompt tokens of generations run"),
    "lladax_completion_tokens_total": ("counter", "answer tokens returned"),
    "lladax_generations_total": ("counter", "rows generated (one per request and choice)"),
    "lladax_generations_cancelled_total": ("counter", "rows dropped: their client left"),
    "lladax_stream_disconnects_total": ("counter", "streams whose client left before [DONE]"),
    "lladax_batches_total": ("counter", "sampler calls, by batch size (rows incl. fill)"),
    "lladax_batch_rows_total": ("counter", "real rows over all sampler calls"),
    "lladax_compiles_total": ("counter", "new (prompt bucket, gen, batch, sampler) shapes run"),
    "lladax_forward_passes_total": ("counter", "model forward passes of all sampler calls"),
    "lladax_queue_seconds_total": ("counter", "time rows waited before their batch ran"),
    "lladax_compute_seconds_total": ("counter", "time spent in sampler calls"),
    "lladax_queue_depth": ("gauge", "rows waiting now"),
}


class Metrics:
    """Counters and gauges by series name (with labels in the name, Prometheus style)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: Counter[str] = Counter()

    def add(self, name: str, value: float = 1.0, **labels: object) -> None:
        with self._lock:
            self._values[_key(name, labels)] += value

    def set(self, name: str, value: float) -> None:
        with self._lock:
            self._values[name] = value

    def get(self, name: str, **labels: object) -> float:
        with self._lock:
            return self._values.get(_key(name, labels), 0.0)

    def render(self) -> str:
        """Prometheus text exposition format (version 0.0.4)."""
        with self._lock:
            values = dict(self._values)
        lines = []
        for name, (kind, help_text) in _SERIES.items():
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            series = {k: v for k, v in values.items() if k.split("{")[0] == name}
            for key, value in sorted(series.items() or [(name, 0.0)]):
                number = int(value) if float(value).is_integer() else float(value)
                lines.append(f"{key} {number!r}")
        return "\n".join(lines) + "\n"


def _key(name: str, labels: dict[str, object]) -> str:
    if name not in _SERIES:
        raise KeyError(f"unknown metric {name!r}")
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


__all__ = ["Metrics"]
