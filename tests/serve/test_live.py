"""The live view (`lladax.serve.live`): the page and its assets, the canvas stream
(`POST /v1/canvas`) over HTTP, and the page in a real headless Chromium driven by selenium.

One server per module on 127.0.0.1 (a free port): the tiny preset, random init, the default
sentencepiece tokenizer; every request uses the same sampler shape, so one program compiles.
Set LLADAX_LIVE_SCREENSHOT=path to keep the browser test's screenshot (a PNG of the page).
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest
from serve_fixtures import SAMPLER, LiveServer, expected_answer, tiny_model_dir

from lladax.serve import live
from lladax.serve.engine import Engine

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MESSAGES = [{"role": "user", "content": "Name a prime number."}]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tok):
    """The running server: its url and engine (the serve tests' tiny model and sampler: 16
    positions, one committed per step)."""
    path = tiny_model_dir(tmp_path_factory.mktemp("live"), tok)
    engine = Engine.load(str(path), SAMPLER, model_id="tiny")
    with LiveServer(engine) as running:
        yield running


def post(url: str, body: object) -> tuple[int, Message, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def events(raw: bytes) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded ([DONE] kept as a string)."""
    out = []
    for block in raw.decode().split("\n\n"):
        data = block.removeprefix("data: ")
        if data:
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_page_and_assets_come_from_the_package(server):
    with urllib.request.urlopen(server.url + "/") as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    assert "static/live.js" in page and "static/live.css" in page
    assert "http" not in page.replace("http-equiv", "")  # no CDN: everything is served here
    for name, kind in (("live.js", "text/javascript"), ("live.css", "text/css")):
        with urllib.request.urlopen(f"{server.url}/static/{name}") as r:
            assert r.headers["Content-Type"].startswith(kind)
    for name in ("nothing.js", "..%2Flive.py", "live.py"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server.url}/static/{name}")
        assert e.value.code == 404


def test_canvas_stream_fills_in_and_ends_in_the_chat_answer(server):
    status, headers, raw = post(server.url + "/v1/canvas", {"messages": MESSAGES})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    *steps, final, done = events(raw)
    assert done == "[DONE]"
    assert [s["step"] for s in steps] == list(range(SAMPLER.steps + 1))
    masks = [sum(c is None for c in s["canvas"]) for s in steps]
    assert masks == list(range(16, -1, -1))  # one token committed per step, none taken back
    assert [s["done"] for s in steps] == [False] * SAMPLER.steps + [True]
    for before, after in itertools.pairwise(steps):  # committed tokens never change
        assert all(a == b for a, b in zip(before["canvas"], after["canvas"], strict=True) if a)
    # the reply is `sampling.generate_with`'s on the same prompt (T = 0)
    engine = server.engine
    assert final["text"] == expected_answer(engine, engine.chat_prompt(MESSAGES))
    assert final["finish_reason"] in ("stop", "length") and final["steps"] == SAMPLER.steps


def test_the_final_canvas_pads_an_early_exit_tail(server):
    cfg, engine = server.engine.cfg, server.engine
    word = engine.tokenizer.encode("list")[0]
    piece = engine.tokenizer.decode([word])
    tokens = (word, cfg.mask_token_id, cfg.eos_token_id, cfg.mask_token_id)
    assert live.canvas_cells(engine, tokens, final=False) == [piece, None, "", None]
    assert live.canvas_cells(engine, tokens, final=True) == [piece, None, "", ""]


def test_a_client_leaving_mid_stream_leaves_the_server_serving(server):
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/v1/canvas", json.dumps({"messages": MESSAGES}))
    response = conn.getresponse()
    assert response.status == 200 and response.readline().startswith(b"data: {")
    conn.close()  # gone after the first event
    status, _, raw = post(server.url + "/v1/canvas", {"messages": MESSAGES})
    assert status == 200 and events(raw)[-1] == "[DONE]"


