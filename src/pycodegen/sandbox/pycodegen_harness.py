"""Runs one sample inside the sandboxed child and reports its verdict. Standard library only.

What a program cannot do to fake a pass (each has a test in tests/test_executor_adversarial.py):
- print "passed": the verdict travels on a dedicated pipe, not stdout, and carries a per-sample nonce;
- exit early (`sys.exit(0)`, `os._exit(0)`): no verdict message is sent, which is not a pass;
- return an always-equal object: an entry point's return value must be plain built-in data (exact types,
  recursively), or the sample is an error;
- patch the checker: the test code is executed after the program (so it defines `check`), builtins are
  restored and trace/profile hooks removed after the program and after every call into it, and the
  harness uses only references it bound before the program ran.
A program that deliberately inspects the interpreter (frames, gc, ctypes) to find the nonce is outside
this guard; the process, file-system and network isolation around it still hold.
"""

from __future__ import annotations

import builtins
import collections
import datetime
import decimal
import fractions
import json
import os
import sys
import threading

# Return types an entry point may use, captured by identity before any program runs: every class in
# `builtins` and the standard library's value types. A class the program defines (or a subclass of one
# of these) is not among them, so an always-equal object cannot stand in for an answer.
PLAIN_MAPPINGS = frozenset({dict, collections.Counter, collections.OrderedDict, collections.defaultdict})
PLAIN_SEQUENCES = frozenset({list, tuple, set, frozenset, collections.deque})
PLAIN_ATOMS = (
    frozenset(
        {v for v in vars(builtins).values() if isinstance(v, type)}
        | {type(None), type(Ellipsis), type(NotImplemented)}
        | {
            fractions.Fraction,
            decimal.Decimal,
            datetime.date,
            datetime.datetime,
            datetime.time,
            datetime.timedelta,
        }
    )
    - PLAIN_MAPPINGS
    - PLAIN_SEQUENCES
)


class UntrustedReturnValue(Exception):
    """An entry point returned something that is not plain built-in data."""


def run_sample(job: dict, verdict_fd: int) -> None:
    # One long function on purpose: every name the harness uses after the program starts must be a local
    # bound here, before the program runs, so that nothing the program rebinds (module globals, builtins)
    # is looked up again; splitting it into helpers would reintroduce those global lookups.
    # Every name used after the program starts is bound here, before it runs.
    nonce = job["nonce"]
    write, exit_now, dumps = os.write, os._exit, json.dumps
    typeof, exec_, compile_ = type, exec, compile
    settrace, setprofile, thread_settrace = sys.settrace, sys.setprofile, threading.settrace
    builtins_dict = builtins.__dict__
    builtins_snapshot = dict(builtins_dict)
    atoms, sequences, mappings = PLAIN_ATOMS, PLAIN_SEQUENCES, PLAIN_MAPPINGS
    untrusted = UntrustedReturnValue
    base_exception, assertion_error, memory_error = BaseException, AssertionError, MemoryError
    syntax_error = SyntaxError
    trusted_types: set = set()

    def report(outcome: str, detail: str = "") -> None:
        message = dumps({"nonce": nonce, "outcome": outcome, "detail": detail[:2000]}) + "\n"
        write(verdict_fd, message.encode())
        exit_now(0)

    def restore() -> None:
        settrace(None)
        setprofile(None)
        thread_settrace(None)
        builtins_dict.clear()
        builtins_dict.update(builtins_snapshot)

    def plain(value: object, depth: int = 0) -> bool:
        kind = typeof(value)
        if kind in atoms or kind in trusted_types:
            return True
        if depth > 100:
            return False
        if kind in sequences:
            for item in value:  # type: ignore[attr-defined]
                if not plain(item, depth + 1):
                    return False
            return True
        if kind in mappings:
            for key in value:  # type: ignore[attr-defined]
                if not plain(key, depth + 1) or not plain(value[key], depth + 1):  # type: ignore[index]
                    return False
            return True
        return False

    def guard(name: str, func: object) -> object:
        def guarded(*args: object, **kwargs: object) -> object:
            try:
                result = func(*args, **kwargs)  # type: ignore[operator]
            finally:
                restore()
            if not plain(result):
                raise untrusted(f"{name} returned a {typeof(result).__name__}, not plain built-in data")
            return result

        return guarded

    def describe(exc: BaseException) -> str:
        return f"{typeof(exc).__name__}: {exc}"[:2000]

    try:
        program = compile_(job["program"], "<program>", "exec")
    except (syntax_error, ValueError, memory_error, RecursionError) as exc:
        report("syntax error", describe(exc))
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        try:
            exec_(program, namespace)
        finally:
            restore()
        before_tests = {id(v) for v in namespace.values()}
        for name in job.get("entry_points", []):
            if callable(namespace.get(name)):
                namespace[name] = guard(name, namespace[name])
        tests = compile_(job["test"], "<tests>", "exec")
        exec_(tests, namespace)
        restore()
        # Classes the test code defines (e.g. MBPP's setup code) are trusted return types.
        trusted_types.update(v for v in namespace.values() if typeof(v) is type and id(v) not in before_tests)
        check = job.get("check")
        if check:
            entry = job["entry_point"]
            if entry not in namespace:
                report("error", f"NameError: the program does not define {entry!r}")
            namespace[check](namespace[entry])
            restore()
    except assertion_error as exc:
        report("failed", describe(exc))
    except memory_error as exc:
        report("out of memory", describe(exc))
    except base_exception as exc:
        report("error", describe(exc))
    report("passed")
