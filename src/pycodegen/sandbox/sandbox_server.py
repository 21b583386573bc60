"""The sandbox fork server: runs inside its own PID, network, mount, IPC and UTS namespaces, builds a
minimal root once, and starts two processes per sample. Standard library only; started by `executor.py`.

Protocol: one JSON job per line on stdin, one JSON result per line on stdout.

Why a fork server: the interpreter and common modules are loaded once, so a sample costs two forks
rather than an interpreter start. Why PID 1 of a namespace: the samples cannot signal it (init ignores
signals it has no handler for, even SIGKILL from inside) and cannot see or signal anything outside.

Per sample (see `pycodegen_harness` for what runs in each):
- the PROGRAM process (untrusted), forked by the zygote: PID 1, split off before any job was read and
  never reading one, so that a program's memory holds no test code and no earlier sample. It gets a
  fresh tmpfs on /tmp as its working directory (mounted by the job server for this sample, unmounted
  once its processes are gone), a fresh IPC namespace (SysV shm/sem/msg and POSIX queues die with it),
  a new anonymous session keyring, rlimits, the sample uid, a seccomp filter, no file descriptor but its
  own pipes; it reads its request (program, setup code, names, rlimits: never the tests) itself;
- the CHECKER (trusted: never runs program code), as another uid, so the program can neither signal
  nor ptrace it; it alone holds the verdict pipe. With separate uids it is one long-lived process per
  worker that receives each sample's pipes by SCM_RIGHTS (a fork, confinement and exit per sample cost
  about 1.5 ms of CPU), replaced when it dies or is still busy when the sample's time runs out; else
  one forked process per sample.
The job server (PID 1's child) reads the jobs, compiles the trusted code once per problem, enforces the
wall-clock limit and afterwards kills the sample's processes: `kill(-1)` with the sample's uid as its
effective uid (which reaches exactly the sample's processes), or, without separate uids, every process of
the namespace.

The root both see (`build_root`): a read-only tmpfs with read-only binds of the interpreter's standard
library (its site-packages hidden), the shared libraries its extension modules need, /dev/null,
/dev/zero, /dev/urandom and an empty /tmp. No venv site-packages (so no benchmark data), no project
checkout, no /etc, no /proc, no host sockets.
"""

from __future__ import annotations

# Imported once here so that samples that use them fork with them already loaded.
import ast  # noqa: F401
import collections  # noqa: F401
import ctypes
import ctypes.util
import fcntl
import functools  # noqa: F401
import gc
import glob
import heapq  # noqa: F401
import itertools  # noqa: F401
import json
import math  # noqa: F401
import os
import platform
import re
import resource
import select
import signal
import socket
import string  # noqa: F401
import struct
import subprocess
import sys
import time
import typing  # noqa: F401

OUTPUT_CAP = 64 * 1024
VERDICT_CAP = 16 * 1024
ROOT_STAGE = "/tmp/.pycodegen-root"
# Extension modules of no use without a terminal, a display or host databases: their libraries (X11, Tk,
# ncurses, NIS, gdbm, ...) stay out of the root, and so do the modules' imports.
NO_LIBS = ("_tkinter", "_curses", "readline", "nis", "_gdbm", "_dbm", "_ctypes_test", "_testcapi")
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
KEYCTL_JOIN_SESSION_KEYRING = 1

# x86-64 system call numbers. The seccomp filter below is ~45 instructions of classic BPF written by
# hand: libseccomp would be a native dependency (and a Python binding) for a list this short.
SYS = {"pivot_root": 155, "keyctl": 250, "unshare": 272}
DENIED_SYSCALLS = {
    "ptrace": 101, "syslog": 103, "personality": 135, "vhangup": 153, "pivot_root": 155, "chroot": 161,
    "acct": 163, "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179, "kexec_load": 246,
    "add_key": 248, "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "name_to_handle_at": 303, "open_by_handle_at": 304, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "pidfd_getfd": 438, "process_madvise": 440, "mount_setattr": 442,
}  # fmt: skip
SYS_CLONE, SYS_CLONE3 = 56, 435
CLONE_NEW_ANY = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME


