"""The sandboxed executor: runs every sample in its own process and decides its verdict in the parent.

Each worker is a fork server (`sandbox/sandbox_server.py`) started in new PID, network, mount and IPC
namespaces (`unshare`), inside its own memory and pids cgroups where the machine allows. A sample is a
child forked from it that drops to an unprivileged uid, gets rlimits (address space, CPU, file size,
processes, open files), a fresh working directory on a private tmpfs (HOME and TMPDIR inside it), no
network, and stdout/stderr capped. The fork server enforces the wall-clock timeout and kills whatever
the sample left behind; this process is the backstop: a worker that does not answer in time + 2 s is
killed with its whole namespace and restarted. Which isolation was used is recorded (`isolation`).
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import select
import shutil
import signal
import subprocess
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
    entry_points: list[str] = field(default_factory=list)  # names whose return values must be plain data


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
        "v1 memory+pids"
        if root and os.access(cg / "memory", os.W_OK) and os.access(cg / "pids", os.W_OK)
        else None
    )
    return info


def remove_stale_cgroups() -> None:
    """Remove the (empty) cgroups of pycodegen runs that were killed before they could clean up."""
    for controller in ("memory", "pids"):
        for path in Path("/sys/fs/cgroup", controller).glob("pycodegen-*-*"):
            owner = path.name.split("-")[1]
            if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                try:
                    path.rmdir()
                except OSError:
                    pass  # still has processes: a sample of that run is finishing


class Worker:
    """One fork server and the thread-side protocol to talk to it."""

    def __init__(self, index: int, isolation: dict[str, Any], limits: Limits) -> None:
        self.index = index
        self.isolation = isolation
        self.limits = limits
        self.proc: subprocess.Popen[bytes] | None = None
        self.buffer = b""
        self.cgroups: list[Path] = []
        self.uid = 1_900_000_000 + (os.getpid() % 1_000_000) * 16 + index if isolation["sample_uid"] else None

    def _make_cgroups(self) -> list[Path]:
        if not self.isolation.get("cgroup"):
            return []
        name = f"pycodegen-{os.getpid()}-{self.index}"
        memory = Path("/sys/fs/cgroup/memory") / name
        pids = Path("/sys/fs/cgroup/pids") / name
        for path in (memory, pids):
            path.mkdir(exist_ok=True)
        # The fork server itself is in the group too; give it room on top of the sample's budget.
        (memory / "memory.limit_in_bytes").write_text(str(self.limits.memory_bytes + (96 << 20)))
        (pids / "pids.max").write_text(str(self.limits.processes + 4))
        return [memory, pids]

    def start(self) -> None:
        self.cgroups = self._make_cgroups()
        cfg = {
            "harness_dir": str(SANDBOX_DIR),
            "mount_ns": "mount" in self.isolation["namespaces"],
            "net_ns": "net" in self.isolation["namespaces"],
            "uid": self.uid,
            "gid": self.uid,
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
        hello = self._read_line(30.0)
        if hello is None or not json.loads(hello).get("ready"):
            self.stop()
            raise PycodegenError("the sandbox fork server did not start (is `unshare` allowed here?)")
        self.hello = json.loads(hello)

    def _read_line(self, timeout: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
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
            for _ in range(50):  # rmdir fails while the killed processes are still leaving
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
        self.cgroups = []

    def run(self, job: Job, timeout: float) -> Verdict:
        if self.proc is None:
            self.start()
        assert self.proc is not None and self.proc.stdin is not None
        nonce = secrets.token_hex(16)
        request = {
            "id": f"{job.task_id}#{job.sample_index}",
            "nonce": nonce,
            "timeout": timeout,
            "program": job.program,
            "test": job.test,
            "entry_point": job.entry_point,
            "check": job.check,
            "entry_points": job.entry_points,
            "rlimits": self._rlimits(timeout),
        }
        started = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
            line = self._read_line(timeout + GRACE_SECONDS)
        except (BrokenPipeError, OSError):
            line = None
        if line is None:
            overran = time.monotonic() - started >= timeout
            self.stop()  # the whole namespace goes with it; a fresh server starts on the next job
            return Verdict(
                job.task_id,
                job.sample_index,
                "timeout" if overran else "killed",
                False,
                "the sandbox did not answer in time and was restarted"
                if overran
                else "the sandbox died during the sample and was restarted",
                time.monotonic() - started,
            )
        return classify(job, json.loads(line), nonce)

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


def classify(job: Job, result: dict[str, Any], nonce: str) -> Verdict:
    """Turn the fork server's report into a verdict. Only a message with this sample's nonce counts."""

    def verdict(outcome: str, detail: str) -> Verdict:
        return Verdict(
            job.task_id,
            job.sample_index,
            outcome,
            outcome == "passed",
            detail,
            result.get("elapsed", 0.0),
            result.get("stdout", "")[:DETAIL_OUTPUT],
            result.get("stderr", "")[-DETAIL_OUTPUT:],
        )

    if "harness_error" in result:
        return verdict("error", f"sandbox: {result['harness_error']}")
    messages = []
    for line in result.get("messages", []):
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(msg, dict) and msg.get("nonce") == nonce:
            messages.append(msg)
    status = result.get("status")
    if result.get("timed_out"):
        return verdict("timeout", f"wall-clock limit reached after {result.get('elapsed', 0):.1f} s")
    if len(messages) > 1:
        return verdict("error", "more than one verdict message: the verdict channel was tampered with")
    if messages and status is not None and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        outcome = messages[0].get("outcome")
        if outcome in OUTCOMES:
            return verdict(outcome, str(messages[0].get("detail", "")))
    if result.get("oom"):
        return verdict("out of memory", "killed by the memory cgroup")
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU:
            return verdict("timeout", "CPU-time limit reached")
        return verdict("killed", f"killed by {signal.Signals(sig).name}")
    if status is not None and os.WIFEXITED(status):
        return verdict("error", f"exited with status {os.WEXITSTATUS(status)} before the tests finished")
    return verdict("killed", "no exit status")


class Executor:
    """A pool of sandboxed fork servers; `map` yields verdicts as samples finish (in any order)."""

    def __init__(self, workers: int = 0, timeout: float = 10.0, limits: Limits | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.timeout = timeout
        self.limits = limits or Limits()
        self.isolation = detect_isolation()
        self._pool: list[Worker] = []

    def __enter__(self) -> Executor:
        if self.isolation.get("cgroup"):
            remove_stale_cgroups()
        self._pool = [Worker(i, self.isolation, self.limits) for i in range(self.workers)]
        threads = [threading.Thread(target=w.start) for w in self._pool]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if any(w.proc is None for w in self._pool):
            self.close()
            raise PycodegenError("the sandbox fork servers did not start")
        self.isolation = {**self.isolation, **{k: v for k, v in self._pool[0].hello.items() if k != "ready"}}
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
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
        todo: queue.Queue[Job | None] = queue.Queue()
        done: queue.Queue[Verdict | BaseException] = queue.Queue()
        count = 0
        for job in jobs:
            todo.put(job)
            count += 1
        for _ in self._pool:
            todo.put(None)

        def serve(worker: Worker) -> None:
            while (job := todo.get()) is not None:
                try:
                    done.put(worker.run(job, self.timeout))
                except BaseException as exc:
                    done.put(exc)

        threads = [threading.Thread(target=serve, args=(w,), daemon=True) for w in self._pool]
        for t in threads:
            t.start()
        for _ in range(count):
            item = done.get()
            if isinstance(item, BaseException):
                raise item
            yield item
        for t in threads:
            t.join()
