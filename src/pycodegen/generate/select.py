"""Selection by execution for free prompts (`generate --best-of N --select examples`): of N samples of a
prompt, one that passes the `>>>` examples in the prompt's docstring, run in the sandbox; ties and prompts
without examples go by mean token log-probability (`metrics.select_index`, the rule `evaluate --best-of`
scores)."""

from __future__ import annotations

import ast
import threading
from contextlib import closing
from dataclasses import dataclass

from pycodegen.benchmarks import Problem, docstring_examples, example_test, program_for, usable_examples
from pycodegen.generate.postprocess import postprocess
from pycodegen.metrics import select_index
from pycodegen.pyast import try_parse
from pycodegen.sandbox.executor import Executor, Job


@dataclass
class Selection:
    index: int  # the chosen sample
    passed_examples: list[bool | None]  # per sample; None: the prompt has no usable examples
    examples: int  # how many examples were checked


def prompt_problem(prompt: str, task_id: str) -> Problem | None:
    """The prompt as a HumanEval-style problem when it is code with a function whose docstring has examples
    (`>>>` or one-line) with literal expected values (the last such function is the entry point); else
    None."""
    tree = try_parse(prompt + "    pass\n")
    if tree is None:
        return None
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and ast.get_docstring(n)]
    examples = docstring_examples(prompt)
    if not functions or not example_test(examples).strip():
        return None
    entry = functions[-1].name
    return Problem(task_id, prompt, prompt, entry, "", None, examples=examples)


def select_by_examples(
    prompts: list[str],
    samples: list[list[tuple[str, float | None]]],
    mode: str,
    executor: Executor,
    stop: threading.Event | None = None,
) -> list[Selection]:
    """For each prompt, its samples' (raw text, mean log-probability) → the selection. Setting `stop`
    (the server's client left, or its time ran out) ends the judging after the samples running now; the
    selections are then partial and meant to be thrown away."""
    problems = [prompt_problem(p, f"prompt/{i}") for i, p in enumerate(prompts)]
    jobs = []
    for problem, texts in zip(problems, samples, strict=True):
        if problem is None:
            continue
        for j, (raw, _) in enumerate(texts):
            code = postprocess(raw, mode=mode, entry_point=problem.entry_point, style="humaneval")
            jobs.append(
                Job(
                    problem.task_id,
                    j,
                    program_for(problem, code),
                    example_test(problem.examples),
                    entry_point=problem.entry_point,
                    prelude=problem.prompt,
                )
            )
    passed: dict[tuple[str, int], bool] = {}
    with closing(executor.map(jobs)) as verdicts:  # closing it skips the samples not yet started
        for verdict in verdicts:
            passed[verdict.task_id, verdict.sample_index] = verdict.passed
            if stop is not None and stop.is_set():
                break
    selections = []
    for i, (problem, texts) in enumerate(zip(problems, samples, strict=True)):
        flags: list[bool | None] = [
            passed.get((f"prompt/{i}", j)) if problem is not None else None for j in range(len(texts))
        ]
        index = select_index([(flag, lp) for flag, (_, lp) in zip(flags, texts, strict=True)])
        count = len(usable_examples(problem.examples)) if problem is not None else 0
        selections.append(Selection(index, flags, count))
    return selections
