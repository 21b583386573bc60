"""Evaluation reports: one run's report.md, and `pycodegen report` (several runs side by side, refused
when they are not comparable: other benchmark, problems, prompt mode or decoding)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pycodegen.console import plural
from pycodegen.errors import DataError, PycodegenError

# Run-card entries that must agree for two runs' numbers to be comparable.
COMPARED = ("benchmark", "problems", "prompt_mode", "decoding")
# `evaluate --best-of N`: per problem, the sample the selection picked and its verdicts (score.py writes it).
BEST_OF_FILE = "best_of.jsonl"


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
    best_of = f"best_of_{m['best_of']}_pass@1" if "best_of" in m else None
    for key in ("pass@1", "pass@10", "pass@100", "filtered_pass@1", best_of):
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
        )
        + (
            f"; {best_of}: selection by execution among each task's first {m['best_of']} samples (one that "
            f"passes the prompt's `>>>` examples, by mean log-probability; chosen by examples in "
            f"{plural(m['tasks_selected_by_examples'], 'task')})"
            if best_of
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


# -- per-problem outcomes and paired comparisons ----------------------------------------------------------
def per_problem(run: Path) -> dict[str, float]:
    """{task_id: share of its samples that passed} of an evaluation run, from OUT/verdicts.jsonl (only
    the rows of the samples that run scored: the verdict log keeps no others)."""
    from pycodegen.jsonl import read_jsonl

    directory = run if run.is_dir() else run.parent
    path = directory / "verdicts.jsonl"
    if not path.is_file():
        raise DataError(f"{directory} has no verdicts.jsonl: a per-problem comparison needs the verdicts")
    passed: dict[str, list[bool]] = {}
    for row in read_jsonl(path):
        passed.setdefault(row["task_id"], []).append(bool(row["passed"]))
    return {task: sum(v) / len(v) for task, v in passed.items()}


def selected(run: Path) -> dict[str, float] | None:
    """{task_id: 1.0 if the sample `--best-of` picked passed, else 0.0} of an evaluation run, from
    OUT/best_of.jsonl; None for a run scored without `--best-of`."""
    from pycodegen.jsonl import read_jsonl

    path = (run if run.is_dir() else run.parent) / BEST_OF_FILE
    if not path.is_file():
        return None
    return {row["task_id"]: float(bool(row["passed"])) for row in read_jsonl(path)}


def paired_sentence(label: str, result: dict[str, Any], measure: str = "pass@1") -> str:
    """One line of markdown for a paired per-problem comparison.

    >>> r = {"problems": 8, "wins": 1, "losses": 0, "ties": 7, "p_value": 1.0, "mean_difference": 0.125,
    ...      "interval95": (0.0, 0.375), "significant": False}
    >>> paired_sentence("lora vs base", r)  # doctest: +NORMALIZE_WHITESPACE
    '- lora vs base, 8 problems: 1 win, 0 losses, 7 ties; pass@1 difference +0.125 (95 % bootstrap
    interval [+0.000, +0.375]); exact sign test p = 1.000: **inside the noise**.'
    """
    low, high = result["interval95"]
    p_text = "p < 0.001" if result["p_value"] < 0.001 else f"p = {result['p_value']:.3f}"
    verdict = "**beyond the noise** (p < 0.05)" if result["significant"] else "**inside the noise**"
    return (
        f"- {label}, {result['problems']} problems: {plural(result['wins'], 'win')}, "
        f"{plural(result['losses'], 'loss', 'losses')}, {plural(result['ties'], 'tie')}; "
        f"{measure} difference "
        f"{result['mean_difference']:+.3f} (95 % bootstrap interval [{low:+.3f}, {high:+.3f}]); "
        f"exact sign test {p_text}: {verdict}."
    )


def paired_section(runs: list[tuple[str, Path]]) -> list[str]:
    """Markdown lines comparing each run with the first, problem by problem (pass@1)."""
    from pycodegen.metrics import paired_comparison

    if len(runs) < 2:
        return []
    first_label, first = runs[0]
    shares = {path: per_problem(path) for _, path in runs}
    lines = ["", "## Paired per-problem comparison (pass@1)", ""]
    for label, path in runs[1:]:
        lines.append(
            paired_sentence(f"{label} vs {first_label}", paired_comparison(shares[first], shares[path]))
        )
    lines += [
        "",
        "Per problem, the share of samples that passed; a win is a problem the second run does better on. "
        "The sign test drops ties; with few problems, only large differences can leave the noise.",
    ]
    picked = {path: selected(path) for _, path in runs}
    if any(v is not None for v in picked.values()):
        scores = {path: v if v is not None else shares[path] for path, v in picked.items()}
        lines += ["", "## Paired per-problem comparison (selection by execution)", ""]
        for label, path in runs[1:]:
            result = paired_comparison(scores[first], scores[path])
            lines.append(paired_sentence(f"{label} vs {first_label}", result, measure="answer's pass@1"))
        lines += [
            "",
            "A run scored with `--best-of N` counts the sample its selection picked (passed or not); any "
            "other run counts as above (for a greedy run, its one answer).",
        ]
    return lines


# -- plots ------------------------------------------------------------------------------------------------
def _pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_rows(train_dir: Path) -> list[dict[str, Any]]:
    """The rows of a training run's metrics.jsonl (training rows carry `loss`; validation rows
    `valid_loss` and the dev metrics); empty when there is none."""
    from pycodegen.jsonl import read_jsonl

    path = train_dir / "metrics.jsonl"
    return list(read_jsonl(path)) if path.is_file() else []


def plot_curves(
    runs: dict[str, list[dict[str, Any]]],
    keys: Sequence[str],
    path: Path,
    title: str,
    panels: bool = False,
) -> Path | None:
    """One PNG: for each run and each key present in its rows, the key over training steps (with
    `panels`, one panel per key, for metrics on different scales: BLEU 0-100, CodeBLEU 0-1, perplexity).
    Returns the path, or None when there is nothing to draw or matplotlib is missing."""
    plt = _pyplot()
    series = {
        (name, key): [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
        for name, rows in runs.items()
        for key in keys
    }
    series = {k: v for k, v in series.items() if v}
    if plt is None or not series:
        return None
    drawn = list(dict.fromkeys(key for _, key in series)) if panels else [""]
    fig, axes = plt.subplots(1, len(drawn), figsize=(max(6.4, 3.4 * len(drawn)), 3.6), dpi=100, squeeze=False)
    for ax, panel in zip(axes[0], drawn, strict=True):
        for (name, key), points in series.items():
            if panels and key != panel:
                continue
            steps, values = zip(*points, strict=True)
            label = name if panels or len(keys) == 1 else f"{name} {key}"
            ax.plot(steps, values, marker="o" if len(points) < 20 else None, label=label)
        ax.set_xlabel("step")
        ax.set_title(panel or title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if panels:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_bars(values: dict[str, dict[str, float]], path: Path, title: str) -> Path | None:
    """One PNG of grouped bars: {metric: {row: value}} (e.g. pass@1 before and after fine-tuning)."""
    plt = _pyplot()
    values = {m: v for m, v in values.items() if v}
    if plt is None or not values:
        return None
    rows = list(dict.fromkeys(r for v in values.values() for r in v))
    fig, axes = plt.subplots(1, len(values), figsize=(3.2 * len(values), 3.2), dpi=100, squeeze=False)
    for ax, (metric, by_row) in zip(axes[0], values.items(), strict=True):
        heights = [by_row.get(r, 0.0) for r in rows]
        bars = ax.bar(rows, heights, color=[f"C{i}" for i in range(len(rows))])
        ax.bar_label(bars, fmt="%.3g", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _image(path: Path | None, relative_to: Path, alt: str) -> list[str]:
    if path is None:
        return []
    return ["", f"![{alt}]({path.relative_to(relative_to)})"]


MISSING_PLOTS = "(plots skipped: matplotlib is not installed; `pip install matplotlib` draws them)"
LOSS_KEYS = ("loss", "valid_loss")
STEP_KEYS = ("dev_pass@1", "dev_bleu", "dev_codebleu", "valid_perplexity", "valid_mrr")


# -- `pycodegen report`: several evaluation runs ----------------------------------------------------------
def expand_runs(paths: Iterable[Path]) -> list[Path]:
    """Evaluation run directories: a recipe's run directory (with rows.json) stands for its evaluations."""
    expanded: list[Path] = []
    for path in paths:
        rows_file = path / "rows.json"
        if path.is_dir() and not (path / "results.json").is_file() and rows_file.is_file():
            for row in json.loads(rows_file.read_text(encoding="utf-8"))["rows"]:
                expanded += [Path(p) for p in row["evaluations"].values()]
        else:
            expanded.append(path)
    return expanded


