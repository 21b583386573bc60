"""The sandbox fork server: runs inside its own PID, network, mount and IPC namespaces and forks one
child per sample. Standard library only; started by `executor.py`, never imported by the harness.

Protocol: one JSON job per line on stdin, one JSON result per line on stdout.

Why a fork server: the interpreter and common modules are loaded once, so a sample costs a fork rather
than an interpreter start. Why PID 1 of a namespace: the samples cannot signal it (init ignores signals
it has no handler for, even SIGKILL from inside), cannot see or signal anything outside, and after each
sample `kill(-1, SIGKILL)` removes every process the sample left behind: daemons, `setsid` escapes,
`posix_spawn`ed children.
"""

from __future__ import annotations

# Imported once here so that samples that use them fork with them already loaded.
import collections  # noqa: F401
import ctypes
import ctypes.util
import functools  # noqa: F401
import gc
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import re  # noqa: F401
import resource
import select
import shutil
import signal
import string  # noqa: F401
import sys
import time
import typing  # noqa: F401

OUTPUT_CAP = 64 * 1024
WORK_ROOT = "/tmp/pycodegen-sandbox"
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 8192, 16384, 1 << 18


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if (
        libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def expose(paths: list[str]) -> list[str]:
    """Make `paths` reachable by the unprivileged sample uid inside this mount namespace.

    An ancestor the sample may not traverse (e.g. /root, mode 700, holding the interpreter) is covered by
    an empty tmpfs, and only the needed child is bound back: everything else there stays hidden.
    """
    covered: list[str] = []
    for path in sorted({os.path.realpath(p) for p in paths if os.path.exists(p)}):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            child = "/" + "/".join(parts[: depth + 1])
            if os.stat(ancestor).st_mode & 0o001:
                continue
            stage = f"/tmp/.expose-{len(covered)}"
            os.makedirs(stage, exist_ok=True)
            mount(child, stage, None, MS_BIND | MS_REC)
            mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
            os.makedirs(child, exist_ok=True)
            mount(stage, child, None, MS_MOVE)
            covered.append(ancestor)
            break
    return covered


def setup_namespace(cfg: dict) -> dict:
    """Private tmpfs for /tmp, /var/tmp and /dev/shm; expose the interpreter's directories."""
    info: dict = {"pid1": os.getpid() == 1}
    if not cfg.get("mount_ns"):
        return info
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    for target in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):  # every world-writable directory
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_bytes']},mode=1777")
    if cfg.get("uid") is not None:
        needed = [
            sys.prefix,
            sys.base_prefix,
            sys.exec_prefix,
            os.path.dirname(os.path.realpath(sys.executable)),
            *[p for p in sys.path if p],
        ]
        info["hidden_ancestors"] = expose(needed)
    return info


def set_limits(limits: dict) -> None:
    for name, value in limits.items():
        which = getattr(resource, name)
        resource.setrlimit(which, (value, value))


