"""Turning code back into records after it changed: a pair's code into a documented function record, and a
cleaned (re-indented, comment-stripped) item into an item whose record matches its new code."""

from __future__ import annotations

from pycodegen.data.python_tree import extract_functions
from pycodegen.data.records import FileRecord, FunctionRecord, PairRecord
from pycodegen.data.tasks import Item
from pycodegen.pyast import try_parse


def reparse_function(source: str, like: FunctionRecord) -> FunctionRecord | None:
    """Re-extract a function from rewritten source, keeping its origin (path, line, class)."""
    tree = try_parse(source)
    if tree is None:
        return None
    found = extract_functions(tree, source.splitlines(keepends=True), like.path, like.group)
    if not found:
        return None
    fn = found[0]
    fn.qualname, fn.class_name, fn.lineno, fn.end_lineno = (
        like.qualname,
        like.class_name,
        like.lineno,
        like.end_lineno,
    )
    return fn


def docstring_literal(text: str, indent: str = "") -> str:
    """A triple-quoted literal whose value is `text` (quotes and backslashes escaped).

    >>> import ast
    >>> samples = ['Say "hi"', "a \\\\ b", "x" + '"' * 3 + "y", "plain"]
    >>> [ast.literal_eval(docstring_literal(t)) == t for t in samples]
    [True, True, True, True]
    """
    quote3 = '"' * 3
    body = text.replace("\\", "\\\\").replace(quote3, '\\"' * 3)
    if body.endswith('"'):
        body = body[:-1] + '\\"'
    return quote3 + body.replace("\n", "\n" + indent) + quote3


def pair_to_function(pair: PairRecord) -> FunctionRecord | None:
    """The first function in a pair's code, its docstring taken from the pair's text if it has none.

    >>> code = "def add(a, b):\\n    return a + b\\n"
    >>> fn = pair_to_function(PairRecord("p/1", "Add two numbers.", code, "g", "x"))
    >>> print(fn.prompt + fn.body, end="")
    def add(a, b):
        \"\"\"Add two numbers.\"\"\"
        return a + b
    """
    tree = try_parse(pair.code)
    if tree is None:
        return None
    lines = pair.code.splitlines(keepends=True)
    found = [f for f in extract_functions(tree, lines, pair.id, pair.group) if f.body]
    if not found:
        return None
    fn = found[0]
    if fn.docstring is None:
        indent = fn.body[: len(fn.body) - len(fn.body.lstrip(" \t"))]
        fn.prompt += f"{indent}{docstring_literal(pair.text.strip(), indent)}\n"
        fn.docstring = pair.text.strip()
    return fn


def rewritten_item(item: Item, code: str, task: str) -> Item | None:
    """`item` with its code replaced by `code` and its record rebuilt to match; None if that fails
    (the docstring-to-body view needs a function with a body in the new code)."""
    record = item.record
    if isinstance(record, FunctionRecord) and task == "docstring-to-body":
        fn = reparse_function(code, record)
        if fn is None or not fn.body:
            return None
        if item.text and fn.docstring is None:  # a pair's description inserted as docstring
            fn = pair_to_function(PairRecord(item.id, item.text, code, item.group, "")) or fn
        record = fn
    elif isinstance(record, FileRecord):
        record = FileRecord(record.path, record.lang, code, record.group)
    return Item(item.id, item.group, code, item.text, item.lang, record, item.signatures, item.tests)
