"""Instruction/pair dataset formats: one reader per format, one registry, auto-detection from fields.

Every reader yields `(line, record)`; a malformed line raises `DataError` naming the file and line, or is
skipped and counted when `skip_bad` is set.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycodegen.data.records import PairRecord
from pycodegen.errors import DataError, unknown_name
from pycodegen.jsonl import parse_lines


@dataclass(frozen=True)
class DatasetFormat:
    """A pair dataset format: the fields that identify it and how a row becomes a `PairRecord`."""

    name: str
    required: tuple[str, ...]
    convert: Callable[[dict[str, Any], str], PairRecord]
    description: str


def _codealpaca(row: dict[str, Any], rid: str) -> PairRecord:
    text = row["instruction"].strip()
    if row.get("input"):
        text += "\n" + str(row["input"]).strip()
    return PairRecord(rid, text, row["output"], rid, "codealpaca")


def _mbpp(row: dict[str, Any], rid: str) -> PairRecord:
    tid = f"mbpp/{row['task_id']}" if "task_id" in row else rid
    setup = row.get("test_setup_code") or ""
    tests = ([setup] if setup else []) + list(row.get("test_list", []))
    extra = {"task_id": row.get("task_id"), "test_list": list(row.get("test_list", []))}
    return PairRecord(tid, row["text"], row["code"], tid, "mbpp", tests, extra)


def _codesearchnet(row: dict[str, Any], rid: str) -> PairRecord:
    code = row.get("original_string") or row["code"]
    group = row.get("repo") or row.get("path") or rid
    extra = {k: row[k] for k in ("func_name", "repo", "path", "url") if k in row}
    return PairRecord(rid, row["docstring"], code, str(group), "codesearchnet", [], extra)


def _conala(row: dict[str, Any], rid: str) -> PairRecord:
    text = row.get("rewritten_intent") or row["intent"]
    qid = row.get("question_id")
    return PairRecord(rid, text, row["snippet"], f"conala/{qid}" if qid is not None else rid, "conala")


def _xlcost(row: dict[str, Any], rid: str) -> PairRecord:
    return PairRecord(rid, row["text"], row["code"], rid, "xlcost")


def _humaneval(row: dict[str, Any], rid: str) -> PairRecord:
    tid = str(row["task_id"])
    code = row["prompt"] + (row.get("canonical_solution") or "")
    extra = {"entry_point": row["entry_point"], "prompt": row["prompt"]}
    return PairRecord(tid, row["prompt"], code, tid, "humaneval", [row["test"]], extra)


# Order matters for auto-detection: the most specific field set first (MBPP before XLCoST's text+code).
FORMATS: dict[str, DatasetFormat] = {
    f.name: f
    for f in (
        DatasetFormat(
            "humaneval", ("task_id", "prompt", "entry_point", "test"), _humaneval, "HumanEval JSONL"
        ),
        DatasetFormat("mbpp", ("text", "code", "test_list"), _mbpp, "MBPP JSONL (Austin et al. 2021)"),
        DatasetFormat(
            "codesearchnet", ("func_name", "docstring", "code"), _codesearchnet, "CodeSearchNet JSONL"
        ),
        DatasetFormat(
            "conala", ("intent", "snippet"), _conala, "CoNaLa JSON (intent, rewritten_intent, snippet)"
        ),
        DatasetFormat(
            "codealpaca",
            ("instruction", "output"),
            _codealpaca,
            "CodeAlpaca JSON (instruction, input, output)",
        ),
        DatasetFormat("xlcost", ("text", "code"), _xlcost, "XLCoST pairs JSONL (text, code)"),
    )
}


def detect_format(row: dict[str, Any]) -> DatasetFormat | None:
    """The first format whose required fields the row has.

    >>> detect_format({"text": "t", "code": "c", "test_list": []}).name
    'mbpp'
    >>> detect_format({"instruction": "i", "input": "", "output": "o"}).name
    'codealpaca'
    >>> detect_format({"foo": 1}) is None
    True
    """
    for fmt in FORMATS.values():
        if all(k in row for k in fmt.required):
            return fmt
    return None


def _open_text(path: Path) -> str:
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8") from None


def iter_rows(path: Path, text: str) -> Iterator[tuple[int, Any | DataError]]:
    """(line, row) for a JSON array or JSONL file; a row that does not decode is a `DataError` value."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        # A JSON array: decode element by element to know each element's line.
        decoder = json.JSONDecoder()
        pos = text.index("[") + 1
        while True:
            while pos < len(text) and text[pos] in " \t\r\n,":
                pos += 1
            if pos >= len(text):
                yield text.count("\n", 0, pos) + 1, DataError(f"{path}: JSON array is not closed")
                return
            if text[pos] == "]":
                return
            line = text.count("\n", 0, pos) + 1
            try:
                row, pos = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                yield exc.lineno, DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}")
                return  # the rest of an array cannot be re-synchronised reliably
            yield line, row
    else:
        yield from parse_lines(path, text)


@dataclass
class DatasetRead:
    """Records read from a dataset file, with what was skipped."""

    records: list[PairRecord]
    format: str
    rows: int
    bad_lines: list[str]


def read_dataset(path: Path, fmt: str = "auto", skip_bad: bool = False) -> DatasetRead:
    """Read a pair dataset; the format is detected from the first row unless named."""
    if fmt != "auto" and fmt not in FORMATS:
        raise unknown_name("dataset format", fmt, ["auto", *FORMATS])
    chosen = FORMATS.get(fmt)
    text = _open_text(path)
    records: list[PairRecord] = []
    bad: list[str] = []
    rows = 0
    stem = path.name.split(".")[0]
    for line, row in iter_rows(path, text):
        problem: str | None = None
        if isinstance(row, DataError):
            problem = str(row)
        elif not isinstance(row, dict):
            problem = f"{path}:{line}: expected a JSON object, got {type(row).__name__}"
        else:
            if chosen is None:
                chosen = detect_format(row)
                if chosen is None:
                    raise DataError(
                        f"{path}:{line}: cannot detect the dataset format from fields {sorted(row)}; "
                        f"pass --format (valid: {', '.join(FORMATS)})"
                    )
            missing = [k for k in chosen.required if k not in row]
            if missing:
                problem = f"{path}:{line}: missing field(s) {', '.join(missing)} for format {chosen.name}"
            else:
                try:
                    record = chosen.convert(row, f"{stem}/{line}")
                    if not isinstance(record.text, str) or not isinstance(record.code, str):
                        raise TypeError("text and code must be strings")
                    records.append(record)
                except (TypeError, AttributeError, KeyError) as exc:
                    problem = f"{path}:{line}: malformed {chosen.name} record: {exc}"
        rows += 1
        if problem is not None:
            if not skip_bad:
                raise DataError(problem + " (use --skip-bad to skip and count such lines)")
            bad.append(problem)
    if chosen is None:
        raise DataError(f"{path}: no records")
    return DatasetRead(records, chosen.name, rows, bad)
