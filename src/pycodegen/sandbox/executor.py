"""The sandboxed executor: runs every sample in the sandbox and turns the fork server's report into a verdict.

Each worker is a fork server (`sandbox/sandbox_server.py`) started in new PID, network, mount, IPC and
UTS namespaces (`unshare`), inside its own memory, pids and cpu cgroups where the machine allows, in a
minimal root it builds once (the interpreter's standard library, a few devices, nothing of the host).
Per sample it forks the program (untrusted, sample uid, fresh /tmp, IPC namespace and keyring, seccomp)
and a checker (trusted, another uid) that runs the tests and calls the program's functions through a
plain-data RPC (`pycodegen_harness`, `pycodegen_wire`): the verdict is decided by a process that never
runs program code. The fork server enforces the wall-clock timeout and kills whatever the sample left
behind; this process is the backstop: a worker that does not answer in time + 2 s, says something it
cannot parse, or saw an out-of-memory kill is stopped (with its namespace and cgroups) and restarted.
No sample can end the run: every failure while running one job becomes that job's verdict.
"""

from __future__ import annotations

import ast
import builtins
import functools
import itertools
import json
import os
import queue
import select
import shutil
import signal
import subprocess
import symtable
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pycodegen.errors import PycodegenError

SANDBOX_DIR = Path(__file__).resolve().parent
OUTCOMES = ("passed", "failed", "error", "syntax error", "timeout", "out of memory", "killed")
GRACE_SECONDS = 2.0
# The fork servers (and so the samples, even through /proc/1/environ) see none of the caller's variables.
SERVER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
DETAIL_OUTPUT = 2000


@dataclass
class Limits:
    """Per-sample resource limits."""

    memory_bytes: int = 1 << 30  # address space per process, and the cgroup's total
    file_bytes: int = 16 << 20  # largest file a sample may write
    processes: int = 32  # processes a sample may run at once
    open_files: int = 256
    tmpfs_bytes: int = 256 << 20  # the private /tmp (the working directory lives there)


@dataclass
class Job:
    """One sample to execute: a program, then test code, then optionally `check(entry_point)`."""

    task_id: str
    sample_index: int
    program: str
    test: str
    entry_point: str | None = None
    check: str | None = None  # HumanEval: "check", called with the entry point
    entry_points: list[str] = field(default_factory=list)  # kept for callers; every call is checked now
    prelude: str = ""  # trusted code the checker runs before the tests (HumanEval: the prompt)
    setup: str = ""  # trusted code run in the program's process after it (MBPP: building test inputs)


