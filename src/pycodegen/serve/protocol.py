"""The wire formats the server speaks: OpenAI completions and chat completions, and llama.cpp's /infill.

Request models (pydantic) validate types and ranges; `*_params` turn a validated request into the engine's
`DecodeParams` under the server's limits; the `*_body`/`*_chunk` builders shape the responses. Nothing here
knows HTTP or the scheduler: a refusal is a `RequestError` carrying the status and OpenAI error fields.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pycodegen.generate.engine import DecodeParams, Event

FIM_REFUSAL = "this model was not trained for fill-in-the-middle"
MAX_STOPS = 4  # OpenAI's limit on stop sequences
MAX_STOP_CHARS = 256  # every stop is matched against every row at every step, on the engine's thread
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's limit for /v1/completions `logprobs`
MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat `top_logprobs`


class RequestError(Exception):
    """A refused request: the HTTP status and the fields of OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        type: str = "invalid_request_error",
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclass(frozen=True)
class Limits:
    """The server's caps on what one request may ask for (from ServeConfig)."""

    max_prompt_tokens: int
    max_tokens: int
    max_n: int


# -- requests ----------------------------------------------------------------------------------------------
class _Request(BaseModel):
    # Editors and SDKs send fields this server has no use for (user, cache_prompt, ...): ignored, as
    # llama.cpp and vLLM do. Fields whose non-default values would change the output are checked below.
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Ignored: the server serves one model (GET /v1/models).")
    temperature: float = Field(1.0, ge=0, le=2, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1)
    seed: int | None = Field(None, ge=-(2**63), lt=2**63, description="A signed 64-bit integer.")
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOPS:
            raise RequestError(400, f"at most {MAX_STOPS} stop sequences, got {len(stops)}", param="stop")
        if any(s == "" for s in stops):
            raise RequestError(400, "a stop sequence must not be empty", param="stop")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise RequestError(400, f"a stop sequence is at most {MAX_STOP_CHARS} characters", param="stop")
        return stops

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def unsupported(self) -> None:
        """Refuse settings the engine does not implement, rather than silently ignoring them."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0:
                raise RequestError(400, f"{name} is not supported by this server; leave it at 0", param=name)


class CompletionRequest(_Request):
    """POST /v1/completions."""

    prompt: str | list[str]
    suffix: str | None = None
    max_tokens: int | None = Field(None, ge=1, description="Default 16, as OpenAI's.")
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False
    best_of: int | None = Field(
        None, ge=1, description="Draw best_of samples server-side and return the n best (not streamed)."
    )
    select: Literal["logprob", "examples"] = Field(
        "logprob",
        description="pycodegen's extension: how best_of ranks its samples. logprob = the highest mean "
        "token log-probability (OpenAI's rule); examples = those passing the prompt's docstring `>>>` "
        "examples in the sandbox first, then by mean log-probability.",
    )

    def selecting(self) -> bool:
        """Whether the server draws more samples than it returns (best_of > n) and must choose."""
        return self.best_of is not None and self.best_of > self.n

    def single_prompt(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        if len(self.prompt) != 1:
            raise RequestError(
                400,
                f"one prompt per request (got a list of {len(self.prompt)}); send several requests, the "
                "server decodes them together",
                param="prompt",
            )
        return self.prompt[0]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(_Request):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)


class InfillExtra(BaseModel):
    model_config = ConfigDict(extra="ignore")

    filename: str = ""
    text: str = ""


class LlamaCompletionRequest(BaseModel):
    """POST /completion, llama.cpp's raw completion endpoint (what Tabby's `llama.cpp/completion` backend
    sends, with the prompt already formatted by its `prompt_template`)."""

    model_config = ConfigDict(extra="ignore")

    prompt: str
    n_predict: int = Field(-1, ge=-1, description="-1 = up to the server's cap.")
    temperature: float = Field(0.0, ge=0, le=2)
    top_k: int = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int | None = Field(
        None, description="llama.cpp uses -1 (and Tabby a random u64) for a random seed."
    )
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    n_probs: int = Field(0, ge=0, le=MAX_TOP_LOGPROBS)
    presence_penalty: float = 0.0


class InfillRequest(LlamaCompletionRequest):
    """POST /infill, llama.cpp's fill-in-the-middle endpoint (what llama.vscode sends). `prompt` is text
    typed after the cursor's line start, appended to the prefix."""

    prompt: str = ""
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillExtra] = Field(default_factory=list)


# -- requests → engine parameters --------------------------------------------------------------------------
def _max_tokens(asked: int | None, default: int, limits: Limits, param: str) -> int:
    if asked is None:
        return min(default, limits.max_tokens)
    if asked > limits.max_tokens:
        raise RequestError(
            400, f"{param} {asked} is over this server's cap of {limits.max_tokens}", param=param
        )
    return asked


