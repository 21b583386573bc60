"""Benchmark problems → samples.jsonl + samples.meta.json, resumable (`generate --benchmark`,
`evaluate --model`), and reading a samples file back.

samples.jsonl rows: task_id, sample_index, completion (what is executed), raw (what the model wrote).
samples.meta.json: model, prompt mode, benchmark, decoding and stops; a rerun with the same settings
keeps the tasks already finished, one with other settings is refused.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from pycodegen.benchmarks import Problem, load_problems
from pycodegen.config import SamplingConfig
from pycodegen.console import plural, progress
from pycodegen.errors import DataError, PycodegenError
from pycodegen.generate.postprocess import HUMANEVAL_STOPS, postprocess
from pycodegen.jsonl import dumps, iter_jsonl, read_jsonl, write_json, write_jsonl

if TYPE_CHECKING:
    from pycodegen.generate.engine import Engine


def meta_path(samples: Path) -> Path:
    """samples.jsonl → samples.jsonl.meta.json."""
    return samples.with_name(samples.name + ".meta.json")


def read_samples(path: Path, problems: dict[str, Problem]) -> list[dict[str, Any]]:
    """Samples with `task_id` and `completion` (sample_index defaults to the order within a task)."""
    if not path.is_file():
        raise DataError(f"samples file {path} does not exist")
    seen: Counter[str] = Counter()
    samples = []
    for line_no, row in iter_jsonl(path):  # invalid JSON: "FILE:LINE: invalid JSON: msg (column N)"
        if not isinstance(row, dict) or "task_id" not in row or "completion" not in row:
            raise DataError(f"{path}:{line_no}: a sample needs task_id and completion")
        if row["task_id"] not in problems:
            raise DataError(f"{path}:{line_no}: unknown task_id {row['task_id']!r} for this benchmark")
        row.setdefault("sample_index", seen[row["task_id"]])
        seen[row["task_id"]] += 1
        samples.append(row)
    return samples


def _kept_tasks(out: Path, meta: dict[str, Any], n: int) -> set[str]:
    """The tasks `out` already holds all `n` samples of (a partial task is dropped, to be redone whole);
    refuses a file generated with other settings."""
    path = meta_path(out)
    if not (out.is_file() and path.is_file()):
        return set()
    if json.loads(path.read_text(encoding="utf-8")) != meta:
        raise PycodegenError(f"{out} was generated with other settings ({path}); choose another --out")
    rows = read_jsonl(out)
    counts = Counter(r["task_id"] for r in rows)
    done = {t for t, c in counts.items() if c >= n}
    write_jsonl(out, [r for r in rows if r["task_id"] in done])
    return done


def generate_samples(
    model_ref: str,
    problems: list[Problem],
    out: Path,
    sampling: SamplingConfig,
    *,
    benchmark: str,
    console: Console,
    engine: Engine | None = None,
) -> dict[str, Any]:
    """Generate `sampling.n` samples per problem into `out` (resumable: finished tasks are kept); returns
    the meta. `engine` is the decoding engine of `model_ref` when the caller has it already. Problems are
    decoded together through the engine (`batch_size` sequences at a time; a finished problem's slot goes
    to the next at once) and each is written whole as soon as it is done. On Ctrl-C, says how many tasks
    the file keeps and that rerunning resumes."""
    from pycodegen.generate.engine import Engine, decode_params

    # GenerateConfig has dtype, threads and prompt_lookup; EvaluateConfig (evaluate --model) keeps the
    # engine's defaults.
    engine = engine or Engine.load(
        model_ref,
        dtype=getattr(sampling, "dtype", "auto"),
        threads=getattr(sampling, "threads", None),
        prompt_lookup=getattr(sampling, "prompt_lookup", None),
        draft_heads=getattr(sampling, "draft_heads", None),
    )
    engine.max_batch = sampling.batch_size
    mode = engine.prompt_mode(sampling.prompt_mode)
    n, temperature = sampling.n, sampling.temperature
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
    done = _kept_tasks(out, meta, n)
    write_json(meta_path(out), meta)
    todo = [p for p in problems if p.task_id not in done]
    finished = len([p for p in problems if p.task_id in done])
    params = decode_params(sampling, style_stops, stop_after_code_block=bool(meta["stop_after_code_block"]))
    if engine.supports_logprobs:
        params.logprobs = 0  # the chosen tokens' log-probabilities: mean_logprob ranks samples (--best-of)

    def prompt_text(p: Problem) -> str:
        return p.prompt if mode == "raw" else engine.format_prompt(p.instruction, mode)

    streams = []
    try:
        with out.open("a", encoding="utf-8") as fh, progress("generating", console) as bar:
            task = bar.add_task("gen", total=len(problems), completed=finished, status="")
            streams = [(p, engine.submit(prompt_text(p), params)) for p in todo]
            pending = list(streams)
            while pending:
                engine.step()
                for p, stream in [x for x in pending if x[1].done]:
                    for j, choice in enumerate(stream.result()):
                        completion = postprocess(
                            choice.text, mode=mode, entry_point=p.entry_point, style=p.style
                        )
                        row = {
                            "task_id": p.task_id,
                            "sample_index": j,
                            "completion": completion,
                            "raw": choice.text,
                        }
                        if choice.mean_logprob is not None:
                            row["mean_logprob"] = choice.mean_logprob
                        fh.write(dumps(row) + "\n")
                    fh.flush()  # a task is on disk whole before the next one is written
                    finished += 1
                    bar.advance(task, 1)
                pending = [x for x in pending if not x[1].done]
    except KeyboardInterrupt:
        for _, stream in streams:
            stream.cancel()
        console.print(
            f"[bold cyan]generate[/] interrupted: {out} keeps {finished} of {plural(len(problems), 'task')} "
            "(a task cut short is redone); rerun the same command to resume"
        )
        raise
    return meta


def generate_benchmark(cfg: Any, console: Console) -> dict[str, Any]:
    """`generate --benchmark/--problems`: samples for the first `limit` problems (all without one)."""
    if cfg.out is None:
        raise PycodegenError("--benchmark/--problems needs --out samples.jsonl")
    name, problem_list, _ = load_problems(cfg.benchmark, cfg.problems)
    limit = cfg.limit
    chosen = problem_list[:limit] if limit else problem_list
    meta = generate_samples(cfg.model, chosen, cfg.out, cfg, benchmark=name, console=console)
    of = f" (first {len(chosen)} of {len(problem_list)})" if len(chosen) < len(problem_list) else ""
    console.print(
        f"[bold cyan]generate[/] {plural(len(chosen) * cfg.n, 'sample')} for "
        f"{plural(len(chosen), name + ' problem')}{of} → {cfg.out}"
    )
    return meta
