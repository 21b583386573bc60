"""The records every source is turned into, before a task view is built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FunctionRecord:
    """One function or method parsed from Python source."""

    qualname: str
    name: str
    signature: str  # e.g. "def f(a, b=1) -> int:", rebuilt from the AST
    arg_names: list[str]
    docstring: str | None
    prompt: str  # decorators + header + docstring, as written (the docstring-to-body prompt)
    body: str  # the statements after the docstring, as written
    source: str  # the whole function, dedented to column 0
    decorators: list[str]
    path: str  # relative to the source root (or the dataset record id)
    lineno: int
    end_lineno: int
    class_name: str | None
    group: str  # split unit: file path or repository

    @property
    def signature_key(self) -> tuple[str, tuple[str, ...]]:
        """(name, argument names): what decontamination compares with an evaluation prompt's signature."""
        return (self.name, tuple(self.arg_names))


@dataclass
class FileRecord:
    """One whole source file (for language-model windows)."""

    path: str
    lang: str
    text: str
    group: str


@dataclass
class PairRecord:
    """A natural-language description and its code, from an instruction/pair dataset."""

    id: str
    text: str
    code: str
    group: str
    origin: str  # dataset format name
    tests: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
