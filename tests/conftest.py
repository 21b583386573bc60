"""Shared fixtures: paths to the real datasets beside the repository, and small source trees."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert (SHARED_DATA / "mbpp.jsonl").is_file(), f"expected the shared datasets in {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def humaneval_rows() -> list[dict]:
    from pycodegen.benchmarks import humaneval_path

    return [json.loads(x) for x in gzip.decompress(humaneval_path().read_bytes()).decode().splitlines() if x]


GOOD_MODULE = '''\
"""A small module."""

import math


def area(radius):
    """Area of a circle of the given radius."""
    # pi r squared
    return math.pi * radius ** 2


class Shape:
    """A shape."""

    def scaled(self, factor):
        """Return a copy scaled by factor."""
        return Shape()

    def undocumented(self):
        return 1


def helper(x):
    return x + 1
'''


@pytest.fixture
def messy_tree(tmp_path: Path, humaneval_rows: list[dict]) -> Path:
    """A tree with every kind of bad file, duplicates, and a HumanEval problem pasted in."""
    root = tmp_path / "tree"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "geometry.py").write_text(GOOD_MODULE)
    (root / "pkg" / "copy_of_geometry.py").write_text(GOOD_MODULE)  # exact duplicates of every function
    (root / "pkg" / "latin1.py").write_bytes('def f():\n    """caf\xe9"""\n    return 1\n'.encode("latin-1"))
    (root / "pkg" / "broken.py").write_text("def f(:\n    return 1\n")
    (root / "pkg" / "huge.py").write_text('def big():\n    """Big."""\n    return 1\n' + "x = 1\n" * 400_000)
    he = humaneval_rows[0]
    (root / "pkg" / "leaked.py").write_text(he["prompt"] + he["canonical_solution"])
    for i in range(12):
        (root / f"mod{i}.py").write_text(
            f'def func_{i}(value, scale={i}):\n    """Scale value number {i} by a factor."""\n'
            f"    result = value * scale + {i}\n    for k in range({i}):\n        result += k * {i}\n"
            "    return result\n"
        )
    (root / "Main.java").write_text("public class Main { public static void main(String[] a) { } }\n")
    (root / "site-packages").mkdir()
    (root / "site-packages" / "ignored.py").write_text("def ignored():\n    '''x'''\n    return 1\n")
    return root


MODULE = '''
def scale(values, factor):
    """Multiply every value by factor."""
    return [v * factor for v in values]


def total(values):
    """Add the values up."""
    result = 0
    for v in values:
        result += v
    return result
'''


def functions_dataset(tmp_path_factory: pytest.TempPathFactory, files: int) -> Path:
    """A docstring→body dataset of `files` small modules (MODULE with renamed functions), with a BPE
    trained on it: what the model-family and trainer tests train on."""
    from rich.console import Console

    from pycodegen.config import PrepareConfig
    from pycodegen.data.prepare import prepare

    src = tmp_path_factory.mktemp("src")
    for i in range(files):
        (src / f"m{i}.py").write_text(MODULE.replace("scale", f"scale{i}").replace("total", f"total{i}"))
    out = tmp_path_factory.mktemp("data") / "functions"
    settings = {"train_tokenizer": True, "vocab_size": 300, "workers": 1, "dedup": False}
    prepare(
        PrepareConfig(source=str(src), out=out, valid_fraction=0.1, test_fraction=0, **settings),
        Console(quiet=True),
    )
    return out
