"""The two sides of one sample: the sandboxed program server and the trusted checker. Standard library only.

The fork server forks two processes per sample, as different unprivileged uids:
- `serve_program` (untrusted): runs the program (then the problem's setup code, e.g. MBPP's tree
  building), then answers calls on fd 3 (in) / fd 4 (out). It never sees the tests or the verdict.
- `run_checker` (trusted, never executes program code): defines the problem's prompt helpers itself
  (`prelude`), runs the test code with every name the tests reach in the program replaced by an RPC stub,
  and writes the verdict on its own pipe, which the program never holds.

Nothing the program does inside its interpreter (patching modules or builtins, audit hooks, frame or gc
introspection, metaclasses, lazy iterators) reaches the checker: what crosses is plain data in the
strict codec of `pycodegen_wire` (decoded into fresh built-in objects), an exception's built-in type name
and message, or an opaque handle the checker can only pass back as an argument.
"""

from __future__ import annotations

import builtins
import json
import marshal
import os
import struct

from pycodegen_wire import TYPES, WireError, decode, encode, read_frame, write_frame

IN_FD, OUT_FD = 3, 4
# Modules a test may use through a name the program imported (`math.isclose` with `import math` only in
# the program): the checker imports its own copy instead of calling into the program's.
SHARED_MODULES = frozenset(
    "math cmath re collections itertools functools heapq string operator statistics fractions decimal "
    "bisect".split()
)
DETAIL = 2000
MUTABLE = (list, dict, set, bytearray)
SET_CODES = (b"<", b">", b"\xbc", b"\xbe")  # marshal's set and frozenset type codes (with FLAG_REF)


# ----------------------------------------------------------------------------------------------------
# The program side (untrusted process).


def snapshot(value: object) -> bytes | None:
    """A cheap fingerprint of an argument's state (None when it holds more than built-ins)."""
    try:
        return marshal.dumps(value)
    except (ValueError, RecursionError):
        return None


def serve_program(job: dict) -> None:
    """Run the program and serve calls until the checker closes the channel. Never returns."""
    registry: dict[int, object] = {}
    ids: dict[int, int] = {}

    def handle_of(obj: object) -> int:
        key = id(obj)
        if key not in ids:
            ids[key] = len(registry) + 1
            registry[ids[key]] = obj
        return ids[key]

    def lookup(ident: int) -> object:
        if ident not in registry:
            raise WireError("unknown handle")
        return registry[ident]

    def send(message: tuple) -> None:
        try:
            payload = encode(message, handle_of)
        except (WireError, RecursionError, MemoryError) as exc:
            payload = encode(("raised", "TypeError", f"the program's answer cannot cross the sandbox: {exc}"))
        write_frame(OUT_FD, payload)

    def text(exc: BaseException) -> str:
        try:
            return str(exc)[:DETAIL]
        except BaseException:
            return ""

    try:
        code = compile(job["program"], "<program>", "exec")
    except BaseException as exc:
        send(("raised", type(exc).__name__, text(exc), "syntax"))
        os._exit(0)
    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(code, namespace)
        if job.get("setup"):
            exec(compile(job["setup"], "<setup>", "exec"), namespace)
    except BaseException as exc:
        send(("raised", type(exc).__name__, text(exc), "program"))
        os._exit(0)
    names: dict = {}
    for name in job.get("names", []):
        if name not in namespace:
            names[name] = ("missing",)
            continue
        value = namespace[name]
        if type(value) is type(os) and getattr(value, "__name__", None) in SHARED_MODULES:
            names[name] = ("module", value.__name__)
            continue
        if not callable(value):
            try:
                encode(value)
                names[name] = ("data", value)
                continue
            except (WireError, RecursionError):
                pass
        names[name] = ("function" if callable(value) else "object", value, type(value).__name__)
    send(("ready", names))
    while True:
        try:
            frame = read_frame(IN_FD)
        except EOFError:
            os._exit(0)
        target = lookup(struct.unpack_from(">I", frame, 1)[0])
        # The checker is trusted: its requests use marshal (C speed) when they hold built-ins only.
        if frame[:1] == b"M":
            args, kwargs = marshal.loads(frame[5:])
        else:
            args, kwargs = decode(frame[5:], lookup)  # type: ignore[misc]
        mutable = {i: a for i, a in enumerate(args) if type(a) in MUTABLE}
        mutable.update({k: a for k, a in kwargs.items() if type(a) in MUTABLE})
        before = {k: snapshot(a) for k, a in mutable.items()}
        try:
            result = target(*args, **kwargs)  # type: ignore[operator]
        except BaseException as exc:
            send(("raised", type(exc).__name__, text(exc)))
            continue
        # In-place mutation: the new state of every top-level mutable argument the call changed goes back.
        copies = {k: a for k, a in mutable.items() if before[k] is None or snapshot(a) != before[k]}
        send(("return", result, copies, type(result).__name__))


