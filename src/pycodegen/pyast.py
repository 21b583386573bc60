"""Parsing untrusted Python text: the one guard every caller uses (model output and scraped sources can
make `ast.parse` raise more than SyntaxError)."""

from __future__ import annotations

import ast

# What ast.parse raises on hostile or broken text: bad syntax, NUL bytes (ValueError), nesting deeper
# than the parser's recursion limit, and pathological sizes.
PARSE_ERRORS = (SyntaxError, ValueError, RecursionError, MemoryError)


def try_parse(code: str, filename: str = "<unknown>") -> ast.Module | None:
    """The module's AST, or None when `code` is not parseable Python.

    >>> try_parse("x = 1") is not None, try_parse("def f(:"), try_parse("x\\0")
    (True, None, None)
    """
    try:
        return ast.parse(code, filename=filename)
    except PARSE_ERRORS:
        return None