def seccomp_program() -> bytes:
    """Classic BPF: other architectures are killed; the denied calls, x32 calls and clone() with any
    CLONE_NEW* flag fail with EPERM; clone3 (whose flags live in memory a filter cannot read) fails with
    ENOSYS, so libc falls back to clone()."""
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, deny, nosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    denied = sorted(set(DENIED_SYSCALLS.values()))
    n = len(denied)
    a = 5 + n  # index of the clone3 test
    allow_at, deny_at, nosys_at = a + 4, a + 5, a + 6
    prog: list[tuple[int, int, int, int]] = [
        (ld_abs, 0, 0, 4),  # arch
        (jeq, 1, 0, 0xC000003E),  # AUDIT_ARCH_X86_64
        (ret, 0, 0, kill),
        (ld_abs, 0, 0, 0),  # syscall number
        (jge, deny_at - 5, 0, 0x40000000),  # x32 ABI
    ]
    for i, nr in enumerate(denied):
        prog.append((jeq, deny_at - (5 + i) - 1, 0, nr))
    prog += [
        (jeq, nosys_at - a - 1, 0, SYS_CLONE3),
        (jeq, 0, allow_at - (a + 1) - 1, SYS_CLONE),
        (ld_abs, 0, 0, 16),  # args[0], low 32 bits: clone's flags
        (jset, deny_at - (a + 3) - 1, 0, CLONE_NEW_ANY),
        (ret, 0, 0, allow),
        (ret, 0, 0, deny),
        (ret, 0, 0, nosys),
    ]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


SECCOMP = seccomp_program()


