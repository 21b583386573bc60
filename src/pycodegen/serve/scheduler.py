"""Admission and lifetime of requests over the decoding engine: a bounded number in flight (HTTP 429
beyond it), a per-request time limit, cancellation (client gone, time up, shutdown), and the Prometheus
metrics of what passed through.

The engine batches and decodes; this module only decides what may enter it and when a request must leave.
Events cross from the engine's thread to the event loop through `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pycodegen.generate.engine import DecodeParams, Engine, EngineError, Event, Stream
from pycodegen.serve.protocol import RequestError

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of their own (two servers in one process, as in
    the tests, must not share counters)."""

    def __init__(self, engine: Engine, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "pycodegen_requests",
            "HTTP requests answered, by route and status.",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "pycodegen_request_latency_seconds",
            "Time from request to last byte, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "pycodegen_time_to_first_token_seconds",
            "Time from admission to the first generated token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("pycodegen_prompt_tokens", "Prompt tokens admitted.", registry=r)
        self.completion_tokens = Counter("pycodegen_completion_tokens", "Tokens generated.", registry=r)
        self.rejected = Counter(
            "pycodegen_rejected_requests", "Requests refused for lack of room (HTTP 429).", registry=r
        )
        self.finished = Counter(
            "pycodegen_finished_choices", "Choices finished, by reason.", ["reason"], registry=r
        )
        in_flight = Gauge(
            "pycodegen_requests_in_flight", "Requests admitted and not yet finished.", registry=r
        )
        in_flight.set_function(lambda: scheduler.in_flight)
        depth = Gauge(
            "pycodegen_queue_depth", "Requests admitted and still waiting for their first token.", registry=r
        )
        depth.set_function(lambda: scheduler.queued)
        running = Gauge("pycodegen_running_sequences", "Sequences in the running batch.", registry=r)
        running.set_function(lambda: engine.stats.get("running", 0))
        r.register(_SpeculationCounters(engine))


class _SpeculationCounters:
    """Prompt-lookup draft tokens proposed and accepted, read from the engine's own counts at scrape time
    (the engine counts them in its decoding thread; a Counter would need a hook there)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        for key, text in (
            ("drafted", "Prompt-lookup draft tokens verified."),
            ("accepted", "Prompt-lookup draft tokens that were the model's own choice."),
        ):
            yield CounterMetricFamily(f"pycodegen_draft_tokens_{key}", text, value=self.engine.stats[key])


class QueueFull(RequestError):
    """No room: HTTP 429 (the client should retry later)."""

    def __init__(self, capacity: int) -> None:
        super().__init__(
            429,
            f"the server is at capacity ({capacity} requests in flight); retry shortly",
            type="rate_limit_error",
            code="queue_full",
        )


class RequestTimeout(RequestError):
    def __init__(self, seconds: float) -> None:
        super().__init__(
            504,
            f"the request ran past this server's time limit of {seconds:g} s",
            type="timeout",
            code="timeout",
        )


@dataclass
class Job:
    """One admitted request: its engine stream and the events that arrive for it on the event loop."""

    stream: Stream
    n: int
    deadline: float
    admitted: float
    queue: asyncio.Queue[Event]
    first_token_at: float | None = None
    completion_tokens: int = 0
    finish: dict[int, str] = field(default_factory=dict)
    released: bool = False

    @property
    def prompt_tokens(self) -> int:
        return self.stream.prompt_tokens

    @property
    def done(self) -> bool:
        return len(self.finish) == self.n


class Scheduler:
    """Admits requests into the engine up to `max_batch + queue_size` in flight. Every admitted job must
    be `release`d (idempotent), which cancels it in the engine if it has not finished (the client went
    away, time ran out, the server is shutting down), so its slot is always given back."""

    def __init__(self, engine: Engine, *, max_batch: int, queue_size: int, request_timeout: float) -> None:
        self.engine = engine
        self.capacity = max_batch + queue_size
        self.request_timeout = request_timeout
        self.jobs: set[int] = set()  # ids of admitted, unreleased jobs that have no token yet
        self.in_flight = 0
        self.metrics = ServerMetrics(engine, self)

    @property
    def queued(self) -> int:
        """Admitted requests still waiting for their first token (queued, or being prefilled)."""
        return len(self.jobs)

    def admit(self, prompt: str, params: DecodeParams) -> Job:
        """Submit a request to the engine, or refuse it (429 when full, 400 when the engine refuses it)."""
        if self.in_flight >= self.capacity:
            self.metrics.rejected.inc()
            raise QueueFull(self.capacity)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()

        def listener(event: Event) -> None:  # runs on the engine's thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop has closed (shutdown): nobody is listening any more
                pass

        try:
            stream = self.engine.submit(prompt, params, listener)
        except EngineError as exc:
            raise RequestError(400, str(exc)) from None
        self.in_flight += 1
        start = time.monotonic()
        self.metrics.prompt_tokens.inc(stream.prompt_tokens)
        job = Job(stream, params.n, start + self.request_timeout, start, queue)
        self.jobs.add(id(job))
        return job

    def release(self, job: Job) -> None:
        """Give the job's slot back; cancel it in the engine unless every choice has finished."""
        if job.released:
            return
        job.released = True
        self.jobs.discard(id(job))
        if not job.done:
            job.stream.cancel()
            self.metrics.finished.labels("cancelled").inc(job.n - len(job.finish))
        self.in_flight -= 1

    async def events(self, job: Job) -> AsyncIterator[Event]:
        """The job's events in order until every choice has finished; RequestTimeout past the limit."""
        while not job.done:
            remaining = job.deadline - time.monotonic()
            try:
                event = await asyncio.wait_for(job.queue.get(), max(remaining, 0))
            except TimeoutError:
                raise RequestTimeout(self.request_timeout) from None
            if event.token_ids:
                if job.first_token_at is None:
                    self.jobs.discard(id(job))
                    job.first_token_at = time.monotonic()
                    self.metrics.ttft.observe(job.first_token_at - job.admitted)
                job.completion_tokens += len(event.token_ids)
                self.metrics.completion_tokens.inc(len(event.token_ids))
            if event.finish_reason is not None:
                job.finish[event.index] = event.finish_reason
                self.metrics.finished.labels(event.finish_reason).inc()
            yield event

    async def collect(self, job: Job) -> dict[int, list[Event]]:
        """Every event of a job, by choice index (for non-streaming responses)."""
        by_choice: dict[int, list[Event]] = {i: [] for i in range(job.n)}
        async for event in self.events(job):
            by_choice[event.index].append(event)
        return by_choice

    def stats(self) -> dict[str, Any]:
        return {
            "in_flight": self.in_flight,
            "queued": self.queued,
            "capacity": self.capacity,
            **self.engine.stats,
        }
