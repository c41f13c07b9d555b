"""The batching scheduler: one worker thread owns the device and runs every sampler call.

Requests queue in a bounded `queue.Queue` (full: 503 with Retry-After). The worker takes the
first waiting row, gathers the rows that follow it (until none has come for `gather_s`, 10
gather_s at most), and groups them by
(prompt bucket, sampler options): the prompt width is `bucket_length(len(prompt))` of the row
itself (capped by the context), so a row's padding never depends on its batch-mates. Each group
is cut into batches of at most `max_batch` rows and filled (`left_pad`'s copies) to the next
size of `batch_sizes(max_batch)` (1, 2, 4, ... , max_batch), so the programs compiled are few:
prompt bucket x gen_length x batch size x static sampler options (a new one is logged). ONE
jitted call (`sampling.generate_with(return_stats=True)`, or `autoregressive.generate`) decodes
the batch; early exit (block diffusion's default) stops the call once every row is final, and
every row is answered when the call returns. Rows whose client left before their batch ran are
dropped. At temperature 0 an answer is the same whatever it was batched with. A sampled request
with a `seed` runs alone (its own key, reproducible); unseeded sampled rows share a batch key.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from lladax.batching import bucket_length, left_pad
from lladax.diffusion.sampler_config import SamplerConfig
from lladax.diffusion.sampling import decode_answer
from lladax.serve.errors import RequestError
from lladax.serve.metrics import Metrics

log = logging.getLogger("lladax.serve")


@dataclasses.dataclass(frozen=True)
class Generation:
    """One row of work: prompt ids, the request's sampler, seed (None: none given), the answer
    cap max_tokens (<= gen_length) and stop strings."""

    prompt: tuple[int, ...]
    sampler: SamplerConfig
    seed: int | None = None
    max_tokens: int = 0
    stop: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Result:
    """A finished row: its text, answer ids and why it ended ("stop" | "length")."""

    text: str
    token_ids: list[int]
    finish_reason: str


@dataclasses.dataclass
class _Job:
    gen: Generation
    future: concurrent.futures.Future
    history: bool = False
    cancelled: bool = False
    queued_at: float = dataclasses.field(default_factory=time.perf_counter)


class Ticket:
    """A submitted row: `result(timeout)` blocks, `await wait()` in asyncio, `cancel()` drops it
    if its batch has not started."""

    def __init__(self, job: _Job) -> None:
        self._job = job

    def result(self, timeout: float | None = None) -> Any:
        return self._job.future.result(timeout)

    async def wait(self) -> Any:
        return await asyncio.wrap_future(self._job.future)

    def cancel(self) -> None:
        self._job.cancelled = True

    def done(self) -> bool:
        return self._job.future.done()


def batch_sizes(max_batch: int) -> list[int]:
    """The batch row counts compiled: powers of two below max_batch, and max_batch."""
    return sorted(
        {1 << i for i in range(max_batch.bit_length()) if 1 << i < max_batch} | {max_batch}
    )


class Scheduler:
    """The worker thread and its queue (see the module docstring)."""

    def __init__(
        self,
        cfg: Any,
        params: Any,
        metrics: Metrics,
        *,
        max_batch: int = 8,
        max_queue: int = 256,
        gather_s: float = 0.005,
        finish: Callable[[Generation, list[int]], Any] | None = None,
        seed: int = 0,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"--max-batch {max_batch} must be >= 1")
        self.cfg, self.params, self.metrics = cfg, params, metrics
        self.sizes = batch_sizes(max_batch)
        self.max_batch, self.gather_s = max_batch, gather_s
        self.finish = finish
        self._queue: queue.Queue[_Job] = queue.Queue(max_queue)
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lladax-serve-worker", daemon=True)
        self._compiled: set[tuple] = set()
        self._seeds = itertools.count(seed)  # keys of unseeded sampled batches

    # --- the caller's side ----------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, gen: Generation, *, history: bool = False) -> Ticket:
        if self._closing.is_set():
            raise RequestError("the server is shutting down: retry on another replica", status=503)
        job = _Job(gen, concurrent.futures.Future(), history)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise RequestError(
                f"the request queue is full ({self._queue.maxsize} rows waiting): retry later",
                status=503,
                retry_after=1,
            ) from None
        self.metrics.set("lladax_queue_depth", self._queue.qsize())
        return Ticket(job)

    def width(self, prompt_len: int, gen_length: int) -> int:
        """The padded prompt width of a row: its own bucket, capped so the canvas fits."""
        return max(prompt_len, min(bucket_length(prompt_len), self.cfg.max_seq_len - gen_length))

    def warmup(self, sampler: SamplerConfig, prompt_lengths: Sequence[int], bos: int) -> None:
        """Compile the default sampler's programs for these prompt lengths and every batch size."""
        for n in prompt_lengths:
            for size in self.sizes:
                job = _Job(Generation((bos,) * n, sampler), concurrent.futures.Future())
                self._run([job] * size, log_new=False)
        log.info("warm: %d programs compiled", len(self._compiled))

    # --- the worker -----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            jobs = [first, *self._gather()]
            self.metrics.set("lladax_queue_depth", self._queue.qsize())
            for group in self._groups(jobs):
                for start in range(0, len(group), self.max_batch):
                    self._run(group[start : start + self.max_batch])

    def _gather(self) -> list[_Job]:
        """The rows arriving right after the first: wait until none has come for gather_s (at
        most 10 gather_s in all, or until 4 max_batch rows), so a burst becomes one batch."""
        jobs: list[_Job] = []
        now = time.perf_counter()
        deadline, cap = now + self.gather_s, now + 10 * self.gather_s
        while len(jobs) < 4 * self.max_batch - 1:
            try:
                jobs.append(self._queue.get(timeout=max(0.0, deadline - time.perf_counter())))
            except queue.Empty:
                break
            deadline = min(cap, time.perf_counter() + self.gather_s)
        return jobs

    def _groups(self, jobs: list[_Job]) -> list[list[_Job]]:
        groups: dict[tuple, list[_Job]] = {}
        for job in jobs:
            if job.cancelled:
                self.metrics.add("lladax_generations_cancelled_total")
                job.future.cancel()
                continue
            g = job.gen
            alone = job.history or (g.sampler.needs_rng and g.seed is not None)
            key = (self.width(len(g.prompt), g.sampler.gen_length), g.sampler)
            groups.setdefault((key, id(job)) if alone else key, []).append(job)
        return list(groups.values())

    def _run(self, jobs: list[_Job], *, log_new: bool = True) -> None:
        try:
            self._decode_batch(jobs, log_new)
        except Exception as e:  # a failed call answers its rows; the worker keeps serving
            log.exception("sampler call failed")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(e)

    def _decode_batch(self, jobs: list[_Job], log_new: bool) -> None:
        """Pad, run one sampler call, answer every row."""
        g = jobs[0].gen
        width = self.width(len(g.prompt), g.sampler.gen_length)
        size = next(s for s in self.sizes if s >= len(jobs))
        tokens, mask = left_pad(
            [j.gen.prompt for j in jobs], self.cfg.pad_token_id, width=width, num_rows=size
        )
        shape = (width, size, g.sampler, jobs[0].history)
        if shape not in self._compiled:
            self._compiled.add(shape)
            self.metrics.add("lladax_compiles_total")
            if log_new:
                log.info(
                    "compiling: prompt %d x gen %d x batch %d (%s)",
                    width,
                    g.sampler.gen_length,
                    size,
                    g.sampler,
                )
        start = time.perf_counter()
        canvas, extra, passes = self._call(tokens, mask, g, jobs[0].history)
        elapsed = time.perf_counter() - start
        m = self.metrics
        m.add("lladax_batches_total", size=size)
        m.add("lladax_batch_rows_total", len(jobs))
        m.add("lladax_compute_seconds_total", elapsed)
        m.add("lladax_forward_passes_total", passes)
        for r, job in enumerate(jobs):
            m.add("lladax_queue_seconds_total", start - job.queued_at)
            if job.history:  # the canvases [steps, W + G], or the final one [1, W + G]
                job.future.set_result(canvas[None, r] if extra is None else extra[:, r])
                continue
            answer = decode_answer(canvas[r], width, self.cfg)
            m.add("lladax_generations_total")
            m.add("lladax_prompt_tokens_total", len(job.gen.prompt))
            result = self.finish(job.gen, answer) if self.finish else answer
            m.add("lladax_completion_tokens_total", len(getattr(result, "token_ids", answer)))
            if not job.future.done():
                job.future.set_result(result)

    def _call(self, tokens, mask, g: Generation, history: bool):
        """One sampler call: (canvas [B, W + G] numpy, history [steps, B, W + G] or None,
        forward passes)."""
        import jax

        sampler = g.sampler
        seed = g.seed if g.seed is not None else next(self._seeds)
        rng = jax.random.key(seed) if sampler.needs_rng else None
        from lladax.diffusion import sampling

        history = history and self.cfg.kind == "diffusion" and not sampler.fast  # kept by it
        out = sampling.generate_any(
            self.params,
            self.cfg,
            tokens,
            mask,
            sampler,
            rng,
            return_history=history,
            return_stats=True,
        )
        canvas, *rest = jax.device_get(out)
        stats = rest[-1]
        passes = stats.get("forward_passes", stats.get("evaluations", 0))
        return np.asarray(canvas), (np.asarray(rest[0]) if history else None), int(passes)


__all__ = ["Generation", "Result", "Scheduler", "Ticket", "batch_sizes"]