# ----------------------------------------------------------------------------------------------------
# The checker side (trusted process: runs only the problem's prelude and tests).


class ProgramGone(BaseException):
    """The program's process closed the channel (it exited or was killed) during a call."""


class BadMessage(BaseException):
    """The program sent something the codec refuses (malformed, oversized, unexpected)."""


class ProgramError(Exception):
    """An exception of the program's that is not a built-in type (or not one a test may see)."""


REFUSED = frozenset({SystemExit, KeyboardInterrupt, GeneratorExit})


def rebuild(name: object, message: object) -> BaseException:
    """The checker's own exception for a program exception's type name and message."""
    name, message = str(name)[:100], str(message)[:DETAIL]
    kind = vars(builtins).get(name)
    if isinstance(kind, type) and issubclass(kind, BaseException) and kind not in REFUSED:
        try:
            return kind(message)
        except Exception:
            pass
    return ProgramError(f"{name}: {message}" if message else name)


class Remote:
    """An object that lives in the program's process. It supports nothing but being passed back to a
    proxied call (or, for the program's functions and classes, being called)."""

    __slots__ = ("_channel", "_kind", "_rid")

    def __init__(self, rid: int, kind: str, channel: Channel) -> None:
        object.__setattr__(self, "_rid", rid)
        object.__setattr__(self, "_kind", kind[:100])
        object.__setattr__(self, "_channel", channel)

    def __repr__(self) -> str:
        return f"<the program's {self._kind}>"

    def _refuse(self, *args: object, **kwargs: object) -> object:
        raise TypeError(f"the program returned a {object.__getattribute__(self, '_kind')}, not plain data")

    def __getattr__(self, name: str) -> object:
        self._refuse()
        return None

    def __call__(self, *args: object, **kwargs: object) -> object:
        self._refuse()
        return None


for _dunder in (
    "__bool__ __eq__ __ne__ __lt__ __le__ __gt__ __ge__ __hash__ __iter__ __next__ __len__ __contains__ "
    "__getitem__ __setitem__ __delitem__ __str__ __format__ __bytes__ __int__ __float__ __complex__ "
    "__index__ __round__ __abs__ __neg__ __pos__ __invert__ __add__ __radd__ __sub__ __rsub__ __mul__ "
    "__rmul__ __truediv__ __rtruediv__ __floordiv__ __rfloordiv__ __mod__ __rmod__ __pow__ __rpow__ "
    "__and__ __rand__ __or__ __ror__ __xor__ __rxor__ __lshift__ __rlshift__ __rshift__ __rrshift__ "
    "__matmul__ __rmatmul__ __divmod__ __rdivmod__ __reversed__ __enter__ __exit__ __setattr__ "
    "__delattr__ __iadd__ __isub__ __imul__"
).split():
    setattr(Remote, _dunder, Remote._refuse)


class RemoteFunction(Remote):
    """A function or class of the program: calling it is a call into the program's process."""

    __slots__ = ()

    def __call__(self, *args: object, **kwargs: object) -> object:
        return object.__getattribute__(self, "_channel").call(self, args, kwargs)


