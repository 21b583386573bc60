"""Task views: how a cleaned, split item becomes a training row. Each view is a named, documented format.

- `docstring-to-body` (Stanford system, CodeSearchNet style): {id, prompt, target, path, qualname,
  signature, lineno, docstring}; prompt = decorators + signature + docstring as written, target = the body.
- `instruction` (HUST system): {id, instruction, prompt, target, tests}; prompt = the instruction in the
  HUST template, in the model's chat template (`messages` also kept), or plain.
- `lm-windows` (Autocoder): {id, path, lang, start, input_ids}; windows of `window` tokens every `stride`
  tokens over whole files, with the language control token first and EOS last.
- `char-stream` (char-RNN baseline): {id, text}; sequences of `seq_len` characters; vocab in vocab.json.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from typing import Any

from pycodegen.data.records import FileRecord, FunctionRecord, PairRecord
from pycodegen.pyast import try_parse
from pycodegen.templates import fenced, humaneval_instruction, hust_prompt, mbpp_instruction


@dataclass
class Item:
    """One unit that is cleaned, deduplicated, decontaminated and split as a whole."""

    id: str
    group: str
    code: str
    text: str
    lang: str
    record: FunctionRecord | FileRecord | PairRecord
    signatures: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    tests: list[str] = field(default_factory=list)

    @property
    def dedup_key(self) -> str:
        return f"{self.text}\n{self.code}" if self.text else self.code


def docstring_row(item: Item) -> dict[str, Any]:
    fn = item.record
    assert isinstance(fn, FunctionRecord)
    return {
        "id": item.id,
        "prompt": fn.prompt,
        "target": fn.body,
        "path": fn.path,
        "qualname": fn.qualname,
        "signature": fn.signature,
        "lineno": fn.lineno,
        "docstring": fn.docstring or item.text,
    }


def without_docstring(code: str, name: str) -> str:
    """`code` with the docstring of its function `name` cut out (the lines it spans), else unchanged.

    >>> without_docstring("def f(x):\\n    'Twice x.'\\n    return 2 * x\\n", "f")
    'def f(x):\\n    return 2 * x\\n'
    """
    tree = try_parse(code)
    if tree is None:
        return code
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            first = node.body[0] if node.body else None
            if (
                len(node.body) > 1
                and isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and first.end_lineno is not None
            ):
                lines = code.splitlines(keepends=True)
                return "".join(lines[: first.lineno - 1] + lines[first.end_lineno :])
    return code


def eval_form(item: Item) -> tuple[str, str]:
    """(instruction, code) as `evaluate` asks a benchmark-format pair: a HumanEval-format problem gets
    evaluate's wording and is answered without re-writing its docstring; an MBPP problem gets its tests
    in the instruction. Other pairs are unchanged."""
    record = item.record
    if isinstance(record, PairRecord) and record.origin == "humaneval":
        entry = str(record.extra.get("entry_point", ""))
        return humaneval_instruction(str(record.extra.get("prompt", item.text))), without_docstring(
            item.code, entry
        )
    if isinstance(record, PairRecord) and record.origin == "mbpp" and record.extra.get("test_list"):
        return mbpp_instruction(item.text, list(record.extra["test_list"])), item.code
    return item.text, item.code


def instruction_row(
    item: Item, template: str, tokenizer: Any | None, eval_format: bool = False
) -> dict[str, Any]:
    text, code = eval_form(item) if eval_format else (item.text, item.code)
    row: dict[str, Any] = {"id": item.id, "instruction": text}
    if template == "hust":
        row["prompt"] = hust_prompt(text)
    elif template == "chat":
        messages = [{"role": "user", "content": text}]
        row["messages"] = messages
        row["prompt"] = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        row["prompt"] = text
    row["target"] = fenced(code) if eval_format and template == "chat" else code
    row["tests"] = item.tests
    return row


def window_starts(n_tokens: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows covering a sequence; the last window is aligned to the end.

    >>> window_starts(10, 4, 3)
    [0, 3, 6]
    >>> window_starts(11, 4, 3)
    [0, 3, 6, 7]
    >>> window_starts(3, 4, 3)
    [0]
    """
    if n_tokens <= window:
        return [0]
    starts = list(range(0, n_tokens - window + 1, stride))
    if starts[-1] + window < n_tokens:
        starts.append(n_tokens - window)
    return starts


def char_chunks(text: str, seq_len: int) -> list[str]:
    """Non-overlapping sequences of `seq_len` characters (the last may be shorter).

    >>> char_chunks("abcdefg", 3)
    ['abc', 'def', 'g']
    """
    return [text[i : i + seq_len] for i in range(0, len(text), seq_len)]
