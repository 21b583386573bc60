"""Decontamination: drop training records that reproduce an evaluation problem.

Words are identifiers, keywords, numbers and string words (punctuation is not counted, so runs like
`] for i in range(0, len(` do not match on brackets alone). A record is contaminated by a problem when

- the runs of at least `n` words (default 10) it shares with the problem cover at least `min_overlap`
  (default 0.5) of the problem's *distinctive* words — its description and reference solution
  together, or its reference solution alone (a copied solution without the problem statement: a
  HumanEval solution is a quarter of its problem's words), or
- it defines a function with the same name and argument names as a problem whose prompt is that
  signature (HumanEval style; dunder methods excepted: `__eq__(self, other)` is everywhere).

Why not "any shared n-gram": on MBPP that dropped 131 of the 474 non-test rows, many on phrases that
unrelated problems share ("Write a python function to check whether the given number" alone caused 4).
So an n-gram that occurs in two or more evaluation problems is boilerplate, not one problem's own text:
it is not evidence, and the words only such n-grams cover are not counted in a problem's size either (a
verbatim copy still covers 100 % of what is left). And one shared phrase is not a copy of the problem: a
record must reproduce a share of it. MBPP's function names are reused across unrelated problems
(`Check_Solution`, `text_match`, `Extract`: every record the name alone matched was a different
problem), so MBPP-style problems are matched by words only.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pycodegen.benchmarks import humaneval_path, load_humaneval_file, mbpp_rows
from pycodegen.data.formats import read_dataset
from pycodegen.pyast import try_parse

WORD_RE = re.compile(r"\w+")
COMMON_IN = 2  # an n-gram found in this many evaluation problems is boilerplate, not evidence

Signature = tuple[str, tuple[str, ...]]


@dataclass
class EvalProblem:
    """One evaluation problem as decontamination sees it."""

    task_id: str
    description: str  # what the model is shown: a HumanEval prompt, an MBPP description
    solution: str  # the reference solution
    signatures: set[Signature] = field(default_factory=set)  # only where the prompt is a signature

    @property
    def text(self) -> str:
        return f"{self.description}\n{self.solution}"


def function_signatures(code: str) -> set[Signature]:
    """(name, argument names) of every function defined in `code`; empty if it does not parse.

    >>> sorted(function_signatures("def add(a, b):\\n    return a + b\\n"))
    [('add', ('a', 'b'))]
    """
    tree = try_parse(code)
    if tree is None:
        return set()
    keys = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            a = node.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
            if a.vararg:
                names.append("*" + a.vararg.arg)
            if a.kwarg:
                names.append("**" + a.kwarg.arg)
            if not (node.name.startswith("__") and node.name.endswith("__")):
                keys.add((node.name, tuple(names)))
    return keys


def load_humaneval() -> list[EvalProblem]:
    """HumanEval (from pycodegen.benchmarks): prompt + canonical solution, and the prompt's signature."""
    return [
        EvalProblem(
            p.task_id, p.prompt, p.canonical_solution or "", function_signatures(p.prompt + "    pass\n")
        )
        for p in load_humaneval_file(humaneval_path())
    ]


def load_mbpp_test() -> list[EvalProblem]:
    """The MBPP test split (pycodegen.benchmarks' split table): description + reference code."""
    return [EvalProblem(f"mbpp/{r['task_id']}", r["text"], r["code"]) for r in mbpp_rows("test")]


def load_eval_file(path: Path) -> list[EvalProblem]:
    """Problems from any dataset file pycodegen can read (HumanEval-style JSONL, MBPP, ...)."""
    read = read_dataset(path)
    problems = []
    for r in read.records:
        prompt = r.extra.get("prompt", "") if r.origin == "humaneval" else ""
        solution = r.code[len(prompt) :] if prompt and r.code.startswith(prompt) else r.code
        sigs = set() if r.origin == "mbpp" else function_signatures(r.code)
        problems.append(EvalProblem(f"{path.name}:{r.id}", r.text, solution, sigs))
    return problems