class Channel:
    """The checker's end of the pipe pair to the program."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd

    def receive(self) -> tuple:
        try:
            message = decode(read_frame(self.rfd), self.handle)
        except EOFError as exc:
            raise ProgramGone("the program's process ended during the tests") from exc
        except (WireError, MemoryError, RecursionError) as exc:
            raise BadMessage(f"malformed message from the program: {exc}") from exc
        if type(message) is not tuple or not message or type(message[0]) is not str:
            raise BadMessage("malformed message from the program: not a tagged tuple")
        return message

    def handle(self, rid: int) -> Remote:
        return Remote(rid, "object", self)

    def call(self, target: Remote, args: tuple, kwargs: dict) -> object:
        def outgoing(obj: object) -> int | None:
            if isinstance(obj, Remote):
                return object.__getattribute__(obj, "_rid")
            return None

        head = b"M" + struct.pack(">I", object.__getattribute__(target, "_rid"))
        try:  # bytearrays keep their type only in our codec (marshal writes them as bytes)
            if any(type(a) is bytearray for a in (*args, *kwargs.values())):
                raise ValueError("bytearray")
            payload = head + marshal.dumps((args, kwargs))
            if any(code in payload for code in SET_CODES):  # maybe a set: our codec keeps its order
                raise ValueError("set")
        except ValueError:
            try:
                payload = b"W" + head[1:] + encode((args, kwargs), outgoing)
            except WireError as exc:
                raise TypeError(f"cannot pass this argument to the program: {exc}") from None
        try:
            write_frame(self.wfd, payload)
        except OSError as exc:
            raise ProgramGone("the program's process ended during the tests") from exc
        reply = self.receive()
        if reply[0] == "raised" and len(reply) == 3:
            raise rebuild(reply[1], reply[2])
        if reply[0] != "return" or len(reply) != 4 or type(reply[2]) is not dict:
            raise BadMessage("malformed message from the program: unexpected reply")
        result, copies, kind = reply[1], reply[2], str(reply[3])
        for key, state in copies.items():
            original = args[key] if type(key) is int and 0 <= key < len(args) else kwargs.get(key)  # type: ignore[arg-type]
            if type(original) is not type(state):
                raise BadMessage("malformed message from the program: an argument changed type")
            if type(state) in (list, bytearray):
                original[:] = state  # type: ignore[index]
            else:
                original.clear()  # type: ignore[union-attr]
                original.update(state)  # type: ignore[union-attr]
        if isinstance(result, Remote):
            object.__setattr__(result, "_kind", kind[:100])
        return result


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:DETAIL]


def run_checker(job: dict, code: dict, verdict_fd: int) -> None:
    """Decide the verdict and write it (one JSON line) on `verdict_fd`. Never returns."""
    write_verdict(verdict_fd, *decide(job, code))
    os._exit(0)


def write_verdict(verdict_fd: int, outcome: str, detail: str, gone: bool) -> None:
    # ensure_ascii=False: 2,000 astral characters stay 8 KB of UTF-8 (escaped they would be 24 KB, past
    # what the job server reads of a verdict).
    detail = detail[:DETAIL].encode("utf-8", "backslashreplace").decode("utf-8")  # no lone surrogate
    line = json.dumps({"outcome": outcome, "detail": detail, "gone": gone}, ensure_ascii=False)
    line += "\n"
    os.write(verdict_fd, line.encode())


def decide(job: dict, code: dict) -> tuple[str, str, bool]:
    """(outcome, detail, whether the program's process ended during the tests).

    `code` holds the prelude and test code, compiled by the fork server (trusted, cached per problem).
    """
    channel = Channel(IN_FD, OUT_FD)

    namespace: dict = {"__name__": "__main__", "__builtins__": builtins}
    try:
        if code.get("prelude") is not None:
            exec(code["prelude"], namespace)
    except BaseException as exc:
        return ("error", f"the problem's prompt does not run: {describe(exc)}", False)
    try:
        ready = channel.receive()
        if ready[0] == "raised" and len(ready) == 4:
            if ready[3] == "syntax":
                return ("syntax error", f"{str(ready[1])[:100]}: {ready[2]!s}", False)
            raise rebuild(ready[1], ready[2])
        if ready[0] != "ready" or len(ready) != 2 or type(ready[1]) is not dict:
            raise BadMessage("malformed message from the program: expected its names")
        wanted = set(job.get("names", []))
        for name, info in ready[1].items():
            if type(name) is not str or type(info) is not tuple or not info:
                raise BadMessage("malformed message from the program: bad name entry")
            if name not in wanted:  # only the names the tests reach in the program: never `abs` or `poly`
                raise BadMessage(f"malformed message from the program: it announced {name[:100]!r}")
            if info[0] == "missing":
                namespace.pop(name, None)
            elif info[0] == "data" and len(info) == 2:
                namespace[name] = info[1]
            elif info[0] == "module" and len(info) == 2 and info[1] in SHARED_MODULES:
                namespace[name] = __import__(info[1])
            elif info[0] in ("function", "object") and len(info) == 3 and any(info[1] is t for t in TYPES):
                namespace[name] = info[1]  # the program bound the name to a built-in type: ours
            elif info[0] in ("function", "object") and len(info) == 3 and isinstance(info[1], Remote):
                rid = object.__getattribute__(info[1], "_rid")
                kind = RemoteFunction if info[0] == "function" else Remote
                namespace[name] = kind(rid, str(info[2]), channel)
            else:
                raise BadMessage("malformed message from the program: bad name entry")
        exec(code["test"], namespace)
        check = job.get("check")
        if check:
            entry = job["entry_point"]
            if entry not in namespace:
                return ("error", f"NameError: the program does not define {entry!r}", False)
            namespace[check](namespace[entry])
    except AssertionError as exc:
        return ("failed", describe(exc), False)
    except MemoryError as exc:
        return ("out of memory", describe(exc), False)
    except ProgramGone as exc:
        return ("error", str(exc), True)
    except BaseException as exc:
        return ("error", describe(exc), False)
    return ("passed", "", False)


def warm_up(program: str, test: str) -> None:
    """Exercise the codec and both sides' code paths once (in the fork server, before any fork)."""
    message = ("call", 1, ([1, 2.0, "x", (None, True)], {1: {2}}, frozenset({b"y"}), 3j, TYPES[0]), {})
    assert decode(encode(message)) == message
    namespace: dict = {"__name__": "__warm_up__"}
    exec(compile(program, "<warm-up>", "exec"), namespace)
    exec(compile(test, "<warm-up-tests>", "exec"), namespace)
