"""JSON Lines files, the one way: read with FILE:LINE errors, write atomically, append one row durably."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pycodegen.errors import DataError


def parse_lines(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of JSONL `text` read from `path`; a line that does not
    decode gives a `DataError` ("FILE:LINE: invalid JSON: ...") as its value, so that a caller can stop,
    or skip and count it. Errors Python's parser raises besides JSONDecodeError (a 5,000-digit number,
    nesting deeper than the recursion limit) are reported the same way."""
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line)
        except json.JSONDecodeError as exc:
            yield line_no, DataError(f"{path}:{line_no}: invalid JSON: {exc.msg} (column {exc.colno})")
        except (ValueError, RecursionError) as exc:
            message = f"{path}:{line_no}: invalid JSON: {type(exc).__name__}: {exc}"[:300]
            yield line_no, DataError(message)


def read_text(path: Path) -> str:
    """The UTF-8 text of `path`, gunzipped when it ends in .gz; errors name the file."""
    try:
        raw = Path(path).read_bytes()
        return (gzip.decompress(raw) if str(path).endswith(".gz") else raw).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def iter_jsonl(path: Path, *, skip_bad: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for every non-blank line of `path` (gzipped when it ends in .gz).

    A line that is not JSON raises `DataError("FILE:LINE: invalid JSON: ...")`, or with `skip_bad` is
    skipped.
    """
    for line_no, value in parse_lines(path, read_text(path)):
        if isinstance(value, DataError):
            if skip_bad:
                continue
            raise value
        yield line_no, value


def read_jsonl(path: Path, *, require_objects: bool = True) -> list[Any]:
    """Every row of a JSONL file; with `require_objects`, a row that is not a JSON object names its line.

    >>> import tempfile
    >>> p = Path(tempfile.mkdtemp()) / "x.jsonl"
    >>> _ = p.write_text('{"a": 1}\\n\\n{"a": 2}\\n')
    >>> read_jsonl(p)
    [{'a': 1}, {'a': 2}]
    >>> _ = p.write_text('{"a": 1}\\n{"a": \\n')
    >>> try:
    ...     read_jsonl(p)
    ... except DataError as exc:
    ...     print(str(exc).replace(str(p), "x.jsonl"))
    x.jsonl:2: invalid JSON: Expecting value (column 7)
    """
    rows = []
    for line_no, value in iter_jsonl(path):
        if require_objects and not isinstance(value, dict):
            raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(value).__name__}")
        rows.append(value)
    return rows


def dumps(row: Any) -> str:
    """One JSONL line (no trailing newline), non-ASCII kept as is."""
    return json.dumps(row, ensure_ascii=False)


def write_jsonl(path: Path, rows: Iterable[Any]) -> int:
    """Write `rows` to `path` atomically (a temporary file renamed over it); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps(row) + "\n")
            count += 1
    tmp.replace(path)
    return count


def write_json(path: Path, data: Any) -> None:
    """A JSON document (indented, newline-terminated), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


class AppendLog:
    """An append-only JSONL file: each row is flushed and fsynced before `append` returns, so a kill
    loses at most the row being written (readers drop a torn last line)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = self.path.open("a", encoding="utf-8")

    def append(self, row: Any) -> None:
        self.fh.write(dumps(row) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()

    def __enter__(self) -> AppendLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
