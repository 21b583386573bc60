"""Prompt templates shared by the data views (what a model is trained on) and the prompt modes of
generation (what it is asked at inference): one definition, so the two can never drift apart."""

from __future__ import annotations

# Phan, Pham, Dang (HUST, 2024): the instruction template of their CodeT5+ fine-tuning.
HUST_TEMPLATE = "### Instruction: Create a Python script for this problem: {prompt} ### Response:"


def hust_prompt(instruction: str) -> str:
    """The HUST instruction template.

    >>> hust_prompt("add two numbers")
    '### Instruction: Create a Python script for this problem: add two numbers ### Response:'
    """
    return HUST_TEMPLATE.format(prompt=instruction)
