"""The HTTP face of the server: thin FastAPI routes over the scheduler, SSE streaming, the bearer key, the
body-size limit, /metrics, and every error as OpenAI's error JSON. `serve` loads the model and runs uvicorn.

Routes: POST /v1/completions (with `suffix`), POST /v1/chat/completions, POST /infill (llama.cpp), GET
/v1/models, /health, /metrics, and the playground at / (static files, no CDN).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pycodegen.generate.engine import DecodeParams, Engine, Event, FimUnsupported
from pycodegen.serve import protocol as p
from pycodegen.serve.protocol import FIM_REFUSAL, Limits, RequestError
from pycodegen.serve.scheduler import Job, RequestTimeout, Scheduler
from pycodegen.serve.selection import Judge, Ranking, by_logprob

if TYPE_CHECKING:
    from rich.console import Console

    from pycodegen.config import ServeConfig

STATIC = Path(__file__).parent / "static"
KNOWN_ROUTES = {
    "/",
    "/health",
    "/metrics",
    "/v1/models",
    "/v1/completions",
    "/v1/chat/completions",
    "/infill",
}
T = TypeVar("T")
CLIENT_GONE = 499  # "client closed request", as nginx logs it


# -- middleware (pure ASGI: they see every request, streamed ones included) ------------------------------
class BodyLimit:
    """Refuse a request body over `max_bytes` with 413, whether or not it declares its length: the body is
    read (up to the limit) before the route runs, so no handler ever sees an oversized one."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._refuse(scope, send)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: disconnect notices

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        message = f"request body over this server's limit of {self.max_bytes} bytes"
        await JSONResponse(p.error_body(message, "invalid_request_error", code="body_too_large"), 413)(
            scope, _no_receive, send
        )


