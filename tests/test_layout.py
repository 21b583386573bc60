"""The house is one-way: every import of the package follows the tiers of ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pycodegen"

CORE = {
    "errors",
    "config",
    "console",
    "jsonl",
    "pyast",
    "templates",
    "zoo",
    "metrics",
    "sandbox",
    "benchmarks",
    "__init__",
}
# What each room may import from the package besides core (ARCHITECTURE.md, "Allowed arrows").
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    # models read the tokenizers and the dataset-directory contract (retrieval searches a dataset dir).
    "models": {"data.tokenizers", "data.dataset_dir"},
    "train": {"models", "data"},
    "generate": {"models"},
    # evaluate.dev implements the trainer's callback protocol (train/callbacks.py imports nothing).
    "evaluate": {"generate", "models", "train.callbacks"},
    "serve": {"generate", "models"},
}
TOP = {"cli", "recipe", "selftrain", "__main__"}


def room(module: str) -> str:
    """'pycodegen.data.prepare' → 'data'; core modules → 'core'; cli/recipe → 'top'."""
    first = module.split(".")[1] if module.count(".") else "__init__"
    if first in CORE:
        return "core"
    return "top" if first in TOP else first


def imports(path: Path) -> list[tuple[int, str]]:
    """Every `pycodegen.*` module imported by a file (lazy imports inside functions included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pycodegen" or node.module.startswith("pycodegen."):
                # `from pycodegen.models import hf` imports the module pycodegen.models.hf
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.append((node.lineno, sub if is_module(sub) else node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("pycodegen.")]
    return sorted(set(found))


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or path.is_dir()


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def allowed(source: str, target: str) -> bool:
    src, dst = room(source), room(target)
    if dst == "core" or src == "top" or src == dst:
        return True
    if src == "core":
        return False
    rest = target.split(".", 1)[1]
    return any(rest == a or rest.startswith(a + ".") for a in ALLOWED.get(src, set()))


FILES = sorted(p for p in PACKAGE.rglob("*.py") if "sandbox" not in p.parts or p.name != "sandbox_server.py")


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path: Path) -> None:
    source = module_name(path)
    backward = [f"line {n}: {t}" for n, t in imports(path) if not allowed(source, t)]
    assert not backward, f"{source} imports against the flow: {backward}"


def type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines inside `if TYPE_CHECKING:` blocks (imports there never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def test_no_import_circles_between_modules() -> None:
    """No module imports one that (directly or through others) imports it back, lazy imports inside
    functions included: a registry that imports its own plug-ins is such a circle."""
    graph: dict[str, set[str]] = {}
    for path in FILES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = type_checking_lines(tree)
        name = module_name(path)
        graph[name] = {t for n, t in imports(path) if n not in skip and t != name and t != "pycodegen"}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " → ".join([*trail, node, dep]))
            if dep in graph and not state.get(dep):
                visit(dep, [*trail, node])
        state[node] = 2

    for module in sorted(graph):
        if not state.get(module):
            visit(module, [])


def test_the_checker_catches_a_backward_import() -> None:
    assert not allowed("pycodegen.models.hf", "pycodegen.generate.decoding")
    assert not allowed("pycodegen.metrics", "pycodegen.data.prepare")
    assert allowed("pycodegen.models.hf", "pycodegen.data.tokenizers")
    assert allowed("pycodegen.evaluate.score", "pycodegen.generate.samples")
    assert allowed("pycodegen.cli", "pycodegen.train.loop")
