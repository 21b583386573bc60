"""Generation metrics during training, on a small dev slice: pass@1 through the sandboxed executor where
rows carry tests (MBPP-style instruction data), BLEU and CodeBLEU against the target otherwise."""

from __future__ import annotations

import re
from typing import Any

import torch

from pycodegen import metrics
from pycodegen.generate.postprocess import extract_code_block
from pycodegen.models.family import Family
from pycodegen.sandbox.executor import Executor, Job

CALLED = re.compile(r"(\w+)\s*\(")


def generation_metrics(
    family: Family,
    model: torch.nn.Module,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    timeout: float = 5.0,
) -> dict[str, float]:
    if not rows:
        return {}
    completions = family.generate(model, [r["prompt"] for r in rows], max_new_tokens)
    with_tests = [(r, c) for r, c in zip(rows, completions, strict=True) if r.get("tests")]
    result: dict[str, float] = {}
    if with_tests:
        jobs = []
        for i, (row, completion) in enumerate(with_tests):
            code = extract_code_block(completion) or completion
            test = "\n".join(row["tests"])
            entry_points = sorted({m for m in CALLED.findall(test) if re.search(rf"def\s+{m}\s*\(", code)})
            jobs.append(Job(row["id"], i, code, test, entry_points=entry_points))
        with Executor(timeout=timeout) as executor:
            verdicts = list(executor.map(jobs))
        result["dev_pass@1"] = sum(v.passed for v in verdicts) / len(verdicts)
    # The completion against the target alone: the shared prompt would inflate both scores.
    preds, refs = completions, [r["target"] for r in rows]
    result["dev_bleu"] = metrics.bleu(preds, refs)["bleu"]
    result["dev_codebleu"] = metrics.codebleu(preds, refs)["codebleu"]
    return result
