"""The OpenAI-compatible server against a live server on 127.0.0.1 (tiny random-init model):
the official openai client (sync, async, streaming) gets `sampling.generate`'s answers at T = 0,
16 concurrent clients get theirs, bad requests get OpenAI error bodies and the server lives on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time

import openai
import pytest
import requests
from serve_fixtures import SAMPLER, LiveServer, expected_answer, tiny_model_dir

from lladax.serve.engine import Engine
from lladax.serve.errors import RequestError

PROMPTS = [f"Item {i} of the list type" for i in range(16)]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tok):
    path = tiny_model_dir(tmp_path_factory.mktemp("serve"), tok)
    engine = Engine.load(str(path), SAMPLER, max_batch=8, model_id="tiny")
    with LiveServer(engine) as live:
        yield live


def _client(server, cls=openai.OpenAI):
    return cls(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_openai_client_sync_matches_generate(server):
    engine, client = server.engine, _client(server)
    out = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=16, temperature=0)
    assert out.choices[0].text == expected_answer(engine, engine.text_prompt(PROMPTS[0]))
    assert out.usage.prompt_tokens == len(engine.text_prompt(PROMPTS[0]))
    messages = [{"role": "user", "content": "Name a list method."}]
    chat = client.chat.completions.create(model="tiny", messages=messages, temperature=0)
    assert chat.choices[0].message.content == expected_answer(engine, engine.chat_prompt(messages))
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_openai_client_async_and_streaming(server):
    engine = server.engine
    messages = [{"role": "user", "content": "Name a list method."}]
    want = expected_answer(engine, engine.chat_prompt(messages))

    async def run():
        client = _client(server, openai.AsyncOpenAI)
        plain = await client.chat.completions.create(model="tiny", messages=messages)
        stream = await client.chat.completions.create(model="tiny", messages=messages, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream]
        return plain.choices[0].message.content, "".join(pieces)

    assert asyncio.run(run()) == (want, want)
    stream = _client(server).completions.create(model="tiny", prompt=PROMPTS[1], stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == expected_answer(
        engine, engine.text_prompt(PROMPTS[1])
    )
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_sixteen_concurrent_clients_each_get_their_answer(server):
    """Batched answers equal each prompt's answer alone (batch 1): none lost, mixed or changed
    by batch-mates."""
    client = _client(server)

    def ask(prompt: str) -> str:
        out = client.completions.create(model="tiny", prompt=prompt, temperature=0)
        return out.choices[0].text

    alone = [ask(p) for p in PROMPTS]
    before = server.engine.metrics.get("lladax_batch_rows_total")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, PROMPTS))
    assert together == alone
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert server.engine.metrics.get("lladax_batch_rows_total") - before == 16
    batches = [server.engine.metrics.get("lladax_batches_total", size=s) for s in (2, 4, 8)]
    assert sum(batches) >= 1, metrics  # some rows really were batched together
    for name in ("lladax_requests_total", "lladax_forward_passes_total", "lladax_queue_seconds"):
        assert name in metrics


BAD = [
    (b"{not json", 400, None),
    (json.dumps({"model": "tiny"}), 400, "messages"),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]}), 404, "model"),
    (
        json.dumps({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
        400,
        "max_tokens",
    ),
    (json.dumps({"messages": [{"role": "user", "content": "x " * 400}]}), 400, "prompt"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "steps": 0}), 400, "steps"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "steps": 5}), 400, "steps"),
    (
        json.dumps({"messages": [{"role": "user", "content": "x"}], "remasking": "x"}),
        400,
        "remasking",
    ),
    (
        json.dumps({"messages": [{"role": "user", "content": "x"}], "temperature": -1}),
        400,
        "temperature",
    ),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "stepz": 4}), 400, "stepz"),
    (json.dumps({"messages": "hi"}), 400, "messages"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "n": 0}), 400, "n"),
    (json.dumps([1, 2]), 400, None),
    (
        json.dumps({"messages": [{"role": "user", "content": "x"}], "early_exit": "no"}),
        400,
        "early_exit",
    ),
    (json.dumps({"messages": [{"role": "user", "content": "x"}], "steps": "8"}), 400, "steps"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
def test_bad_requests_answer_openai_errors(server, body, status, param):
    r = requests.post(server.url + "/v1/chat/completions", data=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"] == param
    assert "\n" not in error["message"] and error["message"]
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


def test_unknown_route_and_openai_client_error(server):
    r = requests.get(server.url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="steps=0 must be >= 1"):
        _client(server).completions.create(model="tiny", prompt="x", extra_body={"steps": 0})


def test_client_disconnect_mid_stream_frees_its_row(server):
    metrics = server.engine.metrics
    before = metrics.get("lladax_stream_disconnects_total")
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True, "gen_length": 64}
    with requests.post(
        server.url + "/v1/chat/completions", json=body, stream=True, timeout=30
    ) as r:
        first = next(r.iter_lines())
        assert first.startswith(b"data: ") and json.loads(first[6:])["choices"][0]["delta"] == {
            "role": "assistant"
        }
    deadline = time.monotonic() + 60
    while metrics.get("lladax_stream_disconnects_total") == before:
        assert time.monotonic() < deadline, "the server never noticed the client leaving"
        time.sleep(0.05)
    assert _client(server).completions.create(model="tiny", prompt="x").choices[0].text is not None


def test_choices_stop_seed_and_null_fields(server):
    engine, client = server.engine, _client(server)
    want = expected_answer(engine, engine.text_prompt(PROMPTS[2]))
    out = client.completions.create(model="tiny", prompt=PROMPTS[2], n=2)
    assert [c.text for c in out.choices] == [want, want] and out.usage.completion_tokens > 0
    texts = ["", ""]
    for c in client.completions.create(model="tiny", prompt=PROMPTS[2], n=2, stream=True):
        texts[c.choices[0].index] += c.choices[0].text
    assert texts == [want, want]
    if len(want) >= 3:
        stop = want[1:3]
        cut = client.completions.create(model="tiny", prompt=PROMPTS[2], stop=[stop])
        assert cut.choices[0].text == want[: want.find(stop)]
        assert cut.choices[0].finish_reason == "stop"
    sampled = [
        client.completions.create(model="tiny", prompt=PROMPTS[2], temperature=0.8, seed=3)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].text == sampled[1].choices[0].text  # a seed reproduces
    body = {"prompt": PROMPTS[2], "temperature": None, "stop": None, "n": None, "model": None}
    r = requests.post(server.url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == want
    r = requests.post(server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 24})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(
        "max_tokens=24 grows the canvas to gen_length=24, but steps=16 is not a multiple"
    )


def test_full_queue_answers_503_with_retry_after(server, monkeypatch):
    def full(job):
        raise RequestError(
            "the request queue is full (2 rows waiting): retry later", status=503, retry_after=1
        )

    monkeypatch.setattr(server.engine, "submit", full)
    r = requests.post(server.url + "/v1/completions", json={"prompt": "x"}, timeout=30)
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json()["error"]["type"] == "server_overloaded"
    monkeypatch.undo()
    assert requests.post(server.url + "/v1/completions", json={"prompt": "x"}).status_code == 200
