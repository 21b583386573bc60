"""`pycodegen serve` end to end: a real uvicorn server on 127.0.0.1 over the embedded model (one per module),
spoken to over HTTP, by the official `openai` client and by headless Chromium; and the faults it must
survive (429 bursts, disconnects mid-stream and while queued, malformed and oversized requests, auth).
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

KEY = "test-key"
FIB = "def fibonacci(n):\n    "
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Served:
    """A running server: its port, app (for its scheduler's counters) and engine."""

    port: int
    app: Any
    engine: Any

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def scheduler(self) -> Any:
        return self.app.state.scheduler

    def request(
        self, method: str, path: str, body: Any = None, *, key: str | None = KEY, raw: bytes | None = None
    ) -> tuple[int, Any]:
        """(status, parsed JSON or text) of one request."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, data, headers)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        try:
            return response.status, json.loads(text)
        except json.JSONDecodeError:
            return response.status, text

    def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any]:
        return self.request("POST", path, body, **kwargs)

    def events(self, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The SSE events of a streamed request ([DONE] excluded)."""
        status, text = self.post(path, {**body, "stream": True})
        assert status == 200, text
        chunks = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
        assert chunks[-1] == "[DONE]"
        return [json.loads(c) for c in chunks[:-1]]

    def open_stream(self, path: str, body: dict[str, Any]) -> socket.socket:
        """A raw socket that has sent a request (to be read a little, then closed: a client that leaves)."""
        data = json.dumps(body).encode()
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        return sock


def wait_until(condition: Callable[[], bool], seconds: float = 120.0, state: Callable[[], Any] = str) -> None:
    """Poll until `condition()` (bounded: the machine may be shared and slow, hence the long bound)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"condition not reached in time: {state()}"
        time.sleep(0.02)


def run_server(engine: Any, api_key: str | None, **settings: Any) -> Iterator[Served]:
    """uvicorn in a thread on a free loopback port; stopped (and the engine with it) at the end."""
    import uvicorn

    from pycodegen.config import ServeConfig
    from pycodegen.serve.app import create_app

    app = create_app(engine, ServeConfig(**settings), api_key=api_key)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 60)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Served(port, app, engine)
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    from pycodegen.generate.engine import DecodeParams, Engine

    engine = Engine.load("smollm2-135m-instruct", dtype="fp32", max_batch=2)
    engine.generate([FIB], DecodeParams(max_new_tokens=2))  # first-call costs paid here, not in a test
    yield from run_server(
        engine,
        KEY,
        max_batch=2,
        queue_size=2,
        max_n=2,
        max_tokens=64,
        max_prompt_tokens=256,
        max_body_bytes=4096,
        request_timeout=60,
    )


def idle(served: Served) -> None:
    """Wait until nothing is in flight (a previous test's cancelled requests have left the engine)."""
    wait_until(
        lambda: served.scheduler.in_flight == 0 and served.engine.stats["running"] == 0,
        state=served.scheduler.stats,
    )


# -- the API -----------------------------------------------------------------------------------------------
def test_completion_plain_and_streamed_agree(served: Served) -> None:
    body = {"prompt": FIB, "max_tokens": 6, "temperature": 0}
    status, whole = served.post("/v1/completions", body)
    assert status == 200, whole
    choice = whole["choices"][0]
    assert choice["text"] and choice["finish_reason"] in ("stop", "length")
    assert whole["usage"]["prompt_tokens"] == served.engine.count_tokens(FIB)
    assert 1 <= whole["usage"]["completion_tokens"] <= 6
    events = served.events("/v1/completions", {**body, "stream_options": {"include_usage": True}})
    assert "".join(c["text"] for e in events for c in e["choices"]) == choice["text"]
    assert events[-1]["usage"] == whole["usage"]
    assert [c["finish_reason"] for e in events for c in e["choices"]][-1] == choice["finish_reason"]


def test_logprobs_n_seed_and_stop(served: Served) -> None:
    status, body = served.post(
        "/v1/completions", {"prompt": FIB, "max_tokens": 4, "temperature": 0, "logprobs": 2}
    )
    assert status == 200, body
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) >= 1
    assert all(v <= 0 for v in lp["token_logprobs"]) and all(len(t) == 2 for t in lp["top_logprobs"])
    sampled = {"prompt": FIB, "max_tokens": 4, "temperature": 1.0, "n": 2, "seed": 7}
    first, second = served.post("/v1/completions", sampled), served.post("/v1/completions", sampled)
    assert first[0] == 200 and [c["index"] for c in first[1]["choices"]] == [0, 1]
    assert [c["text"] for c in first[1]["choices"]] == [c["text"] for c in second[1]["choices"]]
    status, stopped = served.post(
        "/v1/completions", {"prompt": FIB, "max_tokens": 12, "temperature": 0, "stop": ["\n"]}
    )
    assert status == 200 and "\n" not in stopped["choices"][0]["text"]
    assert stopped["choices"][0]["finish_reason"] == "stop"


def test_chat_plain_and_streamed(served: Served) -> None:
    body = {
        "messages": [{"role": "user", "content": "Write a Python function that adds two numbers."}],
        "max_tokens": 6,
        "temperature": 0,
    }
    status, whole = served.post("/v1/chat/completions", body)
    assert status == 200, whole
    message = whole["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"]
    events = served.events("/v1/chat/completions", body)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"]["content"] for e in events) == message["content"]


def test_models_health_metrics(served: Served) -> None:
    status, models = served.request("GET", "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "smollm2-135m-instruct"
    assert models["data"][0]["fim"] is False
    assert served.request("GET", "/health", key=None) == (200, {"status": "ok"})
    served.post("/v1/completions", {"prompt": FIB, "max_tokens": 2})
    status, text = served.request("GET", "/metrics")
    assert status == 200
    assert 'pycodegen_requests_total{route="/v1/completions",status="200"}' in text
    assert "pycodegen_queue_depth" in text and "pycodegen_time_to_first_token_seconds_bucket" in text
    generated = [line for line in text.splitlines() if line.startswith("pycodegen_completion_tokens_total")]
    assert float(generated[0].split()[-1]) >= 2


def test_openai_client_unchanged(served: Served) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ["smollm2-135m-instruct"]
    done = client.completions.create(model="any", prompt=FIB, max_tokens=3, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens >= 1
    pieces = client.chat.completions.create(
        model="any",
        messages=[{"role": "user", "content": "Say hi."}],
        max_tokens=3,
        temperature=0,
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in pieces if c.choices)
    with pytest.raises(openai.BadRequestError, match="not trained for fill-in-the-middle"):
        client.completions.create(model="any", prompt="def f(", suffix="    return 1\n", max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_fill_in_the_middle_refused_for_a_model_not_trained_for_it(served: Served) -> None:
    status, body = served.post("/v1/completions", {"prompt": "def f(", "suffix": "    return x\n"})
    assert status == 400 and body["error"]["message"].startswith(
        "this model was not trained for fill-in-the-middle"
    )
    status, body = served.post("/infill", {"input_prefix": "def f(", "input_suffix": "    return x\n"})
    assert status == 400 and "not trained for fill-in-the-middle" in body["error"]["message"]


def test_llama_cpp_completion_plain_and_streamed(served: Served) -> None:
    body = {"prompt": FIB, "n_predict": 5, "temperature": 0, "seed": 18446744073709551615}  # Tabby's u64
    status, whole = served.post("/completion", body)
    assert status == 200, whole
    assert whole["stop"] is True and whole["tokens_predicted"] <= 5 and whole["content"]
    assert whole["tokens_evaluated"] == served.engine.count_tokens(FIB)
    status, text = served.post("/completion", {**body, "stream": True})
    events = [json.loads(line[6:]) for line in text.split("\n\n") if line.startswith("data: ")]
    assert [e["stop"] for e in events][-1] is True and not any(e["stop"] for e in events[:-1])
    assert "".join(e["content"] for e in events) == whole["content"]
    status, refused = served.post("/completion", {**body, "presence_penalty": 0.5})
    assert status == 400 and "presence_penalty" in refused["error"]["message"]


def test_greedy_output_same_alone_or_batched(served: Served) -> None:
    idle(served)
    body = {"prompt": FIB, "max_tokens": 12, "temperature": 0}
    alone = served.post("/v1/completions", body)[1]["choices"][0]["text"]
    others = [
        {"prompt": "import os\n\ndef list_files(path):", "max_tokens": 12, "temperature": 0.9, "seed": 1}
    ]
    with ThreadPoolExecutor(2) as pool:
        together = pool.submit(served.post, "/v1/completions", body)
        time.sleep(0.05)
        pool.submit(served.post, "/v1/completions", others[0])
        assert together.result()[1]["choices"][0]["text"] == alone


# -- faults ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (b"{not json", 400, "not valid JSON"),
        ({"prompt": 3}, 400, "prompt"),
        ({"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**9}, 400, "cap of 64"),
        ({"prompt": "x", "n": 50}, 400, "cap of 2"),
        ({"prompt": "x", "temperature": 1e6}, 400, "temperature"),
        ({"prompt": "x", "top_p": 0}, 400, "top_p"),
        ({"prompt": "x", "top_p": -3}, 400, "top_p"),
        ({"prompt": "x", "logprobs": 99}, 400, "logprobs"),
        ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4"),
        ({"prompt": "word " * 600}, 400, "limit is 256"),
        ({"prompt": "x" * 5000}, 413, "limit of 4096 bytes"),
        ({"prompt": "x", "frequency_penalty": 1}, 400, "not supported"),
        ({"prompt": "x", "seed": 2**64}, 400, "seed"),
        ({"prompt": "x", "stop": ["s" * 300]}, 400, "at most 256 characters"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(served: Served, body: Any, status: int, says: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    got, answer = served.post("/v1/completions", None, raw=raw)
    assert got == status, answer
    assert says in answer["error"]["message"] and answer["error"]["type"]


def test_chat_and_infill_validate_too(served: Served) -> None:
    status, body = served.post("/v1/chat/completions", {"messages": []})
    assert status == 400 and body["error"]["param"] == "messages"
    status, body = served.post("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]})
    assert status == 400
    status, body = served.post("/infill", {"input_prefix": 5})
    assert status == 400 and "input_prefix" in body["error"]["message"]
    status, body = served.request("GET", "/no/such/route")
    assert status == 404 and body["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/infill"),
        ("POST", "/completion"),
    ],
)
def test_every_guarded_route_needs_the_key(served: Served, method: str, path: str) -> None:
    body = {"prompt": "x", "messages": [{"role": "user", "content": "x"}], "input_prefix": "x"}
    for key in (None, "wrong", ""):
        status, answer = served.request(method, path, body if method == "POST" else None, key=key)
        assert status == 401 and answer["error"]["type"] == "authentication_error"


def test_open_routes_need_no_key(served: Served) -> None:
    assert served.request("GET", "/health", key=None)[0] == 200
    status, page = served.request("GET", "/", key=None)
    assert status == 200 and "pycodegen playground" in page
    assert served.request("GET", "/static/playground.js", key=None)[0] == 200


def status_of(sock: socket.socket) -> int:
    """The HTTP status a raw-socket request got (its first line)."""
    head = b""
    while b"\r\n" not in head:
        head += sock.recv(1024)
    return int(head.split()[1])


def test_burst_over_capacity_gets_429_and_the_server_stays_up(served: Served) -> None:
    idle(served)
    body = {"prompt": FIB, "max_tokens": 64, "stream": True}
    # Ten clients at once that keep their streams open: exactly `capacity` get in, the rest get 429.
    socks = [served.open_stream("/v1/completions", body) for _ in range(10)]
    statuses = [status_of(sock) for sock in socks]
    assert sorted(statuses) == [200] * served.scheduler.capacity + [429] * (10 - served.scheduler.capacity)
    status, refused = served.post("/v1/completions", {"prompt": FIB, "max_tokens": 2})
    assert status == 429 and refused["error"]["type"] == "rate_limit_error"
    assert "capacity" in refused["error"]["message"]
    assert served.request("GET", "/health", key=None)[0] == 200  # up, and answering
    for sock in socks:
        sock.close()
    idle(served)
    assert served.post("/v1/completions", {"prompt": FIB, "max_tokens": 2})[0] == 200


def test_disconnect_mid_stream_frees_the_slot(served: Served) -> None:
    idle(served)
    cancelled = served.scheduler.metrics.finished.labels("cancelled")._value.get()
    sock = served.open_stream("/v1/completions", {"prompt": FIB, "max_tokens": 64, "stream": True})
    received = b""
    while received.count(b"data: ") < 2:  # the stream is flowing
        received += sock.recv(4096)
    assert served.scheduler.in_flight == 1
    sock.close()
    idle(served)
    assert served.scheduler.metrics.finished.labels("cancelled")._value.get() == cancelled + 1


def test_disconnect_while_queued_frees_the_slot(served: Served) -> None:
    idle(served)
    long = {"prompt": FIB, "max_tokens": 64, "temperature": 0, "stream": True}
    running = [served.open_stream("/v1/completions", long) for _ in range(2)]  # the whole batch (2)
    wait_until(lambda: served.engine.stats["running"] == 2 and served.scheduler.queued == 0)
    queued = [served.open_stream("/v1/completions", {"prompt": FIB, "max_tokens": 8}) for _ in range(2)]
    wait_until(lambda: served.scheduler.in_flight == 4 and served.scheduler.queued == 2)
    assert served.post("/v1/completions", {"prompt": FIB, "max_tokens": 2})[0] == 429  # full
    for sock in queued:
        sock.close()
    wait_until(lambda: served.scheduler.in_flight == 2 and served.scheduler.queued == 0)
    gone = served.scheduler.metrics.requests.labels("/v1/completions", "499")
    wait_until(lambda: gone._value.get() >= 2)  # both handlers returned ("client closed request")
    assert served.engine.stats["running"] == 2  # the others decode on
    status, answer = served.post("/v1/completions", {"prompt": FIB, "max_tokens": 1})  # room again
    assert status == 200, answer
    for sock in running:
        sock.close()
    idle(served)


# -- the playground ----------------------------------------------------------------------------------------
def test_playground_streams_a_highlighted_completion_in_chromium(served: Served, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    assert CHROMIUM.exists(), "Debian's chromium is missing: `make test` installs it"
    idle(served)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 720})
            page.goto(served.url + "/")
            page.fill("#api-key", KEY)
            page.dispatch_event("#api-key", "change")
            page.wait_for_function("document.getElementById('model').textContent.includes('smollm2')")
            page.fill("#prompt", FIB)
            page.fill("#max-tokens", "12")
            page.click("#generate")
            page.wait_for_function(
                "document.getElementById('output').dataset.done === 'true'", timeout=60_000
            )
            status = page.text_content("#status")
            assert status == "done", status
            completion = page.eval_on_selector("#output", "e => e.dataset.text")
            assert completion and completion.strip()
            assert page.locator("#output .completion span.tok-kw").count() >= 1  # highlighted as it came
            assert int(page.get_attribute("#stats", "data-tokens") or 0) >= 1
            assert float(page.get_attribute("#stats", "data-rate") or 0) > 0
            assert "tokens/s" in (page.text_content("#stats") or "")
            shot = tmp_path / "playground.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