def test_fast_decoding_streams_its_final_canvas_with_a_note(server):
    status, _, raw = post(server.url + "/v1/canvas", {"messages": MESSAGES, "cache": "prefix"})
    assert status == 200
    note, blank, last, final, done = events(raw)
    assert "final canvas only" in note["note"] and "cache='prefix'" in note["note"]
    assert blank["canvas"] == [None] * SAMPLER.gen_length and not blank["done"]
    assert last["done"] and None not in last["canvas"] and len(last["canvas"]) == 16
    assert isinstance(final["text"], str) and done == "[DONE]"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        ({"messages": []}, 400, "messages"),
        ({"messages": MESSAGES, "steps": 0}, 400, "steps"),
        ({"messages": MESSAGES, "n": 2}, 400, "n"),
        ({"messages": MESSAGES, "model": "other"}, 404, "model"),
        ({"messages": MESSAGES, "wings": 2}, 400, "wings"),
    ],
)
def test_bad_canvas_requests_are_refused_before_any_event(server, body, status, param):
    code, _, raw = post(server.url + "/v1/canvas", body)
    error = json.loads(raw)["error"]
    assert code == status and error["param"] == param and "\n" not in error["message"]
    with urllib.request.urlopen(server.url + "/health") as r:
        assert r.status == 200


def chromium(user_data_dir: Path):
    """Debian's headless Chromium through its chromedriver (no network, a fresh profile)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,760",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


# Records every canvas the page draws (mask count and text) as the DOM changes.
RECORD_CANVASES = """
window.canvases = [];
new MutationObserver(() => {
  for (const c of document.querySelectorAll('.canvas[data-masks]')) {
    const state = c.dataset.masks + '|' + c.textContent;
    if (window.canvases.at(-1) !== state) window.canvases.push(state);
  }
}).observe(document.getElementById('chat'), {childList: true, subtree: true, attributes: true});
"""


@pytest.mark.skipif(
    not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
    reason="needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver;"
    " .ci/run installs them: apt-get install chromium chromium-driver)",
)
def test_the_page_streams_a_canvas_in_headless_chromium(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def send(text: str) -> None:
        driver.find_element(By.ID, "message").send_keys(text)
        driver.find_element(By.ID, "send").click()

    driver = chromium(tmp_path / "profile")
    try:
        driver.get(server.url + "/")
        assert driver.title == "lladax live"
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model").text == "tiny")
        # a reply: its canvas is drawn step by step, then its text
        driver.execute_script(RECORD_CANVASES)
        send(MESSAGES[0]["content"])
        reply = WebDriverWait(driver, 20).until(
            lambda d: d.find_element(By.CSS_SELECTOR, ".msg.assistant[data-done='true']")
        )
        states = driver.execute_script("return window.canvases")
        text = reply.find_element(By.CSS_SELECTOR, ".text").text
        assert driver.execute_script("return messages.map((m) => m.role)") == ["user", "assistant"]
        shot = driver.get_screenshot_as_png()
        # a refused option: the error is shown, the turn is not kept, markup stays text
        driver.find_element(By.CSS_SELECTOR, "#options summary").click()
        driver.find_element(By.ID, "steps").send_keys("0")
        send("<b>bold</b>")
        error = WebDriverWait(driver, 10).until(lambda d: d.find_element(By.CSS_SELECTOR, ".error"))
        assert "steps=0" in error.text and not driver.find_elements(By.CSS_SELECTOR, "#chat b")
        user = driver.find_elements(By.CSS_SELECTOR, ".msg.user")[-1]
        assert user.text.endswith("<b>bold</b>")
        assert driver.execute_script("return messages.length") == 2
    finally:
        driver.quit()
    masks = [int(s.split("|", 1)[0]) for s in states]
    assert len({s for s, m in zip(states, masks, strict=True) if m > 0}) >= 2, states
    assert masks[-1] == 0 and masks == sorted(masks, reverse=True), states
    assert text.strip(), "the reply ended without text"
    assert shot.startswith(b"\x89PNG")
    keep = os.environ.get("LLADAX_LIVE_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(shot)