def run_labels(path: Path, results: dict[str, Any]) -> dict[str, str]:
    """Recipe, row, model and training mode of an evaluation run, from its run card, the recipe's
    rows.json beside it (when a recipe made it) and the card of the checkpoint it scored."""
    from pycodegen.zoo import checkpoint_card

    directory = path if path.is_dir() else path.parent
    labels = {"recipe": "", "row": "", "model": str(results["run_card"].get("model") or ""), "mode": "as is"}
    rows_file = directory.parent / "rows.json"
    if rows_file.is_file():
        recipe = json.loads(rows_file.read_text(encoding="utf-8"))
        labels["recipe"] = recipe.get("recipe", "")
        for row in recipe.get("rows", []):
            if any(Path(p).resolve() == directory.resolve() for p in row["evaluations"].values()):
                labels["row"] = row["name"]
    model = Path(labels["model"])
    card = checkpoint_card(model) if model.is_dir() else None
    if card is not None:
        labels["mode"] = str((card.get("train_config") or {}).get("mode", "full"))
    return labels


def runs_table(runs: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """One markdown row per run (recipe, row, model, mode), one column per metric any run has."""
    keys = [k for k in EVAL_KEYS if any(isinstance(_metric(r, k), int | float) for _, r in runs)]
    lines = [
        "| recipe | row | model | mode | " + " | ".join(keys) + " |",
        "|---|---|---|---|" + "---|" * len(keys),
    ]
    for path, r in runs:
        labels = run_labels(path, r)
        cells = [_cell(v) if isinstance(v := _metric(r, k), int | float) else "" for k in keys]
        lines.append("| " + " | ".join([*labels.values(), *cells]) + " |")
    return lines


def full_report(paths: list[Path], allow_mismatch: bool = False, out: Path | None = None) -> str:
    """`pycodegen report`: the comparison table, the paired comparisons against the first run, and (with
    `out`, a markdown file) PNG plots beside it: loss and dev-metric curves of runs whose model is a
    training checkpoint, and bars of pass@1 and BLEU."""
    paths = expand_runs(paths)
    lines = ["# Comparison", "", compare(paths, allow_mismatch).rstrip("\n")]
    runs = read_runs(paths)
    lines += ["", "## By run", "", *runs_table(runs)]
    if all(r["metrics"].get("pass@1") is not None for _, r in runs):
        try:
            lines += paired_section([(str(p), p) for p, _ in runs])
        except DataError as exc:
            lines += ["", f"(no paired comparison: {exc})"]
    if out is not None:
        where = out.parent
        stem = out.stem
        curves = {}
        for path, r in runs:
            model = Path(str(r["run_card"].get("model") or ""))
            if (model.parent / "metrics.jsonl").is_file():
                curves[str(path)] = training_rows(model.parent)
        bars = {
            key: {str(p): v for p, r in runs if isinstance(v := _metric(r, key), int | float)}
            for key in ("pass@1", "bleu", "codebleu")
        }
        drawn = [
            (plot_curves(curves, LOSS_KEYS, where / f"{stem}-loss.png", "training/validation loss"), "loss"),
            (
                plot_curves(curves, STEP_KEYS, where / f"{stem}-dev.png", "dev metrics over steps", True),
                "dev",
            ),
            (plot_bars(bars, where / f"{stem}-bars.png", "side by side"), "bars"),
        ]
        if _pyplot() is None:
            lines += ["", MISSING_PLOTS]
        for path, alt in drawn:
            lines += _image(path, where, alt)
    return "\n".join(lines) + "\n"


def _metric(results: dict[str, Any], key: str) -> Any:
    m = results["metrics"]
    return m.get(key, m.get("text_metrics", {}).get(key))


# -- a recipe's report.md ---------------------------------------------------------------------------------
EVAL_KEYS = (
    "pass@1",
    "pass@10",
    "filtered_pass@1",
    "bleu",
    "codebleu",
    "exact_match",
    "codebertscore_f1",
    "codebertscore_f3",
)
TRAIN_KEYS = ("valid_perplexity", "dev_pass@1", "dev_bleu", "dev_codebleu", "valid_mrr")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _train_columns(train: Path | None) -> dict[str, Any]:
    """Trainable parameters, training time, peak memory and final dev metrics of a row's training."""
    if train is None or not (train / "summary.json").is_file():
        return {}
    summary = json.loads((train / "summary.json").read_text(encoding="utf-8"))
    cost_file = train / "cost.json"
    cost = json.loads(cost_file.read_text(encoding="utf-8")) if cost_file.is_file() else {}
    rows = training_rows(train)
    seconds = max((r.get("elapsed_s", 0) for r in rows), default=summary.get("elapsed_s"))
    columns = {
        "trainable params": summary.get("parameters", {}).get("trainable"),
        "train time (s)": seconds,
        "peak RSS (MiB)": cost.get("cuda_peak_mb", cost.get("peak_rss_mb")),
        "steps": summary.get("steps"),
    }
    columns |= {key: summary[key] for key in TRAIN_KEYS if isinstance(summary.get(key), int | float)}
    return columns


def _published_column(key: str, columns: list[str]) -> str:
    """The column a published number belongs in: its own name, or the one column that is that metric
    on some benchmark ("pass@1" -> "humaneval pass@1"). Where several benchmarks carry the metric the
    recipe must name one ("humaneval pass@1"): a paper's HumanEval figure never lands under MBPP.

    >>> _published_column("pass@1", ["humaneval pass@1", "steps"])
    'humaneval pass@1'
    >>> _published_column("pass@1", ["mbpp pass@1", "humaneval pass@1"])
    'pass@1'
    """
    if key in columns:
        return key
    matches = [c for c in columns if c.endswith(f" {key}")]
    return matches[0] if len(matches) == 1 else key


def recipe_report(recipe: Any, rows: list[dict[str, Any]], out: Path) -> str:
    """A recipe's report.md: one table (a row per model, columns per evaluation metric and training
    cost), the published numbers beside it, paired per-problem comparisons of pass@1 against the first
    row, the plots (PNG, in OUT/plots) and the notes of rows whose stages could not run."""
    table: dict[str, dict[str, Any]] = {}
    results: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        cells: dict[str, Any] = {"model": row["model"]}
        for ev_name, directory in row["evaluations"].items():
            r = read_runs([Path(directory)])[0][1]
            results[(row["name"], ev_name)] = r
            prefix = "" if ev_name == "evaluate" else f"{ev_name} "
            benchmark = r["run_card"].get("benchmark")
            for key in EVAL_KEYS:
                value = _metric(r, key)
                if isinstance(value, int | float):
                    cells[f"{prefix or benchmark + ' '}{key}"] = value
        cells |= _train_columns(Path(row["train"]) if row["train"] else None)
        table[row["name"]] = cells
    columns = list(dict.fromkeys(c for cells in table.values() for c in cells))
    placed: dict[str, str] = {}  # published key -> the column it is printed in
    for numbers in recipe.published.values():
        for key in numbers:
            if key not in placed:
                placed[key] = _published_column(key, columns)
                if placed[key] not in columns:  # a published metric ours lack still gets its column
                    columns.append(placed[key])
    lines = [f"# {recipe.name}", ""]
    if recipe.description:
        lines += [recipe.description.strip(), ""]
    lines += ["| row | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, cells in table.items():
        lines.append(f"| {name} | " + " | ".join(_cell(cells.get(c)) for c in columns) + " |")
    for name, numbers in recipe.published.items():
        lines.append(
            f"| published: {name} | "
            + " | ".join(
                _cell(next((v for k, v in numbers.items() if placed[k] == c), None)) for c in columns
            )
            + " |"
        )
    if recipe.published:
        lines += ["", "Published rows are the papers' numbers on their own data and models, for scale."]
    evaluations = dict.fromkeys(ev for row in rows for ev in row["evaluations"])
    for ev_name in evaluations:
        paired = [
            (row["name"], Path(row["evaluations"][ev_name]))
            for row in rows
            if ev_name in row["evaluations"]
            and _metric(results[(row["name"], ev_name)], "pass@1") is not None
        ]
        if len(paired) > 1:
            section = paired_section(paired)
            if ev_name != "evaluate":
                section[1] += f": {ev_name}"
            lines += section
    plots = out / "plots"
    curves = {row["name"]: training_rows(Path(row["train"])) for row in rows if row["train"]}
    bars = {
        key: {
            row["name"]: v
            for row in rows
            if (r := results.get((row["name"], next(iter(row["evaluations"]), "")))) is not None
            and isinstance(v := _metric(r, key), int | float)
        }
        for key in ("pass@1", "bleu", "codebleu")
    }
    drawn = [
        (plot_curves(curves, LOSS_KEYS, plots / "loss.png", "training and validation loss"), "loss curves"),
        (plot_curves(curves, STEP_KEYS, plots / "dev.png", "dev metrics over steps", True), "dev metrics"),
        (plot_bars(bars, plots / "bars.png", "rows side by side (first evaluation)"), "before/after"),
    ]
    if any(p is not None for p, _ in drawn) or _pyplot() is None:
        lines += ["", "## Plots"]
        if _pyplot() is None:
            lines += ["", MISSING_PLOTS]
        for path, alt in drawn:
            lines += _image(path, out, alt)
    notes = [f"- {row['name']}: {note}" for row in rows for note in row["notes"]]
    if notes:
        lines += ["", "## Not run", "", *notes]
    lines += ["", f"Runs: {', '.join(str(Path(d)) for row in rows for d in row['evaluations'].values())}"]
    return "\n".join(lines) + "\n"
