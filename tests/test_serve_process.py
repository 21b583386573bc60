"""The server's limits that need a server of their own, over a tiny model built here: the per-request time
limit, fill-in-the-middle with a checkpoint whose card has a FIM record, and `pycodegen serve` as a process
that shuts down cleanly on SIGTERM with requests in flight.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import Served, run_server, status_of, wait_until

FIM_RECORD = {
    "tokens": {"prefix": "<fim_prefix>", "middle": "<fim_middle>", "suffix": "<fim_suffix>"},
    "modes": ["psm"],
}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide Llama with the embedded model's tokenizer plus FIM sentinels, and a pycodegen card
    whose FIM record says it was trained for FIM (the weights are random: tests here check plumbing and
    limits, not text). Its end-of-sequence row is zeroed so that greedy decoding never stops early (its
    logit is 0, below the largest; sampling can still draw it: requests that must not stop send
    temperature 0)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pycodegen.zoo import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-fim")
    tokenizer = load_tokenizer("smollm2-135m-instruct")
    tokenizer.add_special_tokens({"additional_special_tokens": list(FIM_RECORD["tokens"].values())})
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        tie_word_embeddings=False,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight[tokenizer.eos_token_id] = 0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "pycodegen.json").write_text(json.dumps({"family": "hf-causal", "fim": FIM_RECORD}))
    return out


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path) -> Iterator[Served]:
    from pycodegen.generate.engine import Engine

    engine = Engine.load(str(tiny_checkpoint), dtype="fp32", max_batch=4)
    yield from run_server(
        engine, None, max_batch=4, queue_size=4, max_tokens=4000, max_prompt_tokens=512, request_timeout=1.0
    )


def test_a_request_past_the_time_limit_is_cut_and_its_slot_freed(tiny: Served) -> None:
    long = {"prompt": "def f(x):", "max_tokens": 4000, "temperature": 0}
    started = time.monotonic()
    status, body = tiny.post("/v1/completions", long, key=None)
    assert status == 504 and "time limit of 1 s" in body["error"]["message"], body
    assert time.monotonic() - started < 10
    events = tiny.post("/v1/completions", {**long, "stream": True}, key=None)
    assert events[0] == 200 and '"type":"timeout"' in events[1].split("data: ")[-1]  # the last event
    wait_until(lambda: tiny.scheduler.in_flight == 0 and tiny.engine.stats["running"] == 0)


@pytest.mark.skipif(
    importlib.util.find_spec("pycodegen.generate.fim") is None,
    reason="needs the fill-in-the-middle prompts (pycodegen.generate.fim, from the FIM work)",
)
def test_fill_in_the_middle_with_a_checkpoint_trained_for_it(tiny: Served) -> None:
    from pycodegen.generate.fim import fim_prompt

    prefix, suffix = "def add(a, b):\n    return ", "\n\nprint(add(1, 2))\n"
    expected_prompt = tiny.engine.count_tokens(fim_prompt(FIM_RECORD, prefix, suffix))
    status, body = tiny.post(
        "/v1/completions", {"prompt": prefix, "suffix": suffix, "max_tokens": 4, "temperature": 0}, key=None
    )
    assert status == 200, body
    assert body["usage"]["prompt_tokens"] == expected_prompt and body["usage"]["completion_tokens"] == 4
    status, infill = tiny.post(
        "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 4}, key=None
    )
    assert status == 200 and infill["tokens_evaluated"] == expected_prompt and infill["tokens_predicted"] == 4
    assert infill["content"] == body["choices"][0]["text"]  # the same FIM prompt, greedy
    extra = {"input_extra": [{"filename": "util.py", "text": "def helper():\n    pass\n"}]}
    status, more = tiny.post(
        "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 4, **extra}, key=None
    )
    assert status == 200 and more["tokens_evaluated"] > expected_prompt  # the other file is in the prompt
    huge = {"input_extra": [{"filename": "big.py", "text": "x = 1\n" * 400}]}  # over 512 tokens: dropped
    status, dropped = tiny.post(
        "/infill", {"input_prefix": prefix, "input_suffix": suffix, "n_predict": 4, **huge}, key=None
    )
    assert status == 200 and dropped["tokens_evaluated"] == expected_prompt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_finishes_or_cancels_in_flight_requests_and_exits_cleanly(tiny_checkpoint: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [
        sys.executable,
        "-m",
        "pycodegen",
        "serve",
        str(tiny_checkpoint),
        "--port",
        str(port),
        "--max-tokens",
        "8000",  # under the 8192-token context: 3 s of grace never reaches either limit
        "--shutdown-timeout",
        "3",
        "--request-timeout",
        "600",
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        served = Served(port, None, None)
        wait_until(lambda: _up(port) or process.poll() is not None, 120)
        assert process.poll() is None, process.stdout.read() if process.stdout else ""
        # One request that cannot finish within the grace period (streamed), one that can (plain). Both
        # greedy: the EOS row is zeroed, so its logit is 0 and never the largest; sampled (OpenAI's default
        # temperature 1) it still has probability ~1/vocabulary per token, and a stream of thousands of
        # tokens ended with "stop" in a few runs in a hundred.
        endless = served.open_stream(
            "/v1/completions", {"prompt": "x", "max_tokens": 8000, "stream": True, "temperature": 0}
        )
        assert status_of(endless) == 200
        short: dict[str, object] = {}
        thread = threading.Thread(
            target=lambda: short.update(
                answer=served.post("/v1/completions", {"prompt": "y", "max_tokens": 3, "temperature": 0})
            )
        )
        thread.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert short["answer"][0] == 200 and short["answer"][1]["usage"]["completion_tokens"] == 3  # finished
        endless.settimeout(30)
        rest = b""
        while chunk := endless.recv(65536):  # the server closes the cancelled stream
            rest += chunk
        assert b"[DONE]" not in rest
        assert process.wait(30) == 0
        output = process.stdout.read() if process.stdout else ""
        assert "serve" in output and "stopped" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