def child_main(job: dict, cfg: dict, wd: str, fds: dict) -> None:
    """In the forked child: finish isolation, drop privileges, run the sample. Never returns."""
    try:
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds["out"], 1)
        os.dup2(fds["err"], 2)
        for fd in (devnull, fds["out"], fds["err"], fds["proto"]):
            if fd > 2:
                os.close(fd)
        limits = dict(job["rlimits"])
        set_limits(limits)
        if cfg.get("uid") is not None:
            os.setgroups([])
            os.setgid(cfg["gid"])
            os.setuid(cfg["uid"])
        os.chdir(wd)
        os.environ.clear()
        os.environ.update(
            {
                "HOME": wd,
                "TMPDIR": wd,
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        if not cfg.get("net_ns"):
            disable_sockets()
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        from pycodegen_harness import run_sample  # the harness, loaded before the fork (see main)

        run_sample(job, fds["verdict"])
    except BaseException:
        os._exit(70)
    os._exit(71)


def disable_sockets() -> None:
    """Fallback when no network namespace could be made: sockets raise inside the sample."""
    import socket

    def refused(*args, **kwargs):
        raise OSError("network access is disabled in the pycodegen sandbox")

    socket.socket = refused  # type: ignore[assignment, misc]
    socket.create_connection = refused  # type: ignore[assignment]
    socket.socketpair = refused  # type: ignore[assignment]


def sweep(child: int) -> None:
    """Kill everything the sample left behind and reap it."""
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # as the namespace's init: every other process in it
        except ProcessLookupError:
            pass
    else:
        try:
            os.killpg(child, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


def oom_kills(cfg: dict) -> int:
    path = cfg.get("memory_cgroup")
    if not path:
        return 0
    try:
        with open(os.path.join(path, "memory.oom_control")) as fh:
            for line in fh:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        with open(os.path.join(path, "memory.failcnt")) as fh:
            return int(fh.read())
    except OSError:
        return 0


def run_job(job: dict, cfg: dict, seq: int) -> dict:
    # Long on purpose: the fork, the child's confinement (limits, user, namespaces) and the parent's
    # watch over its pipes share the same file descriptors and deadlines; read top to bottom it is one
    # sample's life, which a split across helpers would scatter.
    wd = os.path.join(WORK_ROOT, str(seq))
    os.makedirs(wd)
    if cfg.get("uid") is not None:
        os.chown(wd, cfg["uid"], cfg["gid"])
    r_v, w_v = os.pipe()
    r_o, w_o = os.pipe()
    r_e, w_e = os.pipe()
    oom_before = oom_kills(cfg)
    started = time.monotonic()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        for fd in (r_v, r_o, r_e):
            os.close(fd)
        child_main(job, cfg, wd, {"verdict": w_v, "out": w_o, "err": w_e, "proto": 1})
    for fd in (w_v, w_o, w_e):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    buffers = {r_v: bytearray(), r_o: bytearray(), r_e: bytearray()}
    caps = {r_v: OUTPUT_CAP, r_o: OUTPUT_CAP, r_e: OUTPUT_CAP}
    truncated = {r_o: False, r_e: False}
    open_fds = set(buffers)
    deadline = started + job["timeout"]
    status = None
    timed_out = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([*open_fds, pidfd], [], [], remaining)
        for fd in ready:
            if fd == pidfd:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                open_fds.discard(fd)
                continue
            room = caps[fd] - len(buffers[fd])
            if room > 0:
                buffers[fd] += chunk[:room]
            if len(chunk) > room and fd in truncated:
                truncated[fd] = True
        if pidfd in ready:
            _, status = os.waitpid(pid, 0)
            # The sample is gone; read what is already in the pipes, without waiting for descendants.
            for fd in list(open_fds):
                while select.select([fd], [], [], 0)[0]:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    room = caps[fd] - len(buffers[fd])
                    if room > 0:
                        buffers[fd] += chunk[:room]
            break
    elapsed = time.monotonic() - started
    sweep(pid)
    if status is None:
        try:
            _, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            status = None
    os.close(pidfd)
    for fd in buffers:
        os.close(fd)
    shutil.rmtree(wd, ignore_errors=True)
    oom = oom_kills(cfg) > oom_before
    return {
        "id": job["id"],
        "timed_out": timed_out,
        "status": status,
        "oom": oom,
        "elapsed": round(elapsed, 4),
        "messages": buffers[r_v].decode("utf-8", "replace").splitlines(),
        "stdout": buffers[r_o].decode("utf-8", "replace"),
        "stderr": buffers[r_e].decode("utf-8", "replace"),
        "stdout_truncated": truncated[r_o],
        "stderr_truncated": truncated[r_e],
    }


WARM_UP = """
import math
class Point:
    def __init__(self, x: float) -> None:
        self.x = x
def f(xs: list[int], *args, **kwargs) -> dict:
    try:
        total = sum(x * 2 for x in xs if x % 2 == 0) + len([y for y in {1, 2}]) + math.floor(1.5)
    except (ValueError, KeyError) as exc:
        raise RuntimeError(f"bad {exc!r}") from None
    return {"t": total, "s": sorted(xs, key=lambda v: -v), "p": Point(1.0).x}
assert f([1, 2, 3]) == {"t": 7, "s": [3, 2, 1], "p": 1.0}
"""


def warm_up() -> None:
    """Run a small program once: the first compile() in a process pays a one-time initialisation
    (about 1.7 ms here) that every forked sample would otherwise pay again."""
    exec(compile(WARM_UP, "<warm-up>", "exec"), {"__name__": "__warm_up__"})
    json.dumps({"warm": [1, "up"]})


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["harness_dir"])
    import pycodegen_harness  # noqa: F401  (loaded once, before any fork)

    info = setup_namespace(cfg)
    warm_up()
    # Everything loaded so far moves to the permanent generation: a sample's garbage collections then
    # never walk (and so never copy-on-write) the server's heap.
    gc.freeze()
    os.makedirs(WORK_ROOT, exist_ok=True)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    out = sys.stdout
    out.write(json.dumps({"ready": True, **info}) + "\n")
    out.flush()
    seq = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        seq += 1
        try:
            result = run_job(job, cfg, seq)
        except Exception as exc:
            result = {"id": job.get("id"), "harness_error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
