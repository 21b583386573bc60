"""Post-processing of raw generations: code-block extraction, stop sequences, keeping the target function.

The raw text is always kept next to the processed completion in samples.jsonl.
"""

from __future__ import annotations

import ast
import re

from pycodegen.pyast import try_parse

# Codex-paper stop sequences for raw completion of a function body.
HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert "]
CODE_BLOCK = re.compile(r"```(?:[Pp]ython3?|py)?[^\n]*\n(.*?)(?:```|$)", re.S)


CLOSED_CODE_BLOCK = re.compile(r"```[^\n]*\n.*?\n```", re.S)


def code_block_end(text: str) -> int | None:
    r"""The index just past the first closed fenced code block, or None while none has closed.

    >>> text = "Here:\n```python\nx = 1\n```\nIt sets x."
    >>> text[: code_block_end(text)]
    'Here:\n```python\nx = 1\n```'
    >>> code_block_end("```python\nx = 1\n") is None
    True
    """
    match = CLOSED_CODE_BLOCK.search(text)
    return match.end() if match else None


def extract_code_block(text: str) -> str | None:
    """The first fenced code block (closed or not), else None.

    >>> extract_code_block("Sure:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    >>> extract_code_block("no code") is None
    True
    """
    match = CODE_BLOCK.search(text)
    return match.group(1) if match else None


def keep_function(code: str, name: str) -> str:
    """Imports, helper definitions and the target function from `code`; top-level calls and prints dropped.

    >>> print(keep_function("import math\\ndef f(x):\\n    return math.sqrt(x)\\nprint(f(4))\\n", "f"))
    import math
    def f(x):
        return math.sqrt(x)
    """
    tree = try_parse(code)
    if tree is None:
        return code
    if not any(isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == name for n in tree.body):
        return code
    keep = (
        ast.Import,
        ast.ImportFrom,
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.Assign,
        ast.AnnAssign,
    )
    lines = code.splitlines()
    kept = []
    for node in tree.body:
        if isinstance(node, keep):
            start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
            kept.append("\n".join(lines[start - 1 : node.end_lineno]))
    return "\n".join(kept)


def truncate(text: str, stops: list[str]) -> str:
    """Cut at the earliest stop sequence.

    >>> truncate("    return 1\\ndef g():\\n", HUMANEVAL_STOPS)
    '    return 1'
    """
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def postprocess(raw: str, *, mode: str, entry_point: str, style: str) -> str:
    """The completion to execute, from a raw generation.

    Raw completion of a HumanEval prompt: the continuation cut at the stop sequences. Chat/instruction
    output, or any MBPP answer: the code block if there is one, reduced to imports, helpers and the
    target function.
    """
    if mode == "raw" and style == "humaneval":
        block = extract_code_block(raw)
        return truncate(raw, HUMANEVAL_STOPS) if block is None else keep_function(block, entry_point)
    code = extract_code_block(raw)
    if code is None:
        code = raw
    return keep_function(code, entry_point)
