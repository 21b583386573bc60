"""Transitional re-export for cli.py and recipe.py (owned by the lead) until they import
generate.freeform.run_generate directly. Delete this file then; nothing else imports it."""

from pycodegen.generate.freeform import run_generate

__all__ = ["run_generate"]