class Decontaminator:
    """Checks texts against a set of evaluation problems (see the module docstring for the rule)."""

    def __init__(self, problems: list[EvalProblem], n: int = 10, min_overlap: float = 0.5) -> None:
        if not 0 < min_overlap <= 1:
            raise ValueError("min_overlap must be in (0, 1]")
        self.n, self.min_overlap, self.problems = n, min_overlap, problems
        occurrences: dict[tuple[str, ...], list[tuple[int, int]]] = {}  # n-gram → (problem, start)
        self.solution_start: list[int] = []  # word position where each problem's solution begins
        for k, p in enumerate(problems):
            self.solution_start.append(len(WORD_RE.findall(p.description)))
            tokens = WORD_RE.findall(p.text)
            for i in range(len(tokens) - n + 1):
                occurrences.setdefault(tuple(tokens[i : i + n]), []).append((k, i))
        self.index: dict[tuple[str, ...], list[tuple[int, int]]] = {}
        self.common = 0
        covered: list[set[int]] = [set() for _ in problems]
        for gram, occ in occurrences.items():
            if len({k for k, _ in occ}) >= COMMON_IN:
                self.common += 1
                continue
            self.index[gram] = occ
            for k, start in occ:
                covered[k].update(range(start, start + n))
        self.size = [len(c) for c in covered]  # distinctive words per problem
        self.solution_size = [
            len([i for i in c if i >= s]) for c, s in zip(covered, self.solution_start, strict=True)
        ]
        self.vocab = {t for gram in self.index for t in gram}
        self.signatures: dict[Signature, str] = {}
        for p in problems:
            for sig in p.signatures:
                self.signatures.setdefault(sig, p.task_id)

    def check(self, text: str, signatures: set[Signature] | None = None) -> dict[str, Any] | None:
        """None if clean, else what matched: reason, the evaluation task, and the evidence.

        >>> solution = "def add(a, b):\\n    total = a + b\\n    return total\\n"
        >>> problem = EvalProblem("t/0", "Add two numbers.", solution, {("add", ("a", "b"))})
        >>> d = Decontaminator([problem], n=5)
        >>> d.check("Add two numbers.\\ndef add(x, y): return x * y")  # one phrase: 5 of 12 words
        >>> d.check("def add(a, b): pass", function_signatures("def add(a, b): pass"))["reason"]
        'signature'
        >>> d.check("def plus(a, b):\\n    total = a + b\\n    return total\\n")
        {'reason': 'ngram', 'matched': 't/0', 'evidence': 'a b total a b', 'overlap': 0.78}
        """
        for sig in sorted(signatures or ()):
            if sig in self.signatures:
                return {
                    "reason": "signature",
                    "matched": self.signatures[sig],
                    "evidence": f"{sig[0]}({', '.join(sig[1])})",
                }
        tokens = WORD_RE.findall(text)
        n, vocab, index = self.n, self.vocab, self.index
        covered: dict[int, set[int]] = {}  # problem → its word positions this text reproduces
        first: dict[int, tuple[str, ...]] = {}
        run = 0  # consecutive tokens that occur in some evaluation n-gram: only such windows can match
        for i, tok in enumerate(tokens):
            run = run + 1 if tok in vocab else 0
            if run < n:
                continue
            gram = tuple(tokens[i - n + 1 : i + 1])
            for k, start in index.get(gram, ()):
                covered.setdefault(k, set()).update(range(start, start + n))
                first.setdefault(k, gram)
        if not covered:
            return None
        best = min(covered, key=lambda k: (-self.overlap(k, covered[k]), k))
        share = self.overlap(best, covered[best])
        if share < self.min_overlap:
            return None
        return {
            "reason": "ngram",
            "matched": self.problems[best].task_id,
            "evidence": " ".join(first[best]),
            "overlap": round(share, 2),
        }

    def overlap(self, k: int, covered: set[int]) -> float:
        """The larger share of problem `k`'s distinctive words that `covered` holds: of the whole problem,
        or of its solution alone."""
        whole = len(covered) / self.size[k]
        if not self.solution_size[k]:
            return whole
        start = self.solution_start[k]
        return max(whole, len([i for i in covered if i >= start]) / self.solution_size[k])
