"""Dev evaluation during training, as a training callback: the model generates for a small dev slice of
the validation rows, scored by pass@1 through the sandboxed executor where rows carry tests
(MBPP-style instruction data), and by BLEU and CodeBLEU against the target.

The trainer knows nothing of this module; the CLI or recipe runner passes `DevGeneration(...)` in
`train(cfg, console, callbacks=[...])`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from pycodegen import metrics
from pycodegen.generate.postprocess import extract_code_block
from pycodegen.models.family import Family
from pycodegen.sandbox.executor import Executor, Job
from pycodegen.train.callbacks import TrainCallback

if TYPE_CHECKING:
    from pycodegen.config import TrainConfig

CALLED = re.compile(r"(\w+)\s*\(")


def generation_metrics(
    family: Family,
    model: torch.nn.Module,
    rows: list[dict[str, Any]],
    max_new_tokens: int,
    timeout: float = 5.0,
    beams: int = 1,
) -> dict[str, float]:
    """dev_pass@1 (rows with tests), dev_bleu and dev_codebleu of greedy (or beam-searched, `beams` > 1)
    completions of `rows`."""
    if not rows:
        return {}
    from pycodegen.generate.engine import DecodeParams, Engine

    # The decoding engine every generate path uses, over the model being trained (no copy, no reload).
    engine = Engine.for_family(family, model, name="dev")
    params = DecodeParams(max_new_tokens=max_new_tokens, beams=beams)
    completions = [choices[0].text for choices in engine.generate([r["prompt"] for r in rows], params)]
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


class DevGeneration(TrainCallback):
    """At each validation pass, generate for the first `eval_samples` validation rows that have a prompt
    and score them (see `generation_metrics`). Families that do not generate text get no dev metrics."""

    def __init__(
        self, eval_samples: int = 8, max_new_tokens: int = 128, timeout: float = 5.0, beams: int = 1
    ) -> None:
        self.eval_samples = eval_samples
        self.max_new_tokens = max_new_tokens
        self.timeout = timeout
        self.beams = beams

    def on_validate(self, trainer: Any, model: torch.nn.Module, family: Family) -> dict[str, float]:
        """`trainer` is the running pycodegen.train.loop.Trainer: its `valid_rows` hold the dev rows."""
        if not family.generates or self.eval_samples <= 0:
            return {}
        dev = [r for r in trainer.valid_rows if "prompt" in r][: self.eval_samples]
        return generation_metrics(family, model, dev, self.max_new_tokens, self.timeout, self.beams)


def dev_callbacks(cfg: TrainConfig) -> list[DevGeneration]:
    """The dev-evaluation callbacks a training config asks for: what the CLI and the recipe runner pass
    to `train(cfg, console, callbacks=dev_callbacks(cfg))` (none when eval_samples is 0)."""
    if cfg.eval_samples <= 0:
        return []
    return [DevGeneration(cfg.eval_samples, cfg.eval_max_new_tokens, beams=cfg.eval_beams)]
