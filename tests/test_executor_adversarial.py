"""The executor against hostile programs. Each attack must end not passed within timeout + 2 s, leave no
process behind, touch nothing outside its temporary directory, and leave the next correct sample passing.

The executor runs one worker, so the correct sample after each attack lands on the same fork server.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from pycodegen.sandbox.executor import UID_BASE, Executor, Job, Limits

TIMEOUT = 2.0
REPO = Path(__file__).resolve().parents[1]
TOKEN = uuid.uuid4().hex[:12]  # names the files attacks try to create outside their directory
TEST = "assert f(1) == 2\n"
CORRECT = Job("ok/0", 0, "def f(x):\n    return x + 1\n", TEST, entry_points=["f"])


def sandbox_processes() -> list[int]:
    """Processes running as a sample uid, anywhere on the machine (sample uids are UID_BASE + an even
    number; the odd one above each is its worker's long-lived checker, which is not the sample's)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                uid_line = next(
                    x for x in (entry / "status").read_text().splitlines() if x.startswith("Uid:")
                )
            except (OSError, StopIteration):
                continue
            uid = int(uid_line.split()[1])
            if uid >= UID_BASE and (uid - UID_BASE) % 2 == 0:
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def canary() -> Path:
    """A file outside any sandbox, in a directory samples can see (the repository)."""
    directory = REPO / f".canary-{TOKEN}"
    directory.mkdir()
    victim = directory / "victim.txt"
    victim.write_text("intact")
    yield victim
    victim.unlink(missing_ok=True)
    directory.rmdir()


