"""Cleaning from the HUST system: indentation normalisation, comment stripping, and code filters.

Both rewrites use `tokenize`, so strings and docstrings are never touched; code that does not tokenize
(another language, a fragment) is returned unchanged.
"""

from __future__ import annotations

import ast
import io
import tokenize

from pycodegen.pyast import try_parse


def _tokens(code: str) -> list[tokenize.TokenInfo] | None:
    try:
        return list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None


def normalize_indent(code: str, width: int = 4) -> str:
    """Re-indent each logical line to `width` spaces per block level; tabs become spaces.

    >>> print(normalize_indent("def f(x):\\n\\tif x:\\n\\t\\treturn 1\\n"), end="")
    def f(x):
        if x:
            return 1
    >>> normalize_indent("def f():\\n  s = '''\\n\\tkeep\\n'''\\n  return s\\n")
    "def f():\\n    s = '''\\n\\tkeep\\n'''\\n    return s\\n"
    """
    tokens = _tokens(code)
    if tokens is None:
        return code
    lines = code.splitlines(keepends=True)
    depth = 0
    starts: dict[int, int] = {}  # physical line (1-based) that starts a logical line → depth
    new_logical = True
    for tok in tokens:
        if tok.type == tokenize.INDENT:
            depth += 1
        elif tok.type == tokenize.DEDENT:
            depth -= 1
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            new_logical = tok.type == tokenize.NEWLINE or new_logical
        elif tok.type == tokenize.COMMENT and new_logical:
            starts.setdefault(tok.start[0], depth)
        elif tok.type != tokenize.ENDMARKER and new_logical:
            starts[tok.start[0]] = depth
            new_logical = False
    out = []
    for i, line in enumerate(lines, start=1):
        if i in starts:
            line = " " * (width * starts[i]) + line.lstrip(" \t")
        out.append(line)
    return "".join(out)


def strip_comments(code: str) -> str:
    """Remove `#` comments; lines that held only a comment go too. Strings and docstrings stay.

    >>> print(strip_comments("# header\\nx = '# not a comment'  # trailing\\n"), end="")
    x = '# not a comment'
    """
    tokens = _tokens(code)
    if tokens is None:
        return code
    lines = code.splitlines(keepends=True)
    cut: dict[int, int] = {tok.start[0]: tok.start[1] for tok in tokens if tok.type == tokenize.COMMENT}
    out = []
    for i, line in enumerate(lines, start=1):
        if i in cut:
            kept = line[: cut[i]].rstrip()
            if not kept:
                continue
            line = kept + "\n"
        out.append(line)
    return "".join(out)


def parses(code: str) -> bool:
    """Whether the code parses as Python.

    >>> parses("def f(): return 1"), parses("def f(:")
    (True, False)
    """
    return try_parse(code) is not None


def defines_function_that_returns(code: str) -> bool:
    """Whether the code defines a function containing a `return` with a value.

    >>> defines_function_that_returns("def f(x):\\n    return x + 1\\n")
    True
    >>> defines_function_that_returns("def f(x):\\n    print(x)\\n")
    False
    """
    tree = try_parse(code)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(node)):
                return True
    return False