@dataclass
class Verdict:
    """The outcome of one sample, decided by the parent."""

    task_id: str
    sample_index: int
    outcome: str
    passed: bool
    detail: str = ""
    elapsed: float = 0.0
    stdout: str = ""
    stderr: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _unshare_works(extra: list[str]) -> bool:
    if shutil.which("unshare") is None:
        return False
    cmd = ["unshare", *extra, "--pid", "--net", "--mount", "--ipc", "--fork", "--mount-proc", "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def detect_isolation() -> dict[str, Any]:
    """What this machine allows: namespaces, a separate uid, cgroups (v1 memory and pids)."""
    root = os.geteuid() == 0
    info: dict[str, Any] = {"user": "root" if root else "unprivileged"}
    if root and _unshare_works([]):
        info.update(
            namespaces=["pid", "net", "mount", "ipc", "uts"],
            network="network namespace (no interfaces)",
            unshare=[],
            sample_uid=True,
        )
    elif _unshare_works(["--map-root-user"]):
        info.update(
            namespaces=["user", "pid", "net", "mount", "ipc", "uts"],
            network="network namespace (no interfaces)",
            unshare=["--map-root-user"],
            sample_uid=False,
            warning="no separate uid: files your user can write are writable by samples",
        )
    else:
        info.update(
            namespaces=[],
            network="sockets disabled in the sample process",
            unshare=None,
            sample_uid=False,
            warning="no namespaces: process isolation by process group only",
        )
    cg = Path("/sys/fs/cgroup")
    info["cgroup"] = (
        "v1 memory+pids" + ("+cpu" if os.access(cg / "cpu" / "cpu.shares", os.W_OK) else "")
        if root and os.access(cg / "memory", os.W_OK) and os.access(cg / "pids", os.W_OK)
        else None
    )
    return info


CONTROLLERS = ("memory", "pids", "cpu")
UNSAFE_ENV = "PYCODEGEN_UNSAFE_SANDBOX"
_EXECUTOR_TAGS = itertools.count()
UID_BASE = 1_900_000_000


def remove_stale_cgroups() -> None:
    """Remove the (empty) cgroups of pycodegen runs that were killed before they could clean up."""
    for controller in CONTROLLERS:
        for path in Path("/sys/fs/cgroup", controller).glob("pycodegen-*-*"):
            owner = path.name.split("-")[1]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                try:
                    path.rmdir()
                except OSError:
                    pass  # still has processes: a sample of that run is finishing


def _scope_names(code: str) -> tuple[set[str], set[str], set[str]]:
    """(module-level names referenced anywhere, names the module binds, functions that are only stubs)."""
    table = symtable.symtable(code, "<code>", "exec")
    referenced: set[str] = set()
    bound: set[str] = set()
    stack = [table]
    while stack:
        scope = stack.pop()
        for sym in scope.get_symbols():
            name = sym.get_name()
            if scope.get_type() == "module":
                if sym.is_assigned() or sym.is_imported() or sym.is_namespace():
                    bound.add(name)
                if sym.is_referenced():
                    referenced.add(name)
            elif sym.is_global() and sym.is_referenced():
                referenced.add(name)
            if sym.is_declared_global() and sym.is_assigned():
                bound.add(name)
        stack.extend(scope.get_children())
    stubs = set()
    for node in ast.parse(code).body:  # `def f(): """doc"""` (HumanEval's entry point in its prompt)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and all(
            isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
            for s in node.body
        ):
            stubs.add(node.name)
    return referenced, bound, stubs


@functools.lru_cache(maxsize=4096)
def remote_names(
    prelude: str, test: str, entry_point: str | None, check: str | None
) -> tuple[str, list[str]]:
    """(the prelude to run, the names the tests reach in the program).

    A name the test code uses but neither it, the prelude (except its stub functions) nor the builtins
    define is the program's: the checker binds it to what the program's process reports for it (plain
    data, a callable proxy, an inert handle). A prelude that does not parse is not run (its names then
    come from the program too).
    """
    try:
        _, prelude_bound, stubs = _scope_names(prelude) if prelude else (set(), set(), set())
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        prelude, prelude_bound, stubs = "", set(), set()
    try:
        referenced, test_bound, _ = _scope_names(test)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return prelude, []  # the fork server reports that the tests do not compile
    names = referenced - test_bound - (prelude_bound - stubs) - set(vars(builtins))
    if entry_point:  # even one named like a builtin (MBPP 126 defines `sum`); if missing, the builtin
        names.add(entry_point)
    return prelude, sorted(names)