# Built once in the server, so that a sample pays two prctl calls, not the ctypes set-up (about 0.5 ms a
# process: symbol lookups and buffers would be made again in every forked child).
_SECCOMP_BUF = ctypes.create_string_buffer(SECCOMP, len(SECCOMP))
_FPROG = ctypes.create_string_buffer(
    struct.pack("=HxxxxxxQ", len(SECCOMP) // 8, ctypes.addressof(_SECCOMP_BUF))
)
_prctl = libc.prctl
_prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_syscall, _unshare, _umount2 = libc.syscall, libc.unshare, libc.umount2


def install_seccomp() -> None:
    """PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP(SECCOMP_MODE_FILTER) with `SECCOMP`."""
    if _prctl(38, 1, 0, 0, 0) != 0 or _prctl(22, 2, ctypes.addressof(_FPROG), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "seccomp")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if (
        libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        )
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def bind(path: str, root: str, writable: bool = False) -> None:
    """Bind `path` (a directory or file) at the same place under `root`, read-only unless `writable`."""
    target = root + path
    if os.path.isdir(path):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            open(target, "w").close()
    mount(path, target, None, MS_BIND | MS_REC)
    if not writable:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def needed_libraries(files: list[str]) -> list[str]:
    """Shared libraries the interpreter and its extension modules load, resolved (one `ldd` call)."""
    try:
        out = subprocess.run(["ldd", *files], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    found = set()
    for line in out.splitlines():
        match = re.search(r"(/\S+) \(0x", line)
        if match and os.path.exists(match.group(1)):
            found.add(match.group(1))
            found.add(os.path.realpath(match.group(1)))
    return sorted(found)


def build_root(cfg: dict) -> dict:
    """Pivot into a minimal root (see the module docstring); returns what it holds, for the run card."""
    stdlib = os.path.realpath(os.path.dirname(os.__file__))
    dynload = os.path.join(stdlib, "lib-dynload")
    binary = os.path.realpath(sys.executable)
    modules = [
        m for m in glob.glob(os.path.join(dynload, "*.so")) if not os.path.basename(m).startswith(NO_LIBS)
    ]
    libs = needed_libraries([binary, *modules])
    mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    root = ROOT_STAGE
    os.makedirs(root)
    mount("tmpfs", root, "tmpfs", MS_NOSUID, "size=1m,mode=755")
    bind(stdlib, root)
    site = os.path.join(stdlib, "site-packages")
    if os.path.isdir(site):
        mount("tmpfs", root + site, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k,mode=555")
    for lib in libs:
        if not os.path.islink(lib):
            bind(lib, root)
        else:  # the loader opens the link's name: recreate the link, pointing at the bound file
            os.makedirs(os.path.dirname(root + lib), exist_ok=True)
            if not os.path.lexists(root + lib):
                os.symlink(os.readlink(lib), root + lib)
    for dev in ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random"):
        bind(dev, root, writable=dev in ("/dev/null", "/dev/zero"))
    os.makedirs(root + "/tmp", mode=0o755)
    os.chdir(root)
    os.mkdir(".old")
    if _syscall(SYS["pivot_root"], b".", b".old") != 0:
        raise OSError(ctypes.get_errno(), "pivot_root")
    os.chdir("/")
    if _umount2(b"/.old", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount /.old")
    os.rmdir("/.old")
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)
    dirs: dict[str, int] = {}
    for lib in libs:
        dirs[os.path.dirname(lib)] = dirs.get(os.path.dirname(lib), 0) + 1
    return {
        "root": "pivot_root into a read-only tmpfs",
        "root_contents": [
            f"{stdlib} (read-only; site-packages hidden)",
            *(f"{d}: {n} shared libraries (read-only)" for d, n in sorted(dirs.items())),
            "/dev/null, /dev/zero, /dev/urandom, /dev/random",
            "/tmp (a fresh tmpfs per sample)",
        ],
    }


def setup_namespace(cfg: dict) -> dict:
    """The fork server's view of the machine: a minimal root when it may build one."""
    info: dict = {"pid1": os.getpid() == 1}
    if not cfg.get("mount_ns"):
        return info
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if cfg.get("uid") is not None:
        info.update(build_root(cfg))
    else:  # no separate uid (user namespace): hide the world-writable directories at least
        for target in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            if os.path.isdir(target):
                mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_bytes']},mode=1777")
    # Only the standard library stays importable (the venv's site-packages are not in the root anyway).
    stdlib = os.path.dirname(os.__file__)
    sys.path[:] = [p for p in sys.path if p.startswith(stdlib) or p == cfg["harness_dir"]]
    return info


def probe(step: str) -> bool:
    """Whether `step` works here, tried in a throw-away child (a failure must not hurt the server)."""
    pid = os.fork()
    if pid == 0:
        try:
            if step == "seccomp":
                install_seccomp()
                os._exit(0 if _syscall(SYS["keyctl"], 0, 0, 0, 0, 0) != 0 else 1)
            if step == "sample_ns":
                os._exit(0 if _unshare(CLONE_NEWNS | CLONE_NEWIPC) == 0 else 1)
        except BaseException:
            os._exit(1)
        os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def set_limits(limits: dict) -> None:
    for name, value in limits.items():
        which = getattr(resource, name)
        resource.setrlimit(which, (value, value))


def place_fds(mapping: dict[int, int]) -> None:
    """Put each source fd on its target number (0..n, contiguous), then close every other fd."""
    top = max(mapping) + 1
    moved = {target: fcntl.fcntl(source, fcntl.F_DUPFD, top) for target, source in mapping.items()}
    for target, fd in moved.items():  # via fds above every target: no target overwrites a pending source
        os.dup2(fd, target)
    os.closerange(top, 1 << 20)  # close_range(2): one system call


def drop_privileges(uid: int | None, gid: int | None) -> None:
    if uid is not None:
        os.setgroups([])
        os.setgid(gid)  # type: ignore[arg-type]
        os.setuid(uid)


def program_main(cfg: dict, fds: list[int]) -> None:
    """In the forked program process: read its own request (program, setup, names, rlimits: never the
    tests) from its pipe, confine itself, then serve the checker's calls. Never returns."""
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        into, reply, out, err, request = fds
        chunks = []
        while chunk := os.read(request, 1 << 20):
            chunks.append(chunk)
        os.close(request)
        job = json.loads(b"".join(chunks))
        fds = {"in": into, "reply": reply, "out": out, "err": err}  # type: ignore[assignment]
        os.setsid()
        if cfg.get("sample_ns") and _unshare(CLONE_NEWIPC) != 0:
            raise OSError(ctypes.get_errno(), "unshare")
        _syscall(SYS["keyctl"], KEYCTL_JOIN_SESSION_KEYRING, 0, 0, 0, 0)  # may be refused: then seccomp
        set_limits(job["rlimits"])
        drop_privileges(cfg.get("uid"), cfg.get("gid"))
        os.chdir("/tmp")
        os.environ.clear()
        os.environ.update({"HOME": "/tmp", "TMPDIR": "/tmp", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                           "PYTHONDONTWRITEBYTECODE": "1"})  # fmt: skip
        if cfg.get("seccomp"):
            install_seccomp()
        null = os.open("/dev/null", os.O_RDONLY)
        place_fds({0: null, 1: fds["out"], 2: fds["err"], 3: fds["in"], 4: fds["reply"]})
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        if not cfg.get("net_ns"):
            disable_sockets()
        from pycodegen_harness import serve_program  # loaded before the fork (see main)

        serve_program(job)
    except BaseException:
        os._exit(70)
    os._exit(71)


def checker_main(job: dict, cfg: dict, code: dict, fds: dict) -> None:
    """In the forked checker process: confine (another uid), run the tests, write the verdict."""
    try:
        os.setsid()
        set_limits(job["checker_rlimits"])
        drop_privileges(cfg.get("checker_uid"), cfg.get("checker_uid"))
        if cfg.get("seccomp"):
            install_seccomp()
        null = os.open("/dev/null", os.O_RDWR)
        place_fds({0: null, 1: null, 2: null, 3: fds["in"], 4: fds["out"], 5: fds["verdict"]})
        from pycodegen_harness import run_checker

        run_checker(job, code, 5)
    except BaseException as exc:  # the checker's own failure: say what it was (trusted text)
        detail = f"sandbox checker: {type(exc).__name__}: {exc}"[:2000]
        try:
            os.write(5, (json.dumps({"outcome": "error", "detail": detail}) + "\n").encode())
        except OSError:
            os._exit(70)
        os._exit(0)
    os._exit(71)


class Checker:
    """The worker's long-lived checker process (trusted, the checker uid, seccomp): a sample costs it a
    message (its pipes arrive with SCM_RIGHTS), not a fork, a confinement and an exit. Replaced when it
    dies, or when a sample's time runs out while it is still busy."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.pidfd: int | None = None

    def ensure(self, limits: dict) -> None:
        if self.pid is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            checker_server(self.cfg, limits, theirs.fileno())
        theirs.close()
        self.pid, self.sock, self.pidfd = pid, ours, os.pidfd_open(pid)

    def submit(self, fds: list[int], job: bytes) -> None:
        assert self.sock is not None
        r_job, w_job = os.pipe()
        try:
            socket.send_fds(self.sock, [b"job"], [*fds, r_job])
        finally:
            os.close(r_job)
        try:
            write_all(w_job, job)
        finally:
            os.close(w_job)

    def stop(self) -> int | None:
        """Kill it (if alive) and return its exit status."""
        if self.pid is None:
            return None
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        status = self.reap()
        return status

    def reap(self) -> int | None:
        status = None
        if self.pid is not None:
            try:
                status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                pass
        for closer in (
            self.sock.close if self.sock else None,
            (lambda: os.close(self.pidfd)) if self.pidfd else None,
        ):
            if closer is not None:
                closer()
        self.pid, self.sock, self.pidfd = None, None, None
        return status


def checker_server(cfg: dict, limits: dict, sockfd: int) -> None:
    """The long-lived checker's loop: for each sample, its pipes and job; the verdict on its pipe."""
    try:
        os.setsid()
        set_limits({k: v for k, v in limits.items() if k != "RLIMIT_CPU"})  # cumulative: the clock rules
        drop_privileges(cfg.get("checker_uid"), cfg.get("checker_uid"))
        if cfg.get("seccomp"):
            install_seccomp()
        null = os.open("/dev/null", os.O_RDWR)
        place_fds({0: null, 1: null, 2: null, 3: null, 4: null, 5: null, 6: sockfd})
        sock = socket.socket(fileno=6)
        from pycodegen_harness import decide, write_verdict

        while True:
            _, fds, _, _ = socket.recv_fds(sock, 16, 4)
            if len(fds) != 4:
                os._exit(0)
            into, out, verdict, request = fds
            chunks = []
            while chunk := os.read(request, 1 << 20):
                chunks.append(chunk)
            os.close(request)
            for target, fd in ((3, into), (4, out), (5, verdict)):
                os.dup2(fd, target)
                os.close(fd)
            try:
                job = json.loads(b"".join(chunks))
                result = decide(job, trusted_code(job))
            except BaseException as exc:  # the checker's own failure: say what it was (trusted text)
                result = ("error", f"sandbox checker: {type(exc).__name__}: {exc}", False)
            try:
                write_verdict(5, *result)
            except OSError:
                pass
            for fd in (3, 4, 5):
                os.dup2(0, fd)  # /dev/null over this sample's pipes: the program sees the end of its input
    except BaseException:
        os._exit(70)


def sweep_uid(uid: int, programs: Programs) -> None:
    """Kill every process of the sample uid (the long-lived checker, another uid, stays) until the zygote
    has none left: kill(-1) with the effective uid of the sample reaches exactly its processes."""
    # kill(-1) cannot say when they are all gone here (it counts the processes it may not signal too), so:
    # kill, wait for the zygote to have reaped the program process, kill once more (whatever the program
    # forked meanwhile was already signalled: a process being SIGKILLed cannot finish a fork).
    deadline = time.monotonic() + 2
    for attempt in range(2):
        os.seteuid(uid)
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.seteuid(0)
        while attempt == 0 and not programs.empty() and time.monotonic() < deadline:
            time.sleep(0.0002)


def disable_sockets() -> None:
    """Fallback when no network namespace could be made: sockets raise inside the sample."""
    import socket

    def refused(*args, **kwargs):
        raise OSError("network access is disabled in the pycodegen sandbox")

    socket.socket = refused  # type: ignore[assignment, misc]
    socket.create_connection = refused  # type: ignore[assignment]
    socket.socketpair = refused  # type: ignore[assignment]


class Programs:
    """Where program processes come from. With a PID namespace: the zygote, PID 1, forked from the clean
    server before any job was read; it never reads a job, so a program's memory holds no test code and
    no earlier sample (a forked child inherits its parent's whole heap, freed strings included). Without
    one: this process."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.exits: dict[int, int] = {}

    def spawn(self, cfg: dict, fds: list[int]) -> int:
        if self.sock is None:
            pid = os.fork()
            if pid == 0:
                program_main(cfg, fds)
            return pid
        socket.send_fds(self.sock, [b"fork"], fds)
        while True:
            kind, pid, status = self.receive()
            if kind == b"pid":
                return pid
            self.exits[pid] = status

    def receive(self) -> tuple[bytes, int, int]:
        assert self.sock is not None
        message = self.sock.recv(64)
        if not message:
            raise OSError("the zygote is gone")
        kind, pid, status = [*message.split(), b"0"][:3]
        return kind, int(pid), int(status)

    def empty(self) -> bool:
        """Whether the zygote has no child left (every process of the sample is gone and reaped)."""
        assert self.sock is not None
        self.sock.send(b"empty?")
        while True:
            kind, pid, status = self.receive()
            if kind == b"empty":
                return bool(status)
            self.exits[pid] = status

    def status(self, pid: int, wait: float) -> int | None:
        """The program's exit status once it has ended (None if it has not within `wait` seconds)."""
        if self.sock is None:
            try:
                done, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
            except ChildProcessError:
                return None
            return status if done else None
        deadline = time.monotonic() + wait
        while pid not in self.exits:
            remaining = deadline - time.monotonic()
            if remaining < 0 or not select.select([self.sock], [], [], max(remaining, 0))[0]:
                return None
            kind, other, status = self.receive()
            if kind == b"exit":
                self.exits[other] = status
        return self.exits.pop(pid)


def zygote(cfg: dict, sock: socket.socket, server: int) -> None:
    """PID 1's loop: fork a program process for each request (with the file descriptors it came with),
    reap every process of the namespace, and report the programs' exit statuses. Never returns."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    programs: set[int] = set()
    while True:
        ready, _, _ = select.select([sock, wake_r], [], [])
        if wake_r in ready:
            try:
                os.read(wake_r, 4096)
            except BlockingIOError:
                pass
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == server:
                    os._exit(0)  # the namespace ends with its init
                if pid in programs:
                    programs.discard(pid)
                    sock.send(b"exit %d %d" % (pid, status))
        if sock in ready:
            try:
                message, fds, _, _ = socket.recv_fds(sock, 64, 8)
            except OSError:
                os._exit(0)
            if message == b"empty?":  # whether the program processes it forked are gone and reaped
                try:
                    while True:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                        if pid == 0:
                            break
                        if pid in programs:
                            programs.discard(pid)
                            sock.send(b"exit %d %d" % (pid, status))
                except ChildProcessError:
                    pass
                sock.send(b"empty 0 %d" % (not programs))
                continue
            if not fds:
                os._exit(0)
            pid = os.fork()
            if pid == 0:
                os.close(wake_r)
                os.close(wake_w)
                sock.close()
                program_main(cfg, fds)
            for fd in fds:
                os.close(fd)
            programs.add(pid)
            sock.send(b"pid %d" % pid)


def sweep(children: list[int]) -> None:
    """Kill everything the sample left behind and wait until it is gone."""
    deadline = time.monotonic() + 2
    if os.getpid() != 1 and os.getppid() != 1:  # no PID namespace: the process groups we know of
        for child in children:
            try:
                os.killpg(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    while time.monotonic() < deadline:
        if os.getpid() == 1 or os.getppid() == 1:
            try:  # every process of the namespace but init (the zygote) and this one, until none is left
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            if os.getppid() != 1 or not _others_alive():
                return
        time.sleep(0.0005)


def _others_alive() -> bool:
    """Whether kill(-1) still finds a process (a zombie the zygote has not reaped yet counts)."""
    try:
        os.kill(-1, 0)
    except ProcessLookupError:
        return False
    return True


class OomCounter:
    """The memory cgroup's OOM-kill count, read through a file descriptor opened before the pivot."""

    def __init__(self, path: str | None) -> None:
        self.fd = None
        if path:
            try:
                self.fd = os.open(os.path.join(path, "memory.oom_control"), os.O_RDONLY)
            except OSError:
                self.fd = None

    def count(self) -> int:
        if self.fd is None:
            return 0
        try:
            for line in os.pread(self.fd, 4096, 0).decode().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0


CODE_CACHE: dict[tuple[str, str], dict] = {}


def trusted_code(job: dict) -> dict:
    """The prelude and test code compiled once per problem (they are trusted: the problem's own text)."""
    key = (job.get("prelude") or "", job["test"])
    if key not in CODE_CACHE:
        if len(CODE_CACHE) > 2048:
            CODE_CACHE.clear()
        CODE_CACHE[key] = {
            "prelude": compile(key[0], "<prompt>", "exec") if key[0] else None,
            "test": compile(key[1], "<tests>", "exec"),
        }
    return CODE_CACHE[key]


def read_into(fd: int, buffer: bytearray, cap: int) -> bool:
    """Read what is there (up to `cap` kept); False at end of file."""
    chunk = os.read(fd, 65536)
    if not chunk:
        return False
    room = cap - len(buffer)
    if room > 0:
        buffer += chunk[:room]
    return True


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def run_job(job: dict, cfg: dict, oom: OomCounter, programs: Programs, checkers: Checker | None) -> dict:
    # Long on purpose: the two forks, their pipes and the parent's watch over them share the same file
    # descriptors and deadlines; read top to bottom it is one sample's life.
    try:
        code = trusted_code(job)
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        return {"id": job.get("id"), "harness_error": f"the test code does not compile: {exc}"}
    to_program_r, to_program_w = os.pipe()
    to_checker_r, to_checker_w = os.pipe()
    r_v, w_v = os.pipe()
    r_o, w_o = os.pipe()
    r_e, w_e = os.pipe()
    oom_before = oom.count()
    started = time.monotonic()
    fresh_tmp = bool(cfg.get("sample_ns"))
    if fresh_tmp:  # the sample's own tmpfs, unmounted (with all it holds) once its processes are gone
        owner = f",uid={cfg['uid']},gid={cfg['gid']}" if cfg.get("uid") is not None else ""
        mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={cfg['tmpfs_bytes']},mode=700{owner}")
    sys.stdout.flush()
    request_r, request_w = os.pipe()
    program = programs.spawn(cfg, [to_program_r, to_checker_w, w_o, w_e, request_r])
    os.close(request_r)
    keys = ("program", "setup", "names", "rlimits")
    try:  # a program that ends before reading all of it closes the pipe: nothing to wait for then
        write_all(request_w, json.dumps({k: job.get(k) for k in keys}).encode())
    except OSError:
        pass
    os.close(request_w)
    lasting = checkers is not None
    if checkers is not None:
        checkers.ensure(job["checker_rlimits"])
        keys = ("prelude", "test", "names", "check", "entry_point")
        try:
            checkers.submit(
                [to_checker_r, to_program_w, w_v], json.dumps({k: job.get(k) for k in keys}).encode()
            )
        except OSError:
            pass  # it died: seen below through its pidfd
        assert checkers.pid is not None and checkers.pidfd is not None
        checker, checker_pidfd = checkers.pid, os.dup(checkers.pidfd)
    else:
        checker = os.fork()
        if checker == 0:
            checker_main(job, cfg, code, {"in": to_checker_r, "out": to_program_w, "verdict": w_v})
        checker_pidfd = os.pidfd_open(checker)
    for fd in (to_program_r, to_program_w, to_checker_r, to_checker_w, w_v, w_o, w_e):
        os.close(fd)
    pidfds = {checker_pidfd: checker}
    status: dict[int, int] = {}
    try:
        pidfds[os.pidfd_open(program)] = program
    except ProcessLookupError:  # it has already ended (e.g. a syntax error) and the zygote reaped it
        got = programs.status(program, 0.5)
        status[program] = got if got is not None else -1
    buffers = {r_v: bytearray(), r_o: bytearray(), r_e: bytearray()}
    caps = {r_v: VERDICT_CAP, r_o: OUTPUT_CAP, r_e: OUTPUT_CAP}
    open_fds = set(buffers)
    deadline = started + job["timeout"]
    timed_out = False
    checker_done_at = None
    while True:
        now = time.monotonic()
        if lasting and checker_done_at is None and r_v not in open_fds:
            checker_done_at, status[checker] = now, 0  # the long-lived checker closed the verdict pipe
        # Checked right after the verdict pipe closes, not after another wait in select below.
        if checker_done_at is not None and (
            program in status or b'"gone": true' not in buffers[r_v] or now - checker_done_at > 0.2
        ):
            break  # decided; when the program's end is the verdict, give it a moment to be reaped
        if now >= deadline:
            timed_out = checker not in status
            break
        watched = [*open_fds, *(p for p, pid in pidfds.items() if pid not in status)]
        ready, _, _ = select.select(watched, [], [], min(deadline - now, 0.05))
        for fd in ready:
            if fd in pidfds:
                pid = pidfds[fd]
                if pid == checker and lasting:
                    got = None
                else:
                    got = os.waitpid(pid, 0)[1] if pid == checker else programs.status(pid, 0.5)
                status[pid] = got if got is not None else -1
                if pid == checker and lasting:  # the long-lived checker died: replaced next time
                    status[pid] = checkers.reap() or 0  # type: ignore[union-attr]
                    status[pid] = status[pid] if status[pid] else 9
                if pid == checker:
                    checker_done_at = time.monotonic()
                    while select.select([r_v], [], [], 0)[0] and read_into(r_v, buffers[r_v], caps[r_v]):
                        pass
            elif not read_into(fd, buffers[fd], caps[fd]):
                open_fds.discard(fd)
    for fd in list(open_fds):  # what is already in the pipes, without waiting for descendants
        while select.select([fd], [], [], 0)[0] and read_into(fd, buffers[fd], caps[fd]):
            pass
    elapsed = time.monotonic() - started
    if lasting:
        if checker_done_at is None and checkers is not None:  # still busy with this sample: replace it
            checkers.stop()
        sweep_uid(cfg["uid"], programs)
    else:
        sweep([program, checker])
    if fresh_tmp and _umount2(b"/tmp", MNT_DETACH) != 0:
        raise OSError(ctypes.get_errno(), "umount /tmp")
    for fd in (*pidfds, *buffers):
        os.close(fd)
    verdict = None
    try:
        parsed = json.loads(bytes(buffers[r_v]).decode("utf-8"))
        if isinstance(parsed, dict) and isinstance(parsed.get("outcome"), str):
            verdict = {
                "outcome": parsed["outcome"],
                "detail": str(parsed.get("detail", "")),
                "gone": bool(parsed.get("gone")),
            }
    except (ValueError, RecursionError):
        verdict = None
    return {
        "id": job.get("id"),
        "timed_out": timed_out,
        "status": status.get(program) if status.get(program, -1) >= 0 else None,
        "checker_status": status.get(checker),
        "verdict": verdict,
        "oom": oom.count() > oom_before,
        "elapsed": round(elapsed, 4),
        "stdout": buffers[r_o].decode("utf-8", "replace"),
        "stderr": buffers[r_e].decode("utf-8", "replace"),
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
"""
WARM_UP_TEST = 'assert f([1, 2, 3]) == {"t": 7, "s": [3, 2, 1], "p": 1.0}\n'


def main() -> None:
    cfg = json.loads(sys.argv[1])
    sys.path.insert(0, cfg["harness_dir"])
    import pycodegen_harness

    oom = OomCounter(cfg.get("memory_cgroup"))  # opened before the pivot hides /sys
    cfg["seccomp"] = platform.machine() == "x86_64" and probe("seccomp")
    cfg["sample_ns"] = bool(cfg.get("mount_ns")) and probe("sample_ns")
    info = setup_namespace(cfg)
    info["seccomp"] = (
        f"filter of {len(SECCOMP) // 8} BPF instructions: {', '.join(sorted(DENIED_SYSCALLS))}, clone with "
        "CLONE_NEW* flags: EPERM; clone3: ENOSYS"
        if cfg["seccomp"]
        else None
    )
    info["per_sample"] = (
        "a fresh tmpfs on /tmp (unmounted after the sample), a fresh IPC namespace, a new session keyring"
        if cfg["sample_ns"]
        else "no per-sample namespaces"
    )
    # The first compile() in a process pays a one-time initialisation (about 1.7 ms here) that every
    # forked sample would otherwise pay again.
    pycodegen_harness.warm_up(WARM_UP, WARM_UP_TEST)
    # Everything loaded so far moves to the permanent generation: a sample's garbage collections then
    # never walk (and so never copy-on-write) the server's heap.
    gc.freeze()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # what the programs inherit
    programs = Programs(None)
    if os.getpid() == 1:  # split: PID 1 stays clean (the zygote), a child reads the jobs
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        server = os.fork()
        if server != 0:
            ours.close()
            null = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1):
                os.dup2(null, fd)
            if oom.fd is not None:
                os.close(oom.fd)
            zygote(cfg, theirs, server)
        theirs.close()
        programs = Programs(ours)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a program that closes its request pipe early
    serve_jobs(cfg, info, oom, programs)


def serve_jobs(cfg: dict, info: dict, oom: OomCounter, programs: Programs) -> None:
    # The long-lived checker needs the uid-scoped sweep, so a separate uid and the zygote.
    checkers = Checker(cfg) if cfg.get("uid") is not None and programs.sock is not None else None
    out = sys.stdout
    out.write(json.dumps({"ready": True, **info}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        try:
            result = run_job(job, cfg, oom, programs, checkers)
        except Exception as exc:
            result = {"id": job.get("id"), "harness_error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(result) + "\n")
        out.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
