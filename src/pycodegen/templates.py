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


def humaneval_instruction(prompt: str) -> str:
    """What a chat or instruction model is asked for a HumanEval-format problem (evaluate's wording).

    >>> humaneval_instruction("def f():\\n")
    'Complete the following Python function:\\n```python\\ndef f():\\n```'
    """
    return "Complete the following Python function:\n```python\n" + prompt + "```"


def mbpp_instruction(text: str, tests: list[str]) -> str:
    """What a model is asked for an MBPP problem: the description plus its tests, as the MBPP paper
    prompts it."""
    return f"{text}\nYour code should pass these tests:\n\n" + "\n".join(tests)


def fenced(code: str) -> str:
    """Code as a chat model answers it, in a Python block (evaluate stops after the first block).

    >>> fenced("x = 1\\n")
    '```python\\nx = 1\\n```'
    """
    return f"```python\n{code.rstrip()}\n```"
