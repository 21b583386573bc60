"""`best_of` on /v1/completions: which n of the best_of samples a request gets back. `select: "logprob"` is
OpenAI's rule (the highest mean token log-probability); `select: "examples"` is pycodegen's (samples that
pass the prompt's docstring `>>>` examples in the sandbox first, then by mean log-probability: the rule of
`generate --best-of N --select examples`, `metrics.select_index`).

The sandbox is the server's own, opened on the first request that needs it, one judging at a time, and
closed with the server; it runs on a worker thread, never on the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pycodegen.errors import PycodegenError
from pycodegen.generate.select import select_by_examples
from pycodegen.metrics import select_index
from pycodegen.sandbox.executor import Executor
from pycodegen.serve.protocol import RequestError

JUDGE_WORKERS = 2  # the server decodes on the same cores: judging takes at most two of them
SAMPLE_TIMEOUT = 10.0  # seconds per sample, as `generate --best-of`; the request's own limit also holds


@dataclass
class Ranking:
    """The samples' order, best first, and what the examples said of each (None: not judged)."""

    order: list[int]
    passed_examples: list[bool | None]
    examples: int  # how many examples the prompt has (0: none usable, so ranked by log-probability)


def rank(candidates: list[tuple[bool | None, float | None]]) -> list[int]:
    """Every sample, best first, by `select_index` applied again to what is left (so the first is
    exactly the sample `generate --best-of` would pick).

    >>> rank([(False, -0.1), (True, -0.9), (True, -0.5), (None, -0.3)])
    [2, 1, 0, 3]
    """
    left = list(range(len(candidates)))
    order = []
    while left:
        best = left[select_index([candidates[i] for i in left])]
        order.append(best)
        left.remove(best)
    return order


class Judge:
    """The server's sandbox for `select: "examples"`. `allowed` is the operator's choice
    (`serve --select-examples`); without it, or where the sandbox cannot run, such requests get a 400
    that says why, never a silent fall-back to another rule."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self._executor: Executor | None = None
        self._refusal: str | None = None
        self._lock = threading.Lock()  # one judging at a time: the executor's pool is not shared
        self._closed = False

    def open(self) -> None:
        """Start the sandbox if it is not running (blocking: call it off the event loop); a RequestError
        (400) when this server will not or cannot judge samples."""
        if not self.allowed:
            raise RequestError(
                400,
                'this server does not run samples: select "examples" needs it started with '
                '--select-examples; use select "logprob"',
                param="select",
                code="select_examples_off",
            )
        with self._lock:
            if self._executor is None and self._refusal is None and not self._closed:
                try:
                    executor = Executor(workers=JUDGE_WORKERS, timeout=SAMPLE_TIMEOUT)
                    self._executor = executor.__enter__()
                except PycodegenError as exc:
                    self._refusal = str(exc)
        if self._refusal is not None:
            raise RequestError(
                400,
                f'select "examples" is unavailable on this server: {self._refusal}',
                param="select",
                code="sandbox_unavailable",
            )

    def rank(
        self, prompt: str, samples: list[tuple[str, float | None]], stop: threading.Event
    ) -> Ranking | None:
        """Rank one prompt's samples by its examples (blocking; None when `stop` was set meanwhile)."""
        self.open()
        with self._lock:
            if self._executor is None or stop.is_set():  # closed by shutdown, or nobody is waiting
                return None
            # /v1/completions continues the prompt as it is: the samples are raw continuations.
            selection = select_by_examples([prompt], [samples], "raw", self._executor, stop)[0]
        if stop.is_set():
            return None
        candidates = [(flag, lp) for flag, (_, lp) in zip(selection.passed_examples, samples, strict=True)]
        return Ranking(rank(candidates), selection.passed_examples, selection.examples)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._executor is not None:
                self._executor.close()
                self._executor = None


def by_logprob(samples: list[tuple[str, float | None]]) -> Ranking:
    """OpenAI's best_of: the highest mean token log-probability first."""
    return Ranking(rank([(None, lp) for _, lp in samples]), [None] * len(samples), 0)
