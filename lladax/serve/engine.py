"""The serving engine: one loaded model, its default sampler, the scheduler owning the device.

The HTTP layer (`lladax.serve.app`) and the live page (`lladax.serve.live`, owner VW) talk to the
model only through an `Engine`; this docstring is the interface both build against.

    engine = Engine.load("runs/small", sampler=SamplerConfig(gen_length=64), max_batch=8)
    engine = Engine(cfg, params, tokenizer, sampler, model_id="small", max_batch=8)  # in tests
    engine.start()                                # the worker thread; engine.close() drains it

Attributes (read-only): `cfg` (ModelConfig), `tokenizer` (lladax Tokenizer), `sampler` (the
server's default `SamplerConfig`, from `lladax serve`'s flags), `model_id` (str, what
/v1/models lists), `mask_id` (int), `metrics` (`lladax.serve.metrics.Metrics`).

Building a request (every error is a `RequestError`: HTTP status, one-line message, param):
    ids = engine.chat_prompt(messages)            # [{"role", "content"}, ...] -> prompt ids
    ids = engine.text_prompt("The list type")     # BOS + text ids
    sampler = engine.sampler_for({"steps": 32, "max_tokens": 16, ...})   # extra body fields
    job = engine.request(ids, sampler, seed=None, max_tokens=None, stop=())  # a `Generation`

Running it:
    ticket = engine.submit(job)                   # queued (RequestError 503 when the queue is full)
    result = ticket.result(timeout)               # blocking; `await ticket.wait()` in asyncio
    ticket.cancel()                               # the client left: dropped if not yet running
    result.text, result.token_ids, result.finish_reason ("stop" | "length")

The live view's hook, a canvas per sampler step (blocking iterator; run it in a thread):
    for step in engine.canvas_steps(ids, sampler, seed=None):
        step.step, step.steps         # 1-based step index, total steps
        step.tokens                   # tuple[int] [gen_length]: the generated region after the
                                      # step, `engine.mask_id` where still masked
        step.final                    # True on the last one
    engine.pieces(step.tokens)        # list[str | None]: each token's text, None for a mask

LLaDA's exact sampler yields every step (`sampling.generate_with(return_history=True)`, one
single-row run through the worker thread, so it never races the batches for the device); fast
decoding, block diffusion and the autoregressive baseline keep no history and yield one final
canvas. The steps come after the run finishes (one jitted program), not while it runs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from lladax.diffusion.sampler_config import KEYWORDS, SamplerConfig
from lladax.serve.errors import RequestError
from lladax.serve.metrics import Metrics
from lladax.serve.scheduler import Generation, Result, Scheduler, Ticket

log = logging.getLogger("lladax.serve")


@dataclasses.dataclass(frozen=True)
class CanvasStep:
    """One step of the live view: the generated region [gen_length] after step `step` of
    `steps` (mask id where still masked); `final` on the last."""

    step: int
    steps: int
    tokens: tuple[int, ...]
    final: bool


class Engine:
    """A loaded model served by one scheduler thread (see the module docstring)."""

    def __init__(
        self,
        cfg: Any,
        params: Any,
        tokenizer: Any,
        sampler: SamplerConfig,
        *,
        model_id: str = "lladax",
        max_batch: int = 8,
        max_queue: int = 256,
        gather_s: float = 0.005,
        seed: int = 0,
    ) -> None:
        self.cfg, self.params, self.tokenizer = cfg, params, tokenizer
        self.sampler = sampler if cfg.causal else sampler.for_kind(cfg.kind)
        self.model_id = model_id
        self.mask_id = int(cfg.mask_token_id)
        self.metrics = Metrics()
        self.scheduler = Scheduler(
            cfg,
            params,
            self.metrics,
            max_batch=max_batch,
            max_queue=max_queue,
            gather_s=gather_s,
            finish=self.finish,
            seed=seed,
        )

    @classmethod
    def load(
        cls,
        checkpoint: str,
        sampler: SamplerConfig,
        *,
        dtype: str | None = None,
        tokenizer: str | None = None,
        **kwargs: Any,
    ) -> Engine:
        """An engine for a run directory, Orbax export or HF directory (`load_model`)."""
        from pathlib import Path

        from lladax.store.loading import load_model

        cfg, params, tok = load_model(checkpoint, dtype, tokenizer)
        name = Path(checkpoint).expanduser().resolve().name
        return cls(cfg, params, tok, sampler, model_id=kwargs.pop("model_id", name), **kwargs)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self.scheduler.start()

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish what is queued or running, stop the thread."""
        self.scheduler.close(timeout)

    def warmup(self, prompt_lengths: Sequence[int] = (16,)) -> None:
        """Compile every (prompt bucket x batch size) program of the default sampler now."""
        self.scheduler.warmup(self.sampler, prompt_lengths, self.tokenizer.bos_id)

    # --- requests -------------------------------------------------------------------------------
    def chat_prompt(self, messages: Any) -> list[int]:
        from lladax.data.chat import apply_chat_template

        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list of {role, content}", "messages")
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise RequestError(
                    "each message needs a string 'role' and 'content', got "
                    f"{str(m)[:80]}: send [{{'role': 'user', 'content': '...'}}]",
                    "messages",
                )
        return apply_chat_template(self.tokenizer, messages)

    def text_prompt(self, prompt: Any) -> list[int]:
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise RequestError("'prompt' must be a string (one prompt per request)", "prompt")
        return self.tokenizer.encode(prompt, add_bos=True)

    def sampler_for(self, options: Mapping[str, Any]) -> SamplerConfig:
        """The server's sampler with a request's options (SamplerConfig names) applied; errors
        worded as request fields (`steps=0`)."""
        if not options:
            return self.sampler
        types = SamplerConfig.options()
        for name, value in options.items():
            if types.get(name) is bool and not isinstance(value, bool):
                raise RequestError(f"{name}={value!r} must be true or false", name)
        try:
            sampler = SamplerConfig.parse(dict(options), KEYWORDS, base=self.sampler)
            return sampler if self.cfg.causal else sampler.for_kind(self.cfg.kind)
        except (ValueError, TypeError) as e:
            param = next((n for n in options if n in str(e)), None)
            raise RequestError(str(e), param) from None

    def request(
        self,
        prompt: Sequence[int],
        sampler: SamplerConfig,
        *,
        seed: int | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
    ) -> Generation:
        """A checked `Generation`: the prompt fits the context with the canvas, max_tokens <=
        gen_length (the canvas length: an answer never outgrows it)."""
        gen = sampler.gen_length
        if max_tokens is not None and max_tokens > gen:
            raise RequestError(
                f"max_tokens={max_tokens} exceeds gen_length={gen} (the canvas the sampler "
                f"fills): pass max_tokens <= {gen}, or gen_length={max_tokens} as a body field",
                "max_tokens",
            )
        limit = self.cfg.max_seq_len
        if len(prompt) + gen > limit:
            raise RequestError(
                f"prompt of {len(prompt)} tokens + gen_length {gen} exceeds the model's context "
                f"of {limit} tokens: shorten the prompt to <= {limit - gen} tokens",
                "prompt",
                code="context_length_exceeded",
            )
        return Generation(
            prompt=tuple(int(t) for t in prompt),
            sampler=sampler,
            seed=seed,
            max_tokens=gen if max_tokens is None else max_tokens,
            stop=tuple(stop),
        )

    def submit(self, job: Generation) -> Ticket:
        return self.scheduler.submit(job)

    def finish(self, job: Generation, answer: Sequence[int]) -> Result:
        """Answer ids (cut at EOS/EoT) -> text, truncated at max_tokens and the first stop."""
        ids = list(answer)
        reason = "stop" if len(ids) < job.sampler.gen_length else "length"
        if len(ids) > job.max_tokens:
            ids, reason = ids[: job.max_tokens], "length"
        text = self.tokenizer.decode(ids, skip_special=True).strip()
        for s in job.stop:
            cut = text.find(s) if s else -1
            if cut >= 0:
                text, reason = text[:cut], "stop"
        return Result(text=text, token_ids=ids, finish_reason=reason)

    # --- the live view --------------------------------------------------------------------------
    def canvas_steps(
        self, prompt: Sequence[int], sampler: SamplerConfig, seed: int | None = None
    ) -> Iterator[CanvasStep]:
        job = self.request(prompt, sampler, seed=seed)
        history = self.scheduler.submit(job, history=True).result()
        rows = np.asarray(history)[:, -sampler.gen_length :]  # [steps or 1, G]
        for i, row in enumerate(rows):
            yield CanvasStep(i + 1, len(rows), tuple(int(t) for t in row), i == len(rows) - 1)

    def pieces(self, tokens: Sequence[int]) -> list[str | None]:
        return [None if t == self.mask_id else self.tokenizer.decode([t]) for t in tokens]


__all__ = ["CanvasStep", "Engine", "Generation", "RequestError", "Result", "Ticket"]
