"""Completion → program → sandbox job: how a sample of a benchmark problem is turned into the program the
sandbox runs (HumanEval style continues the prompt; MBPP style is the whole program)."""

from __future__ import annotations

import ast

from pycodegen.benchmarks import Problem, defines, example_test, program_for
from pycodegen.pyast import try_parse
from pycodegen.sandbox.executor import Job


def generated_code(problem: Problem, completion: str) -> str:
    """What the model wrote for a problem, without the prompt: for HumanEval style, the body of the entry
    point (text metrics would otherwise be dominated by the prompt both sides share).

    >>> p = Problem("t", "def f(x):\\n", "", "f", "", None, "    return x\\n", "    return x\\n")
    >>> generated_code(p, "def f(x):\\n    y = x\\n    return y\\n")
    '    y = x\\n    return y\\n'
    >>> generated_code(p, "def f(x:\\n    return (")
    'def f(x:\\n    return ('
    """
    if problem.style == "mbpp":
        return completion
    tree = try_parse(completion)
    if tree is None:
        return completion  # what the model wrote, as it is
    if not defines(completion, problem.entry_point):
        return completion
    node = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef) and n.name == problem.entry_point
    )
    body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
    lines = completion.splitlines(keepends=True)
    return "".join(lines[body[0].lineno - 1 : node.end_lineno])


def split_setup(test: str) -> tuple[str, str]:
    r"""(setup, tests) of MBPP-style test code: the leading statements that are not asserts build inputs
    from the program's classes (MBPP 367 and 927 build trees with `Node`), so they run in the program's
    process; the asserts run in the checker.

    >>> split_setup("root = Node(1)\nroot.left = Node(2)\nassert f(root) == 2\n")
    ('root = Node(1)\nroot.left = Node(2)\n', 'assert f(root) == 2\n')
    >>> split_setup("assert f(1) == 2")
    ('', 'assert f(1) == 2')
    """
    tree = try_parse(test)
    if tree is None or not tree.body or isinstance(tree.body[0], ast.Assert):
        return "", test
    first = next((n for n in tree.body if isinstance(n, ast.Assert)), None)
    if first is None:
        return "", test
    lines = test.splitlines(keepends=True)
    return "".join(lines[: first.lineno - 1]), "".join(lines[first.lineno - 1 :])


def job_for(problem: Problem, completion: str, sample_index: int) -> Job:
    """The sandbox job of one sample. HumanEval style: the checker runs the prompt itself (`prelude`:
    its imports and helpers such as `poly`, and the entry point's stub, which the RPC proxy replaces), so
    a program that redefines a helper cannot change what the tests compute."""
    setup, test = split_setup(problem.test) if problem.style == "mbpp" else ("", problem.test)
    return Job(
        problem.task_id,
        sample_index,
        program_for(problem, completion),
        test,
        entry_point=problem.entry_point,
        check=problem.check,
        entry_points=[problem.entry_point],
        prelude=problem.prompt if problem.style != "mbpp" else "",
        setup=setup,
    )


def example_job_for(problem: Problem, completion: str, sample_index: int) -> Job | None:
    """A job that runs only the examples a user can see in the prompt (never the hidden tests)."""
    test = (
        "\n".join(t for t, _ in problem.examples)
        if problem.style == "mbpp"
        else example_test(problem.examples)
    )
    if not test.strip():
        return None
    return Job(
        problem.task_id,
        sample_index,
        program_for(problem, completion),
        test,
        entry_points=[problem.entry_point],
        prelude=problem.prompt if problem.style != "mbpp" else "",
    )
