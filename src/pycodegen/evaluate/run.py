"""Transitional re-exports for cli.py and recipe.py (owned by the lead) until they import the rooms
directly: evaluate.score.run_evaluation, evaluate.report.compare, generate.samples.generate_samples.
Delete this file then; nothing else imports it."""

from pycodegen.evaluate.report import compare
from pycodegen.evaluate.score import run_evaluation
from pycodegen.generate.samples import generate_samples

__all__ = ["compare", "generate_samples", "run_evaluation"]
