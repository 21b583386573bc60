"""`pycodegen report`: the comparison table, paired per-problem comparisons with a sign test that says
when a difference is inside the noise, and PNG plots embedded in the markdown."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from pycodegen.config import EvaluateConfig
from pycodegen.errors import PycodegenError
from pycodegen.evaluate.report import full_report, per_problem
from pycodegen.evaluate.score import score_samples
from pycodegen.metrics import paired_comparison, sign_test


def _evaluate(tmp_path: Path, name: str, right: set[int], count: int) -> Path:
    """An evaluation run over the first `count` HumanEval problems: problem i gets its canonical solution
    when i is in `right`, else a wrong body."""
    from pycodegen.benchmarks import load_problems

    _, problems, _ = load_problems("humaneval")
    samples = tmp_path / f"{name}.jsonl"
    samples.write_text(
        "".join(
            json.dumps(
                {"task_id": p.task_id, "completion": p.canonical_solution if i in right else "    pass\n"}
            )
            + "\n"
            for i, p in enumerate(problems[:count])
        )
    )
    out = tmp_path / name
    cfg = EvaluateConfig(benchmark="humaneval", limit=count, timeout=5, workers=2, examples=False, out=out)
    score_samples(samples, cfg, Console(quiet=True))
    return out


def test_sign_test_matches_the_binomial_tail() -> None:
    # 10 wins, 0 losses: 2 * 0.5**10
    assert sign_test(10, 0) == pytest.approx(2 / 1024)
    assert sign_test(5, 5) == 1.0
    # one problem of difference on many ties is never significant
    assert not paired_comparison(
        {str(i): 0.0 for i in range(164)}, {"0": 1.0} | {str(i): 0.0 for i in range(1, 164)}
    )["significant"]


def test_paired_comparison_from_verdicts_inside_and_beyond_the_noise(tmp_path: Path) -> None:
    none = _evaluate(tmp_path, "none", set(), 12)
    one = _evaluate(tmp_path, "one", {0}, 12)
    all_ = _evaluate(tmp_path, "all", set(range(12)), 12)
    assert per_problem(one) == {f"HumanEval/{i}": float(i == 0) for i in range(12)}
    text = full_report([none, one, all_])
    assert f"{one} vs {none}, 12 problems: 1 win, 0 losses, 11 ties" in text
    assert "exact sign test p = 1.000: **inside the noise**" in text
    assert f"{all_} vs {none}, 12 problems: 12 wins, 0 losses, 0 ties" in text
    assert "p < 0.001: **beyond the noise**" in text


def test_report_refuses_other_problems_and_draws_plots(tmp_path: Path) -> None:
    few = _evaluate(tmp_path, "few", {0}, 2)
    more = _evaluate(tmp_path, "more", {0}, 3)
    with pytest.raises(PycodegenError, match="not comparable"):
        full_report([few, more])
    pytest.importorskip("matplotlib")
    other = _evaluate(tmp_path, "other", {0, 1}, 2)
    out = tmp_path / "cmp" / "comparison.md"
    out.parent.mkdir()
    text = full_report([few, other], out=out)
    assert "![bars](comparison-bars.png)" in text
    assert (out.parent / "comparison-bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