def signal_name(number: int) -> str:
    """SIGKILL, or 'signal 40' for a number the signal module has no name for."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Worker:
    """One fork server and the thread-side protocol to talk to it."""

    def __init__(
        self, index: int, isolation: dict[str, Any], limits: Limits, closed: threading.Event
    ) -> None:
        self.index = index
        self.isolation = isolation
        self.limits = limits
        self.closed = closed
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.cgroups: list[Path] = []
        self.hello: dict[str, Any] = {}
        self.restarts = 0
        self.tag = next(_EXECUTOR_TAGS)  # unique per worker in this process (two executors at once)
        base = UID_BASE + (os.getpid() % 1_000_000) * 128 + 2 * (self.tag % 64)
        self.uid = base if isolation["sample_uid"] else None
        self.checker_uid = base + 1 if isolation["sample_uid"] else None

    def _make_cgroups(self) -> list[Path]:
        if not self.isolation.get("cgroup"):
            return []
        name = f"pycodegen-{os.getpid()}-{self.tag}-{self.index}"  # `tag`: two executors in one process
        made = []
        for controller in CONTROLLERS:
            path = Path("/sys/fs/cgroup", controller, name)
            if controller == "cpu" and not os.access(path.parent, os.W_OK):
                continue
            path.mkdir(exist_ok=True)
            made.append(path)
        memory, pids = made[0], made[1]
        # The fork server itself is in the group too; give it room on top of the sample's budget.
        (memory / "memory.limit_in_bytes").write_text(str(self.limits.memory_bytes + (96 << 20)))
        (pids / "pids.max").write_text(str(self.limits.processes + 8))
        if len(made) == 3:
            # Equal shares: under contention each worker's group gets its part of the machine, however
            # many processes a sample starts. No CFS quota: it throttled the program and checker of one
            # sample, which run in turn but in bursts on both cores, and halved throughput.
            (made[2] / "cpu.shares").write_text("1024")
        return made

    def start(self) -> None:
        with self.lock:
            if self.closed.is_set():
                raise PycodegenError("the executor is closed")
            self._start()

    def _start(self) -> None:
        self.cgroups = self._make_cgroups()
        cfg = {
            "harness_dir": str(SANDBOX_DIR),
            "mount_ns": "mount" in self.isolation["namespaces"],
            "net_ns": "net" in self.isolation["namespaces"],
            "uid": self.uid,
            "gid": self.uid,
            "checker_uid": self.checker_uid,
            "tmpfs_bytes": self.limits.tmpfs_bytes,
            "memory_cgroup": str(self.cgroups[0]) if self.cgroups else None,
        }
        server = [sys.executable, "-I", str(SANDBOX_DIR / "sandbox_server.py"), json.dumps(cfg)]
        if self.isolation["unshare"] is not None:
            server = [
                "unshare",
                *self.isolation["unshare"],
                "--pid",
                "--net",
                "--mount",
                "--ipc",
                "--uts",
                "--fork",
                "--kill-child",
                "--mount-proc",
                *server,
            ]
        # Join the cgroups before unshare forks, so the fork server and every sample inherit them.
        join = "".join(f'echo $$ > "{cg}/cgroup.procs"; ' for cg in self.cgroups)
        self.proc = subprocess.Popen(
            ["sh", "-c", join + 'exec "$@"', "sh", *server],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=SERVER_ENV,
        )
        self.buffer = b""
        hello = _parse(self._read_line(30.0))
        if hello is None or hello.get("ready") is not True:
            self._stop()
            raise PycodegenError("the sandbox fork server did not start (is `unshare` allowed here?)")
        self.hello = hello

    def _read_line(self, timeout: float) -> bytes | None:
        proc = self.proc
        if proc is None or proc.stdout is None:
            return None
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def stop(self) -> None:
        with self.lock:
            self._stop()

    def _stop(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                if stream is not None:
                    stream.close()
            self.proc = None
        for cg in self.cgroups:
            for _ in range(100):  # rmdir fails while the killed processes are still leaving
                try:
                    cg.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
        self.cgroups = []

    def run(self, job: Job, timeout: float) -> Verdict:
        """The job's verdict; never raises (a failure of the sandbox is this job's `error`)."""
        started = time.monotonic()
        try:
            verdict, restart = self._run(job, timeout)
        except Exception as exc:
            verdict, restart = Verdict(job.task_id, job.sample_index, "error", False, f"sandbox: {exc}"), True
        if restart:  # the whole namespace goes with it; a fresh server starts on the next job
            self.stop()
            self.restarts += 1
        verdict.elapsed = verdict.elapsed or round(time.monotonic() - started, 4)
        return verdict

    def _run(self, job: Job, timeout: float) -> tuple[Verdict, bool]:
        if self.proc is None:
            self.start()
        proc = self.proc
        assert proc is not None and proc.stdin is not None
        prelude, names = remote_names(job.prelude, job.test, job.entry_point, job.check)
        request = {
            "id": f"{job.task_id}#{job.sample_index}",
            "timeout": timeout,
            "program": job.program,
            "setup": job.setup,
            "prelude": prelude,
            "test": job.test,
            "entry_point": job.entry_point,
            "check": job.check,
            "names": names,
            "rlimits": self._rlimits(timeout),
            "checker_rlimits": {
                "RLIMIT_AS": self.limits.memory_bytes,
                "RLIMIT_CPU": int(timeout) + 1,
                "RLIMIT_FSIZE": 0,
                "RLIMIT_NOFILE": 64,
                "RLIMIT_CORE": 0,
            },
        }
        started = time.monotonic()
        try:
            proc.stdin.write((json.dumps(request) + "\n").encode())
            proc.stdin.flush()
            line = self._read_line(timeout + GRACE_SECONDS)
        except (BrokenPipeError, OSError, ValueError):
            line = None
        if line is None:
            overran = time.monotonic() - started >= timeout
            verdict = Verdict(
                job.task_id,
                job.sample_index,
                "timeout" if overran else "killed",
                False,
                "the sandbox did not answer in time and was restarted"
                if overran
                else "the sandbox died during the sample and was restarted",
                round(time.monotonic() - started, 4),
            )
            return verdict, True
        result = _parse(line)
        if result is None or result.get("id") != request["id"]:
            bad = Verdict(job.task_id, job.sample_index, "error", False, "sandbox: unreadable report")
            return bad, True
        verdict = classify(job, result)
        # After any OOM, or a failure inside the fork server's own handling of a job (its sweep and
        # unmount may not have run): a fresh worker, fresh cgroups, nothing carried to the next sample.
        return verdict, bool(result.get("oom")) or "harness_error" in result

    def _rlimits(self, timeout: float) -> dict[str, int]:
        limits = {
            "RLIMIT_AS": self.limits.memory_bytes,
            "RLIMIT_CPU": int(timeout) + 1,
            "RLIMIT_FSIZE": self.limits.file_bytes,
            "RLIMIT_NOFILE": self.limits.open_files,
            "RLIMIT_CORE": 0,
        }
        if self.uid is not None:  # per-uid count: meaningful only for the sample's own uid
            limits["RLIMIT_NPROC"] = self.limits.processes
        return limits


def _parse(line: bytes | None) -> dict[str, Any] | None:
    """A JSON object from the fork server, or None for anything else (never raises)."""
    if line is None:
        return None
    try:
        value = json.loads(line)
    except (ValueError, RecursionError, MemoryError):
        return None
    return value if isinstance(value, dict) else None


def clean(text: str) -> str:
    """Text any writer can encode: lone surrogates (from a program's messages) become U+FFFD."""
    return text.encode("utf-8", "replace").decode("utf-8") if not text.isascii() else text


def classify(job: Job, result: dict[str, Any]) -> Verdict:
    """Turn the fork server's report into a verdict: the checker's, refined by how the program ended."""

    def text(key: str) -> str:
        value = result.get(key, "")
        return clean(value) if isinstance(value, str) else ""

    elapsed = result.get("elapsed", 0.0)

    def verdict(outcome: str, detail: str) -> Verdict:
        return Verdict(
            job.task_id,
            job.sample_index,
            outcome,
            outcome == "passed",
            clean(detail[:DETAIL_OUTPUT]),
            elapsed if isinstance(elapsed, int | float) else 0.0,
            text("stdout")[:DETAIL_OUTPUT],
            text("stderr")[-DETAIL_OUTPUT:],
        )

    def exit_status(key: str) -> int | None:
        value = result.get(key)
        return (
            value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 16 else None
        )

    if "harness_error" in result:
        return verdict("error", f"sandbox: {result['harness_error']}")
    found = result.get("verdict")
    status, checker = exit_status("status"), exit_status("checker_status")
    oom = bool(result.get("oom"))
    passed = isinstance(found, dict) and found.get("outcome") == "passed"
    if oom and not passed:  # whatever else happened, the memory cgroup killed a process of the sample
        return verdict("out of memory", "killed by the memory cgroup")
    if result.get("timed_out"):
        return verdict("timeout", f"wall-clock limit reached after {elapsed} s")
    checked = isinstance(found, dict) and checker is not None and os.WIFEXITED(checker)
    if checked and os.WEXITSTATUS(checker) == 0 and found.get("outcome") in OUTCOMES:  # type: ignore[union-attr]
        outcome, detail = str(found["outcome"]), str(found.get("detail", ""))  # type: ignore[index]
        if outcome == "passed" or not found.get("gone"):  # type: ignore[union-attr]
            return verdict(outcome, detail)
        # The program's process ended during the tests: how it ended is the verdict.
        if oom:
            return verdict("out of memory", "killed by the memory cgroup")
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig == signal.SIGXCPU:
                return verdict("timeout", "CPU-time limit reached")
            return verdict("killed", f"killed by {signal_name(sig)}")
        if status is not None and os.WIFEXITED(status):
            return verdict(
                "error", f"the program exited with status {os.WEXITSTATUS(status)} during the tests"
            )
        return verdict("error", detail)
    if oom:
        return verdict("out of memory", "killed by the memory cgroup")
    if checker is not None and os.WIFSIGNALED(checker):
        sig = os.WTERMSIG(checker)
        if sig == signal.SIGXCPU:
            return verdict("timeout", "CPU-time limit reached (tests)")
        return verdict("killed", f"the checker was killed by {signal_name(sig)}")
    return verdict("error", "the checker gave no verdict")


class Executor:
    """A pool of sandboxed fork servers; `map` yields verdicts as samples finish (in any order)."""

    def __init__(self, workers: int = 0, timeout: float = 10.0, limits: Limits | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout = timeout
        self.limits = limits or Limits()
        self.isolation = detect_isolation()
        if not self.isolation["sample_uid"] and os.environ.get(UNSAFE_ENV) != "1":
            # Without a uid of its own, a program shares the checker's uid and could reach its file
            # descriptors through /proc, and only root can build the minimal root: nothing above holds.
            raise PycodegenError(
                "the sandbox needs root (a separate uid for each sample and for the checker, and the "
                f"minimal root file system); run as root, e.g. in a container, or set {UNSAFE_ENV}=1 to "
                "judge trusted samples with weaker isolation"
            )
        self._pool: list[Worker] = []
        self._closed = threading.Event()

    def __enter__(self) -> Executor:
        if self.isolation.get("cgroup"):
            remove_stale_cgroups()
        self._closed.clear()
        self._pool = [Worker(i, self.isolation, self.limits, self._closed) for i in range(self.workers)]
        errors: list[BaseException] = []

        def start(worker: Worker) -> None:
            try:
                worker.start()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(w,)) for w in self._pool]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors or any(w.proc is None for w in self._pool):
            self.close()
            raise PycodegenError("the sandbox fork servers did not start")
        self.isolation = {**self.isolation, **{k: v for k, v in self._pool[0].hello.items() if k != "ready"}}
        self.isolation["judge"] = (
            "a checker process that never runs program code decides the verdict; the program answers its "
            "calls over a plain-data codec (pycodegen_wire)"
            + (" as another uid" if self.isolation.get("sample_uid") else "")
        )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every fork server and remove every cgroup; no worker starts a server after this."""
        self._closed.set()
        for w in self._pool:
            w.stop()
        self._pool = []

    def describe(self) -> dict[str, Any]:
        """The executor's limits and isolation, for the run card."""
        return {
            "workers": self.workers,
            "timeout_s": self.timeout,
            "limits": asdict(self.limits),
            "isolation": self.isolation,
        }

    def map(self, jobs: Iterable[Job]) -> Iterator[Verdict]:
        """Run jobs on the pool; yields each verdict as soon as it is decided."""
        if self._closed.is_set() or not self._pool:
            raise PycodegenError("the executor is not open (use it as a context manager)")
        todo: queue.Queue[Job | None] = queue.Queue()
        done: queue.Queue[Verdict] = queue.Queue()
        stop = threading.Event()
        count = 0
        for job in jobs:
            todo.put(job)
            count += 1
        pool = list(self._pool)
        for _ in pool:
            todo.put(None)

        def serve(worker: Worker) -> None:
            while (job := todo.get()) is not None:
                if stop.is_set() or self._closed.is_set():
                    done.put(
                        Verdict(job.task_id, job.sample_index, "error", False, "sandbox: the run was stopped")
                    )
                    continue
                try:
                    done.put(worker.run(job, self.timeout))
                except BaseException as exc:
                    done.put(Verdict(job.task_id, job.sample_index, "error", False, f"sandbox: {exc}"))

        threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in pool]
        for t in threads:
            t.start()
        try:
            for _ in range(count):
                yield done.get()
        finally:
            stop.set()  # a consumer that stops early: the rest of the queue is skipped, not run
            for t in threads:
                t.join()
