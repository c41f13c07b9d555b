"""The batching scheduler without HTTP: answers at T = 0 do not depend on batch-mates (any model
kind), the queue is bounded (503 + Retry-After), a cancelled row never runs, close() drains."""

from __future__ import annotations

import jax
import pytest
from serve_fixtures import SAMPLER, expected_answer, tiny_model_dir

from lladax.config import preset
from lladax.model.transformer import init_params
from lladax.serve.engine import Engine
from lladax.serve.errors import RequestError
from lladax.serve.scheduler import batch_sizes

PROMPTS = ["A list", "The list type is mutable and ordered", "x", "Item 3", "Sort it", "B", "C"]


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sched")


def _engine(model_root, tok, kind="diffusion", **kw):
    if kind == "autoregressive":  # no HF format for the baseline: built in memory
        cfg = preset("tiny", kind=kind)
        return Engine(cfg, init_params(cfg, jax.random.key(0)), tok, SAMPLER, **kw)
    return Engine.load(str(tiny_model_dir(model_root, tok, kind)), SAMPLER, **kw)


def test_batch_sizes():
    assert batch_sizes(8) == [1, 2, 4, 8] and batch_sizes(6) == [1, 2, 4, 6]
    assert batch_sizes(1) == [1]


@pytest.mark.parametrize("kind", ["diffusion", "block_diffusion", "autoregressive"])
def test_answer_independent_of_batch_mates(model_root, tok, kind, caplog):
    caplog.set_level("INFO", logger="lladax.serve")
    engine = _engine(model_root, tok, kind, max_batch=8, gather_s=0.5)
    engine.scheduler.sizes = [8]  # alone = with 7 copies of itself
    jobs = [engine.request(engine.text_prompt(p), engine.sampler) for p in PROMPTS]
    engine.start()
    try:
        alone = [engine.submit(job).result(120) for job in jobs]
        tickets = [engine.submit(job) for job in jobs]  # queued together: one batch of 8
        together = [t.result(120) for t in tickets]
    finally:
        engine.close()
    assert together == alone
    widths = {engine.scheduler.width(len(j.prompt), 16) for j in jobs}  # 2 prompt buckets
    assert engine.metrics.get("lladax_batches_total", size=8) == len(PROMPTS) + len(widths)
    assert engine.metrics.get("lladax_compiles_total") == len(widths) == 2
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compiling")]
    assert len(compiled) == 2 and "prompt 16 x gen 16 x batch 8" in compiled[0]
    assert any(r.text for r in alone)
    if kind == "diffusion":  # and equal to sampling.generate on the prompt alone, unpadded
        assert alone[1].text == expected_answer(engine, list(jobs[1].prompt))


def test_bounded_queue_cancel_and_drain(model_root, tok):
    engine = _engine(model_root, tok, max_queue=2)
    job = engine.request(engine.text_prompt("A list"), engine.sampler)
    first, second = engine.submit(job), engine.submit(job)  # worker not started: they wait
    with pytest.raises(RequestError, match="queue is full") as e:
        engine.submit(job)
    assert e.value.status == 503 and e.value.retry_after == 1
    second.cancel()
    engine.start()
    engine.close()  # drains: the queued row runs, the cancelled one never does
    assert first.result(0).finish_reason in ("stop", "length") and second._job.future.cancelled()
    assert engine.metrics.get("lladax_generations_cancelled_total") == 1
    with pytest.raises(RequestError, match="shutting down"):
        engine.submit(job)


def test_max_tokens_and_context_refusals(model_root, tok):
    engine = _engine(model_root, tok)
    with pytest.raises(RequestError, match="max_tokens=17 exceeds gen_length=16"):
        engine.request([1], engine.sampler, max_tokens=17)
    with pytest.raises(RequestError, match="exceeds the model's context of 128") as e:
        engine.request([1] * 120, engine.sampler)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(RequestError, match="block_length=5 does not divide") as e:
        engine.sampler_for({"block_length": 5})
    assert e.value.param == "block_length"
