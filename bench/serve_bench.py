"""Benchmark `pycodegen serve` over loopback: throughput and latency under concurrent clients, and the
latency an editor sees for a 32-token completion.

The server runs as its own process (`python -m pycodegen serve`, as a user starts it); this process is the
clients, each a thread sending streamed /v1/completions requests one after another (a bounded number
each). Per concurrency level (default 1, 4, 8, 16 clients) it prints aggregate generated tokens/s, p50/p95
request latency and p50/p95 time to first token, and the ratio of each level's aggregate to the single
client's (target: 8 clients >= 3x). Then editor latency: sequential 32-token requests, p50/p95 (target:
p50 <= 0.5 s on 2 cores): through /infill with --fim-model (a checkpoint trained for fill-in-the-middle),
otherwise a plain 32-token /v1/completions request on the embedded model, and the output says which.

    python bench/serve_bench.py [--model smollm2-135m-instruct] [--clients 1,4,8,16] [--requests 3]
        [--max-tokens 64] [--max-batch 16] [--dtype auto] [--threads 1] [--fim-model CHECKPOINT]
        [--editor-requests 20] [--prompt-lookup K] [--draft-heads DIR|none]

`--prompt-lookup K` is passed to the server (prompt-lookup speculative decoding for a lone greedy request:
the 1-client level and the editor requests; 0 = off); without it the server's default applies.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Function heads a code model completes: different lengths, so requests join and leave the batch.
PROMPTS = [
    "def fibonacci(n):\n    ",
    "def is_palindrome(text: str) -> bool:\n    ",
    "import os\n\n\ndef list_python_files(root):\n    ",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    ",
    "class Stack:\n    def __init__(self):\n        ",
    "def word_count(path):\n    counts = {}\n    ",
    "def celsius_to_fahrenheit(c):\n    ",
    "def flatten(nested):\n    ",
]


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else the machine type."""
    import platform

    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def server(
    model: str,
    max_batch: int,
    dtype: str,
    max_tokens: int,
    threads: int,
    lookup: int | None = None,
    heads: str | None = None,
) -> Iterator[int]:
    """`pycodegen serve MODEL` on a free loopback port, until the block ends (SIGTERM)."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "pycodegen",
        "serve",
        model,
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--queue-size",
        "64",
        "--dtype",
        dtype,
        "--max-tokens",
        str(max(max_tokens, 32)),
        "--shutdown-timeout",
        "2",
        "--threads",
        str(threads),
        *(["--prompt-lookup", str(lookup)] if lookup is not None else []),
        *(["--draft-heads", heads] if heads is not None else []),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not healthy(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the server did not start:\n{process.stdout.read() if process.stdout else ''}"
                )
            time.sleep(0.2)
        yield port
    finally:
        process.terminate()
        process.wait(60)


def healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/health")
        return conn.getresponse().status == 200
    except OSError:
        return False


def streamed(port: int, path: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(latency s, time to first token s, completion tokens) of one streamed request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"{path}: HTTP {response.status}: {response.read().decode()[:300]}")
    first, tokens = None, 0
    for raw in response:  # one SSE line at a time
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        elif "tokens_predicted" in event:  # llama.cpp /infill's last event
            tokens = event["tokens_predicted"]
        if first is None and (event.get("choices") or event.get("content")):
            first = time.perf_counter()
    done = time.perf_counter()
    conn.close()
    return done - started, (first or done) - started, tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_level(port: int, clients: int, requests: int, max_tokens: int) -> dict[str, float]:
    """`clients` threads, each sending `requests` streamed completions back to back."""
    results: list[tuple[float, float, int]] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        for r in range(requests):
            prompt = PROMPTS[(c * requests + r) % len(PROMPTS)]
            body = {
                "prompt": prompt,
                "max_tokens": max_tokens,
                "temperature": 0,
                "stream_options": {"include_usage": True},
            }
            outcome = streamed(port, "/v1/completions", body)
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    latencies, ttfts, tokens = zip(*results, strict=True)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": sum(tokens),
        "seconds": wall,
        "tok_s": sum(tokens) / wall,
        "p50": statistics.median(latencies),
        "p95": percentile(list(latencies), 0.95),
        "ttft_p50": statistics.median(ttfts),
        "ttft_p95": percentile(list(ttfts), 0.95),
    }


def editor_latency(port: int, fim: bool, requests: int) -> dict[str, float]:
    """Sequential 32-token requests, as an editor sends them while the user types."""
    latencies, ttfts = [], []
    for i in range(requests):
        prompt = PROMPTS[i % len(PROMPTS)]
        if fim:
            body = {"input_prefix": prompt, "input_suffix": "\n\n", "n_predict": 32, "temperature": 0}
            latency, ttft, _ = streamed(port, "/infill", body)
        else:
            latency, ttft, _ = streamed(
                port, "/v1/completions", {"prompt": prompt, "max_tokens": 32, "temperature": 0}
            )
        latencies.append(latency)
        ttfts.append(ttft)
    return {
        "p50": statistics.median(latencies),
        "p95": percentile(latencies, 0.95),
        "ttft_p50": statistics.median(ttfts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--clients", default="1,4,8,16", help="Concurrency levels, comma-separated.")
    parser.add_argument("--requests", type=int, default=3, help="Requests per client per level.")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Server decoding threads (1: on a shared machine torch's thread barriers stall with 2).",
    )
    parser.add_argument("--fim-model", default=None, help="A checkpoint trained for FIM (editor latency).")
    parser.add_argument("--editor-requests", type=int, default=20)
    parser.add_argument(
        "--prompt-lookup", type=int, default=None, help="Server's --prompt-lookup (default: its own)."
    )
    parser.add_argument(
        "--draft-heads", default=None, help="Server's --draft-heads (a directory or shipped name)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    levels = [int(x) for x in args.clients.split(",")]
    print(
        f"# serve_bench: {args.model}, dtype {args.dtype}, {args.threads} thread(s), "
        f"prompt lookup {'server default' if args.prompt_lookup is None else args.prompt_lookup}, "
        f"draft heads {args.draft_heads or 'server default'}, "
        f"max batch {args.max_batch}, "
        f"{os.cpu_count()} cores ({cpu_model()}), "
        f"{args.requests} requests × {args.max_tokens} "
        "tokens per client, greedy, loopback"
    )
    figures: dict[str, Any] = {"levels": []}
    with server(
        args.model,
        args.max_batch,
        args.dtype,
        args.max_tokens,
        args.threads,
        args.prompt_lookup,
        args.draft_heads,
    ) as port:
        streamed(port, "/v1/completions", {"prompt": PROMPTS[0], "max_tokens": 4})  # warm-up
        print(
            f"{'clients':>7} {'tokens':>7} {'tok/s':>7} {'× 1':>5} {'p50 s':>7} {'p95 s':>7} "
            f"{'TTFT p50':>9} {'TTFT p95':>9}"
        )
        single = None
        for clients in levels:
            level = load_level(port, clients, args.requests, args.max_tokens)
            single = single or level["tok_s"]
            level["ratio"] = level["tok_s"] / single
            figures["levels"].append(level)
            print(
                f"{clients:>7} {level['tokens']:>7} {level['tok_s']:>7.1f} {level['ratio']:>5.2f} "
                f"{level['p50']:>7.2f} {level['p95']:>7.2f} "
                f"{level['ttft_p50']:>9.3f} {level['ttft_p95']:>9.3f}"
            )
        if args.fim_model is None:
            editor = editor_latency(port, False, args.editor_requests)
            how = f"plain 32-token /v1/completions on {args.model} (no FIM checkpoint given: --fim-model)"
    if args.fim_model is not None:
        with server(
            args.fim_model, args.max_batch, args.dtype, 32, args.threads, args.prompt_lookup, args.draft_heads
        ) as port:
            streamed(port, "/infill", {"input_prefix": "x", "input_suffix": "y", "n_predict": 2})  # warm-up
            editor = editor_latency(port, True, args.editor_requests)
            how = f"32-token /infill on {args.fim_model}"
    figures["editor"] = {**editor, "how": how}
    print(
        f"editor latency ({how}), {args.editor_requests} sequential requests: "
        f"p50 {editor['p50']:.3f} s, p95 {editor['p95']:.3f} s, TTFT p50 {editor['ttft_p50']:.3f} s "
        "(target p50 <= 0.5 s)"
    )
    eight = next((lv for lv in figures["levels"] if lv["clients"] == 8), None)
    if eight is not None:
        print(f"8 clients: {eight['ratio']:.2f}x the single client's aggregate tokens/s (target >= 3x)")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
