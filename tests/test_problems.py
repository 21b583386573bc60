"""`prepare --task problems`: doctested functions of a source tree → verified HumanEval-format problems."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from pycodegen.benchmarks import load_humaneval_file
from pycodegen.config import PrepareConfig
from pycodegen.data.prepare import prepare
from pycodegen.errors import ConfigError

TREE = '''
import math
from functools import reduce

SCALE = 3


def _helper(x):
    return x * SCALE


def good(n: int) -> int:
    """Triple n.

    >>> good(2)
    6
    >>> xs = [1, 2]
    >>> good(len(xs))
    6
    """
    return _helper(n)


def broken(n):
    """The example is wrong: the original body does not pass it.

    >>> broken(2)
    5
    """
    return n + 2


def trivial(n):
    """A body that returns None passes this.

    >>> trivial(3) is None
    True
    """
    return None


def raises(n):
    """
    >>> raises(-1)
    Traceback (most recent call last):
        ...
    ValueError: negative
    >>> raises(4)
    2.0
    """
    if n < 0:
        raise ValueError("negative")
    return math.sqrt(n)


def printed(n):
    """Printed text is not a value: no check, no problem.

    >>> print(n)
    hello
    """
    return n


def third_party(n):
    """
    >>> third_party(1)
    1
    """
    import numpy  # a local import of a third-party module: the sandbox has only the standard library

    return int(numpy.int64(n))


class Box:
    def method(self, n):
        """
        >>> Box().method(1)
        1
        """
        return n
'''


@pytest.fixture(scope="module")
def mined(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("tree")
    (root / "mod.py").write_text(TREE)
    out = root.parent / (root.name + "-out")
    cfg = PrepareConfig(
        source=str(root), out=out, task="problems", valid_fraction=0, test_fraction=0, builtin_eval_sets=False
    )
    manifest = prepare(cfg, Console(file=io.StringIO()))
    return out, manifest


def test_good_problems_are_kept_broken_and_trivial_ones_dropped(mined: tuple[Path, dict]) -> None:
    out, manifest = mined
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert sorted(r["entry_point"] for r in rows) == ["good", "raises"]
    counts = manifest["counts"]
    assert counts["dropped_original_fails"] == 2  # broken, and third_party (no numpy in the sandbox)
    assert counts["dropped_trivial_test"] == 1
    assert counts["no_value_checks"] == 1  # printed
    assert counts["not_top_level_function"] >= 1  # Box.method


def test_a_problem_carries_what_it_needs_and_nothing_else(mined: tuple[Path, dict]) -> None:
    out, _ = mined
    good = next(json.loads(x) for x in (out / "train.jsonl").read_text().splitlines() if "good" in x)
    assert good["prompt"].startswith("SCALE = 3\n")  # the helper and the constant it reads, in module order
    assert "def _helper(x):" in good["prompt"] and "import math" not in good["prompt"]
    assert good["prompt"].rstrip().endswith('"""') and good["canonical_solution"] == "    return _helper(n)\n"
    assert "xs = [1, 2]" in good["test"]  # a statement example runs so that later examples can use it
    raises = next(json.loads(x) for x in (out / "train.jsonl").read_text().splitlines() if "raises" in x)
    assert raises["prompt"].startswith("import math\n")
    assert "except ValueError:" in raises["test"]


def test_the_output_is_a_problems_file_evaluate_accepts(mined: tuple[Path, dict]) -> None:
    out, _ = mined
    problems = load_humaneval_file(out / "train.jsonl")
    assert {p.entry_point for p in problems} == {"good", "raises"}
    assert all(p.check == "check" and p.canonical_solution for p in problems)


def test_problems_mine_a_tree_not_a_dataset(tmp_path: Path) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "x", "output": "def f():\n    return 1\n"}) + "\n")
    with pytest.raises(ConfigError, match="mines a source tree"):
        prepare(
            PrepareConfig(source=str(data), out=tmp_path / "o", task="problems"), Console(file=io.StringIO())
        )


def test_a_slow_original_is_retried_with_more_time_and_a_hanging_one_counted_apart() -> None:
    from pycodegen.data.problems import verify
    from pycodegen.sandbox.executor import Executor

    def problem(name: str, body: str) -> dict:
        prompt = f'def {name}(n):\n    """Return n."""\n'
        test = "\n\ndef check(candidate):\n    assert candidate(1) == 1\n"
        return {
            "task_id": name,
            "prompt": prompt,
            "canonical_solution": body,
            "test": test,
            "entry_point": name,
        }

    slow = problem("slow", "    import time\n    time.sleep(1.5)\n    return n\n")  # over 1 s, under 3 s
    hangs = problem("hangs", "    while True:\n        pass\n")
    with Executor(workers=2, timeout=1.0) as executor:
        kept, counts = verify([slow, hangs], executor)
        assert executor.timeout == 1.0  # the retry's longer limit is not left behind
    assert [p["task_id"] for p in kept] == ["slow"]
    assert counts == {"dropped_original_times_out": 1}
