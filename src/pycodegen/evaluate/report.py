"""Evaluation reports: one run's report.md, and `pycodegen report` (several runs side by side, refused
when they are not comparable: other benchmark, problems, prompt mode or decoding)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pycodegen.console import plural
from pycodegen.errors import DataError, PycodegenError

# Run-card entries that must agree for two runs' numbers to be comparable.
COMPARED = ("benchmark", "problems", "prompt_mode", "decoding")


def scored_text(card: dict[str, Any]) -> str:
    """'4 of 164 problems' (or 'problems not recorded' for a run from before the card said so)."""
    problems = card.get("problems")
    if not problems:
        return "problems not recorded"
    limit = f", --limit {problems['limit']}" if problems.get("limit") else ""
    return f"{problems['scored']} of {problems['total']} problems{limit}"


def render_report(results: dict[str, Any]) -> str:
    card = results["run_card"]
    m = results["metrics"]
    lines = [
        f"# Evaluation: {card['benchmark']} ({scored_text(card)})",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key in ("pass@1", "pass@10", "pass@100", "filtered_pass@1"):
        if key in m:
            lines.append(f"| {key} | {m[key]:.4f} |")
    for key, value in m.get("text_metrics", {}).items():
        lines.append(f"| {key} | {value if isinstance(value, str) else round(value, 4)} |")
    lines += [
        "",
        f"{plural(m['tasks'], 'task')}, {plural(m['samples'], 'sample')}"
        + (
            f"; example-filtered pass@1 uses the `>>>` examples of {plural(m['tasks_with_examples'], 'task')}"
            if "tasks_with_examples" in m
            else ""
        ),
        "",
        "## Outcomes",
        "",
        "| outcome | samples |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in m["outcomes"].items()]
    lines += ["", "## Run card", "", "```json", json.dumps(card, indent=2), "```", ""]
    return "\n".join(lines)


def read_runs(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(path, results.json) for each run directory or results.json file."""
    runs = []
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"{path} has no results.json (run `pycodegen evaluate` first)")
        try:
            runs.append((path, json.loads(file.read_text(encoding="utf-8"))))
        except json.JSONDecodeError as exc:
            raise DataError(f"{file}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    return runs


def _mismatch(key: str, path: Path, card: dict[str, Any], first_path: Path, first: dict[str, Any]) -> str:
    if key == "problems":
        return f"{path}: scored other problems ({scored_text(card)}) than {first_path} ({scored_text(first)})"
    return f"{path}: {key} {card.get(key)!r} differs from {first_path}: {first.get(key)!r}"


def compare(paths: list[Path], allow_mismatch: bool = False) -> str:
    """Side-by-side markdown for several runs; refuses runs over other problems or with another prompt
    mode or decoding (with `allow_mismatch`, compares them under a warning)."""
    runs = read_runs(paths)
    first_path, first = runs[0][0], runs[0][1]["run_card"]
    mismatches = []
    for path, r in runs[1:]:
        card = r["run_card"]
        for key in COMPARED:
            theirs, ours = card.get(key), first.get(key)
            if key == "problems":  # the same problems: the same sorted task ids
                theirs = (theirs or {}).get("task_ids_sha256")
                ours = (ours or {}).get("task_ids_sha256")
            if theirs != ours:
                mismatches.append(_mismatch(key, path, card, first_path, first))
    if mismatches and not allow_mismatch:
        raise PycodegenError(
            "runs are not comparable:\n  "
            + "\n  ".join(mismatches)
            + "\n(use --allow-mismatch to compare anyway, flagged)"
        )
    keys: list[str] = []
    for _, r in runs:
        m = r["metrics"]
        for k in [*[k for k in m if k.startswith(("pass@", "filtered"))], *m.get("text_metrics", {})]:
            if k not in keys and not isinstance(m.get(k, m.get("text_metrics", {}).get(k)), str):
                keys.append(k)
    header = "| metric | " + " | ".join(str(p) for p, _ in runs) + " |"
    lines = [header, "|---|" + "---|" * len(runs)]
    for k in keys:
        cells = []
        for _, r in runs:
            v = r["metrics"].get(k, r["metrics"].get("text_metrics", {}).get(k))
            cells.append("" if v is None else f"{v:.4f}")
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| problems | " + " | ".join(scored_text(r["run_card"]) for _, r in runs) + " |")
    for key in ("model", "prompt_mode", "decoding"):
        lines.append(
            f"| {key} | " + " | ".join(f"`{json.dumps(r['run_card'].get(key))}`" for _, r in runs) + " |"
        )
    if mismatches:
        lines += ["", "**Warning: not comparable** (" + "; ".join(mismatches) + ")"]
    return "\n".join(lines) + "\n"