class BearerKey:
    """With an API key set, every route but /health and the playground's static files needs
    `Authorization: Bearer KEY` (checked before the body is read, so a stranger cannot make it read one)."""

    OPEN = ("/health", "/", "/favicon.ico")

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app, self.key = app, api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if self.key is None or scope["type"] != "http" or path in self.OPEN or path.startswith("/static/"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return await self.app(scope, receive, send)
        body = p.error_body(
            "missing or wrong API key: send 'Authorization: Bearer KEY'",
            "authentication_error",
            code="invalid_api_key",
        )
        await JSONResponse(body, 401, headers={"WWW-Authenticate": "Bearer"})(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class RequestMetrics:
    """Count every answered request by route and status, and time it to its last byte (streams too)."""

    def __init__(self, app: ASGIApp, scheduler: Scheduler) -> None:
        self.app, self.metrics = app, scheduler.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            # The route's template, never a raw path: random 404 paths must not mint new series.
            path = scope.get("path", "")
            name = getattr(scope.get("route"), "path", path if path in KNOWN_ROUTES else "unmatched")
            self.metrics.requests.labels(name, str(status)).inc()
            self.metrics.latency.labels(name).observe(time.monotonic() - start)


# -- helpers -------------------------------------------------------------------------------------------------
async def until_disconnected(request: Request) -> None:
    """Return when the client has gone (after the body is read, the only message left is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None (with `work` cancelled) when the client disconnects first."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        return task.result() if task.done() else None
    finally:
        for pending in (task, watcher):
            if not pending.done():
                pending.cancel()


def sse(data: Any) -> str:
    """One server-sent event (compact JSON: a stream sends one per token)."""
    return "data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n\n"


def _ended_badly(events: dict[int, list[Event]]) -> None:
    reasons = {evs[-1].finish_reason for evs in events.values() if evs}
    if "error" in reasons:
        raise RequestError(500, "the engine failed while decoding this request", type="server_error")
    if "cancelled" in reasons:
        raise RequestError(
            503, "the server is shutting down; retry", type="server_error", code="shutting_down"
        )


def _text(events: list[Event]) -> str:
    return "".join(e.text for e in events)


def _finish(events: list[Event]) -> str | None:
    return events[-1].finish_reason if events else None


def _mean_logprob(events: list[Event], eos_ids: set[int]) -> float | None:
    """A choice's mean token log-probability, as the engine's `Completion.mean_logprob` (what `generate
    --best-of` ranks by): the end-of-sequence token, which its last event carries, not counted."""
    pairs = [(t, lp) for e in events for t, lp in zip(e.token_ids, e.logprobs or [], strict=False)]
    values = [lp["logprob"] for t, lp in pairs if t not in eos_ids]
    return round(sum(values) / len(values), 6) if values else None


def chat_prompt(engine: Engine, messages: list[p.ChatMessage]) -> str:
    """The model's text for a conversation: the tokenizer's chat template; a model without one (a base
    model, a HUST-template checkpoint) takes a single user message in its own prompt mode."""
    if getattr(engine.tokenizer, "chat_template", None):
        turns = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages
        ]
        return engine.tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    if len(messages) == 1 and messages[0].role == "user":
        return engine.format_prompt(messages[0].text())
    raise RequestError(
        400,
        "this model has no chat template: send a single user message, or use /v1/completions",
        param="messages",
    )


# -- the app ---------------------------------------------------------------------------------------------
def create_app(engine: Engine, cfg: ServeConfig, *, api_key: str | None = None) -> FastAPI:
    """The server for a loaded engine. The lifespan starts the engine's decode thread and stops it."""
    limits = Limits(cfg.max_prompt_tokens, cfg.max_tokens, cfg.max_n)
    scheduler = Scheduler(
        engine, max_batch=cfg.max_batch, queue_size=cfg.queue_size, request_timeout=cfg.request_timeout
    )
    judge = Judge(cfg.select_examples)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop(drain=False)  # uvicorn has already let in-flight requests finish or cancelled them
            judge.close()

    app = FastAPI(title="pycodegen", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler = scheduler

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse(exc.body(), exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first.get("type") == "json_invalid":
            message, param = (
                f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                None,
            )
        else:
            loc = [str(x) for x in first.get("loc", ()) if x != "body"]
            param = ".".join(loc) or None
            message = f"{param or 'body'}: {first['msg']}"
            if len(exc.errors()) > 1:
                message += f" (and {len(exc.errors()) - 1} more problem(s))"
        return JSONResponse(p.error_body(message, "invalid_request_error", param), 400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(p.error_body(str(exc.detail), kind), exc.status_code, headers=exc.headers)

    def admit(prompt: str, params: DecodeParams) -> Job:
        count = engine.count_tokens(prompt)
        if count > limits.max_prompt_tokens:
            raise RequestError(
                400,
                f"the prompt is {count} tokens; this server's limit is {limits.max_prompt_tokens}",
                param="prompt",
                code="context_length_exceeded",
            )
        return scheduler.admit(prompt, params)

    def fim_prompt(prefix: str, suffix: str) -> str:
        """The engine's FIM prompt (the card's FIM record, or a tokenizer with StarCoder's sentinels);
        any other model is refused, never given a fake (the suffix appended, say)."""
        try:
            return engine.fim_prompt(prefix, suffix)
        except FimUnsupported as exc:
            message = str(exc) if str(exc).startswith(FIM_REFUSAL) else f"{FIM_REFUSAL} ({exc})"
            raise RequestError(400, message, param="suffix", code="fim_unsupported") from None

    fim_ready = _does_fim(engine)

    async def respond(
        request: Request,
        job: Job,
        stream: Callable[[], AsyncIterator[str]] | None,
        build: Callable[[dict[int, list[Event]]], dict[str, Any]],
        choose: Callable[[dict[int, list[Event]]], Awaitable[dict[int, list[Event]]]] | None = None,
    ) -> Response:
        """A streamed (SSE) or whole response for an admitted job; the job is released either way.
        `choose` (best_of) keeps the choices to return, after decoding and before `build`."""
        if stream is not None:
            return StreamingResponse(
                stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
                background=BackgroundTask(scheduler.release, job),  # also when the stream never started
            )
        try:
            events = await unless_disconnected(request, scheduler.collect(job))
        finally:
            scheduler.release(job)
        if events is None:  # the client left: nobody reads this, but the metrics count it (nginx's 499)
            return Response(status_code=CLIENT_GONE)
        _ended_badly(events)
        if choose is not None:
            events = await unless_disconnected(request, choose(events))
            if events is None:
                return Response(status_code=CLIENT_GONE)
        return JSONResponse(build(events))

    async def ranked(req: p.CompletionRequest, job: Job, events: dict[int, list[Event]]) -> Ranking:
        """The best_of samples ranked by the request's rule; examples are judged on a worker thread,
        within the request's time limit (a cancelled wait stops the judging too)."""
        eos = getattr(engine.backend, "eos_ids", set())
        samples = [(_text(evs), _mean_logprob(evs, eos)) for _, evs in sorted(events.items())]
        if req.select == "logprob":
            return by_logprob(samples)
        stop = threading.Event()
        try:
            ranking = await asyncio.wait_for(
                asyncio.to_thread(judge.rank, req.single_prompt(), samples, stop),
                max(job.deadline - time.monotonic(), 0),
            )
        except TimeoutError:
            raise RequestTimeout(scheduler.request_timeout) from None
        finally:
            stop.set()  # the client left or time ran out: the sandbox skips the samples not yet started
        if ranking is None:  # the server is shutting down
            raise RequestError(503, "the server is shutting down; retry", type="server_error")
        return ranking

    async def streamed(
        job: Job, chunks: Callable[[Event], str | None], tail: Callable[[], list[str]]
    ) -> AsyncIterator[str]:
        try:
            async for event in scheduler.events(job):
                chunk = chunks(event)
                if chunk is not None:
                    yield chunk
            for chunk in tail():
                yield chunk
        except RequestError as exc:  # the time limit, after the 200 went out: the error is the last event
            yield sse(exc.body())
        finally:
            scheduler.release(job)

    # -- routes ------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {
            "id": engine.name,
            "object": "model",
            "created": 0,
            "owned_by": "pycodegen",
            "fim": fim_ready,
            "max_tokens": limits.max_tokens,
            "max_n": limits.max_n,
        }
        return {"object": "list", "data": [card]}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(scheduler.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/completions")
    async def completions(req: p.CompletionRequest, request: Request) -> Response:
        params = p.completion_params(req, limits)
        prompt = req.single_prompt()
        if req.selecting():
            await refuse_unselectable(req)
        if req.suffix:  # an empty suffix is a plain continuation, for any model
            prompt = fim_prompt(prompt, req.suffix)
        job = admit(prompt, params)
        rid, created = p.new_id("cmpl"), p.now()
        offsets = dict.fromkeys(range(params.n), 0)
        selection: dict[str, Any] = {}

        async def choose(events: dict[int, list[Event]]) -> dict[int, list[Event]]:
            ranking = await ranked(req, job, events)
            best = ranking.order[: req.n]
            selection.update(best_of=params.n, select=req.select)
            if req.select == "examples":  # what the sandbox found: the prompt's examples, who passed them
                selection.update(
                    examples=ranking.examples,
                    passing=sum(1 for flag in ranking.passed_examples if flag),
                    passed_examples=[ranking.passed_examples[i] for i in best],
                )
            return {rank: events[i] for rank, i in enumerate(best)}

        def chunk(event: Event) -> str | None:
            if not event.text and event.finish_reason is None and not event.logprobs:
                return None
            logprobs = p.completion_logprobs([event], offsets[event.index])
            offsets[event.index] += len(event.text)
            choice = {
                "index": event.index,
                "text": event.text,
                "logprobs": logprobs,
                "finish_reason": event.finish_reason,
            }
            return sse(p.completion_chunk(rid, engine.name, created, [choice]))

        def tail() -> list[str]:
            end = []
            if req.include_usage():
                body = p.completion_chunk(rid, engine.name, created, [])
                end.append(sse({**body, "usage": p.usage(job.prompt_tokens, job.completion_tokens)}))
            return [*end, "data: [DONE]\n\n"]

        def build(events: dict[int, list[Event]]) -> dict[str, Any]:
            choices = [
                {
                    "index": i,
                    "text": _text(evs),
                    # best_of asks the engine for log-probabilities to rank by; shown only when asked for
                    "logprobs": p.completion_logprobs(evs) if req.logprobs is not None else None,
                    "finish_reason": _finish(evs),
                }
                for i, evs in sorted(events.items())
            ]
            body = p.completion_chunk(rid, engine.name, created, choices)
            # usage counts every best_of sample's tokens: all of them were decoded
            body = {**body, "usage": p.usage(job.prompt_tokens, job.completion_tokens)}
            return {**body, "selection": selection} if selection else body

        return await respond(
            request,
            job,
            (lambda: streamed(job, chunk, tail)) if req.stream else None,
            build,
            choose if req.selecting() else None,
        )

    async def refuse_unselectable(req: p.CompletionRequest) -> None:
        """Refuse, before decoding anything, a best_of this server cannot rank."""
        if not engine.supports_logprobs:
            raise RequestError(
                400,
                "best_of ranks samples by their token log-probabilities, which this model's decoder does "
                "not give; leave best_of unset",
                param="best_of",
            )
        if req.select == "examples":
            if req.suffix:
                message = 'select "examples" runs the prompt as code; it does not take a suffix'
                raise RequestError(400, message, param="suffix")
            await asyncio.to_thread(judge.open)  # the first call starts the sandbox (a second or so)

    @app.post("/v1/chat/completions")
    async def chat(req: p.ChatRequest, request: Request) -> Response:
        params = p.chat_params(req, limits)
        job = admit(chat_prompt(engine, req.messages), params)
        rid, created = p.new_id("chatcmpl"), p.now()
        started: set[int] = set()

        def chunk(event: Event) -> str | None:
            if not event.text and event.finish_reason is None and not event.logprobs:
                return None
            delta: dict[str, Any] = {"content": event.text}
            if event.index not in started:  # each choice's first chunk names the role
                started.add(event.index)
                delta["role"] = "assistant"
            choice = {
                "index": event.index,
                "delta": delta,
                "logprobs": p.chat_logprobs([event]),
                "finish_reason": event.finish_reason,
            }
            return sse(p.chat_chunk(rid, engine.name, created, [choice]))

        def tail() -> list[str]:
            end = []
            if req.include_usage():
                body = p.chat_chunk(rid, engine.name, created, [])
                end.append(sse({**body, "usage": p.usage(job.prompt_tokens, job.completion_tokens)}))
            return [*end, "data: [DONE]\n\n"]

        def build(events: dict[int, list[Event]]) -> dict[str, Any]:
            choices = [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": _text(evs)},
                    "logprobs": p.chat_logprobs(evs),
                    "finish_reason": _finish(evs),
                }
                for i, evs in sorted(events.items())
            ]
            return {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": engine.name,
                "choices": choices,
                "usage": p.usage(job.prompt_tokens, job.completion_tokens),
            }

        return await respond(
            request, job, (lambda: streamed(job, chunk, tail)) if req.stream else None, build
        )

    async def llama_respond(request: Request, prompt: str, params: DecodeParams, stream: bool) -> Response:
        """llama.cpp's response shape (/infill, /completion): {"content", "stop", "tokens_predicted", ...};
        streamed as {"content", "stop": false} events, then the summary with "stop": true."""
        job = admit(prompt, params)
        started = time.monotonic()

        def summary(text: str, finish: str | None) -> dict[str, Any]:
            elapsed = max(time.monotonic() - started, 1e-9)
            return {
                "content": text,
                "stop": True,
                "model": engine.name,
                "tokens_predicted": job.completion_tokens,
                "tokens_evaluated": job.prompt_tokens,
                "stop_type": {"stop": "eos", "length": "limit"}.get(finish or "", finish),
                "truncated": False,
                "timings": {
                    "prompt_n": job.prompt_tokens,
                    "predicted_n": job.completion_tokens,
                    "predicted_ms": elapsed * 1000,
                    "predicted_per_second": job.completion_tokens / elapsed,
                },
            }

        def chunk(event: Event) -> str | None:
            return sse({"content": event.text, "stop": False}) if event.text else None

        def tail() -> list[str]:
            return [sse(summary("", next(iter(job.finish.values()), None)))]

        def build(events: dict[int, list[Event]]) -> dict[str, Any]:
            return summary(_text(events[0]), _finish(events[0]))

        return await respond(request, job, (lambda: streamed(job, chunk, tail)) if stream else None, build)

    @app.post("/infill")
    async def infill(req: p.InfillRequest, request: Request) -> Response:
        params = p.llama_params(req, limits)
        return await llama_respond(
            request, infill_prompt(engine, req, limits, fim_prompt), params, req.stream
        )

    @app.post("/completion")
    async def llama_completion(req: p.LlamaCompletionRequest, request: Request) -> Response:
        # What Tabby's `llama.cpp/completion` backend sends: a prompt it has already formatted.
        return await llama_respond(request, req.prompt, p.llama_params(req, limits), req.stream)

    # The playground: static files, open like /health (a browser cannot send a bearer header when it
    # navigates; the page holds nothing and its API calls carry the key the user types).
    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # The last added runs first: count everything, then check the key, then read the (bounded) body.
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    app.add_middleware(BearerKey, api_key=api_key)
    app.add_middleware(RequestMetrics, scheduler=scheduler)
    return app


def _does_fim(engine: Engine) -> bool:
    try:
        engine.fim_prompt("", "")
    except FimUnsupported:
        return False
    return True


def infill_prompt(
    engine: Engine, req: p.InfillRequest, limits: Limits, fim: Callable[[str, str], str]
) -> str:
    """llama.cpp's /infill prompt: the extra context chunks (other files) before the prefix. Chunks that do
    not fit under the prompt limit are dropped, oldest first, as an editor expects (it sends what it has);
    the prefix and suffix themselves are never cut."""
    extras = [f"# {c.filename}\n{c.text}\n" if c.filename else f"{c.text}\n" for c in req.input_extra]
    while True:
        prompt = fim("".join(extras) + req.input_prefix + req.prompt, req.input_suffix)
        if not extras or engine.count_tokens(prompt) <= limits.max_prompt_tokens:
            return prompt
        extras.pop(0)


# -- the verb ---------------------------------------------------------------------------------------------
class _StopRequested(Exception):
    """SIGTERM arrived (uvicorn has already drained or cancelled the requests)."""


def _stop_requested(signum: int, frame: Any) -> None:
    raise _StopRequested


def serve(cfg: ServeConfig, console: Console) -> None:
    """`pycodegen serve`: load the model, then answer HTTP until SIGTERM/Ctrl-C. Shutdown lets in-flight
    requests finish for up to `shutdown_timeout` seconds, then cancels the rest."""
    import os

    import uvicorn

    api_key = cfg.api_key or os.environ.get("PYCODEGEN_API_KEY") or None
    started = time.perf_counter()
    console.print(f"[bold cyan]serve[/] loading {cfg.model}")
    engine = Engine.load_started(  # loaded by the thread that decodes (why: Engine.load_started)
        cfg.model,
        dtype=cfg.dtype,
        max_batch=cfg.max_batch,
        threads=cfg.threads,
        prompt_lookup=cfg.prompt_lookup,
        draft_heads=cfg.draft_heads,
    )
    app = create_app(engine, cfg, api_key=api_key)
    fim = "fill-in-the-middle on" if _does_fim(engine) else "no fill-in-the-middle (not trained for it)"
    console.print(
        f"[bold cyan]serve[/] {engine.name} loaded in {time.perf_counter() - started:.1f} s; {fim}; "
        f"playground and API at http://{cfg.host}:{cfg.port}/"
        + ("" if api_key is None else " (API key required)")
    )
    config = uvicorn.Config(
        app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=cfg.shutdown_timeout
    )
    # uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal to the handlers it found:
    # ours turn that into a normal return (exit status 0: a requested stop is not a failure).
    previous = signal.signal(signal.SIGTERM, _stop_requested)
    try:
        uvicorn.Server(config).run()
    except (KeyboardInterrupt, _StopRequested):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    console.print("[bold cyan]serve[/] stopped")
