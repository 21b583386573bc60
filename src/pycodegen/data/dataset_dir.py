"""The prepared-dataset directory contract: what `prepare` writes and `train` reads.

A dataset directory holds `{train,valid,test}.jsonl` (one row per line, the task view's fields),
`manifest.json` (sources, options, counts, content hashes) and, where the view needs one, `tokenizer/`
or `vocab.json`. This module is the only place that knows those names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pycodegen.errors import DataError
from pycodegen.jsonl import read_jsonl, write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "valid", "test")


def split_path(dataset_dir: Path, split: str) -> Path:
    """Where a split's rows live.

    >>> split_path(Path("d"), "valid").as_posix()
    'd/valid.jsonl'
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return Path(dataset_dir) / f"{split}.jsonl"


def write_manifest(dataset_dir: Path, manifest: dict[str, Any]) -> None:
    """Write `manifest.json` (indented, keys in the order given, UTF-8 kept) into a dataset directory."""
    write_json(Path(dataset_dir) / MANIFEST, manifest)


def read_manifest(dataset_dir: Path) -> dict[str, Any]:
    """The manifest of a prepared dataset directory; a one-line error if it is not one."""
    path = Path(dataset_dir) / MANIFEST
    if not path.is_file():
        raise DataError(
            f"{dataset_dir} is not a prepared dataset (no {MANIFEST}); run `pycodegen prepare` first"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid manifest ({exc}); run `pycodegen prepare` again") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: not a valid manifest (expected a JSON object)")
    return manifest


def read_split(dataset_dir: Path, split: str) -> list[dict[str, Any]]:
    """Every row of one split; a malformed line is a `DataError` naming FILE:LINE.

    A split `prepare` left empty (e.g. `--valid-fraction 0`) is an empty list; a missing file is an error.
    """
    path = split_path(dataset_dir, split)
    if not path.is_file():
        raise DataError(f"{path} does not exist; is {dataset_dir} a dataset made by `pycodegen prepare`?")
    return read_jsonl(path)