@pytest.fixture(scope="module")
def listener() -> tuple[int, list[str]]:
    """A TCP server on the host's loopback that records any connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    hits: list[str] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                hits.append("connected")
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], hits
    stop.set()
    thread.join()
    server.close()


@pytest.fixture(scope="module")
def executor(canary: Path) -> Executor:
    os.environ["PYCODEGEN_TEST_SECRET"] = "hunter2-" + TOKEN
    with Executor(workers=1, timeout=TIMEOUT, limits=Limits(memory_bytes=512 << 20, processes=16)) as ex:
        yield ex
    os.environ.pop("PYCODEGEN_TEST_SECRET")


def attacks(canary: Path, port: int) -> dict[str, str]:
    outside = f"/tmp/pycodegen-attack-{TOKEN}"
    return {
        "busy loop": "while True:\n    pass\n",
        "sleep forever": "import time\ntime.sleep(10**6)\n",
        "long C-level computation": "sum(range(10**12))\n",
        "catching the timeout": (
            "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n"
            "    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n"
        ),
        "reading stdin": "import sys\ndata = sys.stdin.read()\ndef f(x):\n    return len(data)\n",
        "deep recursion": "import sys\nsys.setrecursionlimit(10**9)\ndef r(n):\n    return r(n + 1)\nr(0)\n",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "fork and exit 0 with a child running": (
            "import os, time\nif os.fork() == 0:\n    time.sleep(100)\nos._exit(0)\n"
        ),
        "setsid escape": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(100)\n"
            "    os._exit(0)\ntime.sleep(0.2)\nos._exit(0)\n"
        ),
        "daemon writing after the verdict": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1)\n"
            f"        open('{outside}-daemon', 'w').write('late')\n        open('{canary}', 'w').write('late')\n"
            "    os._exit(0)\ndef f(x):\n    return 0\n"
        ),
        "killing the parent": (
            "import os, signal\nfor pid in (os.getppid(), 1, -1):\n    try:\n        os.kill(pid, signal.SIGKILL)\n"
            "    except OSError:\n        pass\ndef f(x):\n    return 0\n"
        ),
        "posix_spawn and ctypes spawn": (
            "import os, ctypes\nos.posix_spawn('/bin/sleep', ['sleep', '100'], {})\n"
            "ctypes.CDLL(None).system(b'sleep 100 &')\nos._exit(0)\n"
        ),
        "unbounded memory": "x = []\nwhile True:\n    x.append(b'x' * 10**7)\n",
        "memory over many children": (
            "import os, time\nfor _ in range(6):\n    if os.fork() == 0:\n        data = b'x' * (400 << 20)\n"
            "        time.sleep(100)\ntime.sleep(100)\n"
        ),
        "infinite printing": "while True:\n    print('x' * 1000)\n",
        "binary output": (
            "import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00\\x80' * 10000)\nsys.stdout.flush()\n"
            "def f(x):\n    return 0\n"
        ),
        "closing stdout then spinning": "import os\nos.close(1)\nos.close(2)\nwhile True:\n    pass\n",
        "filling the disk": (
            "i = 0\nwhile True:\n    with open(f'fill{i}', 'wb') as fh:\n        fh.write(b'0' * (8 << 20))\n    i += 1\n"
        ),
        "one huge file": "open('big', 'wb').write(b'0' * (64 << 20))\ndef f(x):\n    return 2\n",
        "exhausting file descriptors": "files = [open('/dev/null') for _ in range(10**6)]\n",
        "deleting a file outside": f"import os\nos.remove('{canary}')\n",
        "overwriting a file outside": f"open('{canary}', 'w').write('pwned')\n",
        "chdir out of the temp dir": (
            "import os\nos.chdir('/')\nopen('escaped-" + TOKEN + "', 'w').write('x')\n"
        ),
        "writing to /tmp and /dev/shm": (
            f"open('{outside}', 'w').write('x')\nopen('/dev/shm/pycodegen-attack-{TOKEN}', 'w').write('x')\n"
            f"open('/run/lock/pycodegen-attack-{TOKEN}', 'w').write('x')\ndef f(x):\n    return 0\n"
        ),
        "reading environment secrets": (
            "import os\nsecret = os.environ.get('PYCODEGEN_TEST_SECRET', '')\n"
            "try:\n    secret += open('/proc/1/environ').read()\nexcept OSError:\n    pass\n"
            "print(secret)\ndef f(x):\n    return 2 if 'hunter2' in secret else 0\n"
        ),
        "opening a network connection": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "def f(x):\n    return 2\n"
        ),
        "always-equal return object": (
            "class Always:\n    def __eq__(self, other):\n        return True\n"
            "def f(x):\n    return Always()\n"
        ),
        "int subclass that always equals": (
            "class Sly(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
            "def f(x):\n    return Sly(0)\n"
        ),
        "sys.exit(0) before the tests": "import sys\nsys.exit(0)\n",
        "os._exit(0) before the tests": "import os\nos._exit(0)\n",
        "printing a forged pass marker": (
            "import json, os\nprint('passed')\nprint(json.dumps({'outcome': 'passed', 'passed': True}))\n"
            "for fd in range(3, 64):\n    try:\n        os.write(fd, (json.dumps({'nonce': 'x', 'outcome': 'passed'}) + '\\n').encode())\n"
            "    except OSError:\n        pass\nos._exit(0)\n"
        ),
        "monkey-patching the checker": (
            "import builtins, sys\ndef check(candidate):\n    return None\nbuiltins.AssertionError = KeyError\n"
            "builtins.abs = lambda v: 0\n"
            "def skip(frame, event, arg):\n    if event == 'line' and frame.f_code.co_filename == '<tests>':\n"
            "        frame.f_lineno = frame.f_lineno + 1\n    return skip\nsys.settrace(skip)\n"
            "def f(x):\n    sys.settrace(skip)\n    return 0\n"
        ),
        "raising a BaseException subclass": "class Escape(BaseException):\n    pass\nraise Escape('bye')\n",
    }


ATTACK_NAMES = list(attacks(Path("/x"), 1))


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_attack(name: str, executor: Executor, canary: Path, listener: tuple[int, list[str]]) -> None:
    port, hits = listener
    program = attacks(canary, port)[name]
    job = Job(f"attack/{name}", 0, program, TEST, entry_points=["f"])
    started = time.monotonic()
    verdicts = executor.map([job, CORRECT])
    attack = next(verdicts)
    elapsed = time.monotonic() - started
    follow = next(verdicts)
    assert attack.task_id == job.task_id
    assert not attack.passed, f"{name}: {attack}"
    assert elapsed < TIMEOUT + 2, f"{name} took {elapsed:.1f} s"
    assert follow.passed, f"the sample after {name!r} did not pass: {follow}"
    time.sleep(0.05)
    assert sandbox_processes() == [], f"{name} left processes behind"
    assert canary.read_text() == "intact"
    for leftover in (
        f"/tmp/pycodegen-attack-{TOKEN}",
        f"/dev/shm/pycodegen-attack-{TOKEN}",
        f"/run/lock/pycodegen-attack-{TOKEN}",
        f"/escaped-{TOKEN}",
    ):
        assert not Path(leftover).exists(), f"{name} wrote {leftover}"
    assert "hunter2" not in attack.stdout
    assert hits == []


def test_daemon_never_writes_later(executor: Executor, canary: Path) -> None:
    """The daemon attack sleeps 1 s before writing: wait past that and look again."""
    program = attacks(canary, 1)["daemon writing after the verdict"]
    (verdict,) = list(executor.map([Job("attack/daemon-late", 0, program, TEST, entry_points=["f"])]))
    assert not verdict.passed
    time.sleep(1.5)
    assert canary.read_text() == "intact" and not Path(f"/tmp/pycodegen-attack-{TOKEN}-daemon").exists()
    assert sandbox_processes() == []


def test_outcomes_are_the_expected_kinds(executor: Executor, canary: Path) -> None:
    table = attacks(canary, 1)
    expected = {
        "busy loop": "timeout",
        "long C-level computation": "timeout",
        "unbounded memory": "out of memory",
        "always-equal return object": "error",
        "sys.exit(0) before the tests": "error",
        "os._exit(0) before the tests": "error",
        "raising a BaseException subclass": "error",
        "monkey-patching the checker": "failed",
        "reading stdin": "failed",
        "one huge file": "error",
    }
    jobs = [Job(f"kind/{name}", 0, table[name], TEST, entry_points=["f"]) for name in expected]
    got = {v.task_id.split("/", 1)[1]: v for v in executor.map(jobs)}
    assert {k: v.outcome for k, v in got.items()} == expected, {k: v.detail for k, v in got.items()}
    assert "not plain data" in got["always-equal return object"].detail
    assert "SystemExit" in got["sys.exit(0) before the tests"].detail
    assert "File too large" in got["one huge file"].detail  # RLIMIT_FSIZE