def _n(n: int, limits: Limits) -> int:
    if n > limits.max_n:
        raise RequestError(400, f"n {n} is over this server's cap of {limits.max_n}", param="n")
    return n


def completion_params(req: CompletionRequest, limits: Limits) -> DecodeParams:
    req.unsupported()
    if req.echo:
        raise RequestError(400, "echo is not supported by this server", param="echo")
    n = _n(req.n, limits)
    logprobs = req.logprobs
    if req.best_of is not None and req.best_of < n:
        raise RequestError(400, f"best_of ({req.best_of}) must be at least n ({n})", param="best_of")
    if req.selecting():
        assert req.best_of is not None
        if req.best_of > limits.max_n:  # every draw is decoded: best_of counts against the n cap
            raise RequestError(
                400, f"best_of {req.best_of} is over this server's cap of {limits.max_n}", param="best_of"
            )
        if req.stream:
            raise RequestError(400, "best_of results cannot be streamed (as OpenAI's)", param="stream")
        if req.temperature == 0:
            raise RequestError(
                400, "best_of draws several samples: give temperature > 0 (e.g. 0.8)", param="temperature"
            )
        n = req.best_of
        logprobs = logprobs or 0  # the chosen tokens' log-probabilities: mean log-probability ranks them
    elif req.select != "logprob":
        raise RequestError(
            400, f'select "{req.select}" chooses among best_of samples: give best_of > n', param="select"
        )
    return DecodeParams(
        max_new_tokens=_max_tokens(req.max_tokens, 16, limits, "max_tokens"),
        temperature=req.temperature,
        top_p=req.top_p,
        n=n,
        seed=req.seed,
        stop=req.stops(),
        logprobs=logprobs,
    )


def chat_params(req: ChatRequest, limits: Limits) -> DecodeParams:
    req.unsupported()
    asked = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    return DecodeParams(
        max_new_tokens=_max_tokens(asked, limits.max_tokens, limits, param),
        temperature=req.temperature,
        top_p=req.top_p,
        n=_n(req.n, limits),
        seed=req.seed,
        stop=req.stops(),
        logprobs=(req.top_logprobs or 0) if req.logprobs else None,
    )


def llama_params(req: LlamaCompletionRequest, limits: Limits) -> DecodeParams:
    """llama.cpp's settings: n_predict -1 means "as many as allowed" (the server's cap); a seed outside
    the engine's range (-1, or a random u64 from Tabby) means an unseeded draw, as llama.cpp treats -1."""
    if req.presence_penalty != 0:
        raise RequestError(
            400, "presence_penalty is not supported by this server; leave it at 0", param="presence_penalty"
        )
    stops = [s for s in req.stop if s]
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError(
            400, f"at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters", param="stop"
        )
    asked = None if req.n_predict < 0 else max(req.n_predict, 1)
    return DecodeParams(
        max_new_tokens=_max_tokens(asked, limits.max_tokens, limits, "n_predict"),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        seed=req.seed if req.seed is not None and 0 <= req.seed < 2**63 else None,
        stop=stops,
        logprobs=req.n_probs or None,
    )


# -- responses ---------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(events: list[Event], offset: int = 0) -> dict[str, Any] | None:
    """/v1/completions' logprobs object (tokens, token_logprobs, top_logprobs, text_offset) for events."""
    entries = [lp for e in events for lp in (e.logprobs or [])]
    if not any(e.logprobs is not None for e in events):
        return None
    offsets, at = [], offset
    for lp in entries:
        offsets.append(at)
        at += len(lp["token"])
    return {
        "tokens": [lp["token"] for lp in entries],
        "token_logprobs": [lp["logprob"] for lp in entries],
        "top_logprobs": [lp.get("top") or {} for lp in entries],
        "text_offset": offsets,
    }


def chat_logprobs(events: list[Event]) -> dict[str, Any] | None:
    """Chat's logprobs object: {"content": [{token, logprob, bytes, top_logprobs: [...]}]}."""
    if not any(e.logprobs is not None for e in events):
        return None

    def item(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    content = []
    for e in events:
        for lp in e.logprobs or []:
            entry = item(lp["token"], lp["logprob"])
            entry["top_logprobs"] = [item(t, v) for t, v in (lp.get("top") or {}).items()]
            content.append(entry)
    return {"content": content}


def completion_chunk(rid: str, model: str, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}


def chat_chunk(rid: str, model: str, created: int, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }


def now() -> int:
    return int(time.time())
