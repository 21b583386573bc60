"""Source tree → HumanEval-format problems (`prepare --task problems`).

A top-level function whose docstring carries `>>>` examples becomes a problem: `prompt` = the imports and
module-level helpers the function needs + its signature and docstring, `entry_point`, `test` = the examples
as checks inside `check(candidate)`, `canonical_solution` = the original body. `verify` then keeps a problem
only when the sandbox says the original passes its own test and the bare prompt (a body that returns None)
does not: a test that nothing can fail is no test.

Which examples become checks (doctest compares printed text; a check compares values, so only examples
whose meaning survives the change are kept):
- `>>> expr` with an expected output that is a Python literal → `assert (expr) == literal`;
- an expected traceback ending in a built-in exception → the call must raise that exception;
- `>>> statement` with no output (`x = [3, 1]`) → run as it is, so later examples can use it;
- anything else (printed text, reprs of objects, `+ELLIPSIS`/`+SKIP`) → dropped, and a problem left with no
  check that calls its entry point is dropped.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from pycodegen.data.records import FunctionRecord
from pycodegen.pyast import try_parse
from pycodegen.sandbox.executor import Executor, Job

BUILTIN_NAMES = frozenset(dir(builtins))
BUILTIN_EXCEPTIONS = frozenset(
    n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)
)
# Reasons a function gives no problem (counted in the manifest).
NO_EXAMPLES = "no_doctest_examples"
NOT_TOP_LEVEL = "not_top_level_function"
NO_BODY = "no_body"
NO_CHECKS = "no_value_checks"
THIRD_PARTY = "third_party_import"
UNRESOLVED = "unresolved_name"


@dataclass
class ModuleContext:
    """What a function of one module can lean on: its imports and its top-level definitions."""

    imports: dict[str, str]  # bound name → the import statement that binds it
    defs: dict[str, ast.stmt]  # top-level function/class/assignment → its node
    lines: list[str]

    @classmethod
    def of(cls, text: str) -> ModuleContext | None:
        tree = try_parse(text)
        if tree is None:
            return None
        imports: dict[str, str] = {}
        defs: dict[str, ast.stmt] = {}
        for node in tree.body:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    bound = alias.asname or alias.name.split(".")[0]
                    imports[bound] = ast.unparse(ast.Import([alias]))
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    if alias.name != "*":
                        imports[alias.asname or alias.name] = ast.unparse(
                            ast.ImportFrom(node.module, [alias], 0)
                        )
            elif isinstance(node, ast.FunctionDef | ast.ClassDef):
                defs[node.name] = node
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        defs[t.id] = node
        return cls(imports, defs, text.splitlines(keepends=True))

    def source(self, node: ast.stmt) -> str:
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        return "".join(self.lines[first - 1 : node.end_lineno])


def free_names(node: ast.AST) -> set[str]:
    """Names a piece of code reads but does not bind itself (a conservative over-approximation)."""
    loaded, bound = set(), set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            (loaded if isinstance(sub.ctx, ast.Load) else bound).add(sub.id)
        elif isinstance(sub, ast.arg):
            bound.add(sub.arg)
        elif isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and sub is not node:
            bound.add(sub.name)
        elif isinstance(sub, ast.alias):
            bound.add(sub.asname or sub.name.split(".")[0])
        elif isinstance(sub, ast.ExceptHandler) and sub.name:
            bound.add(sub.name)
    return loaded - bound - BUILTIN_NAMES


def _stdlib(import_stmt: str) -> bool:
    tree = ast.parse(import_stmt)
    node = tree.body[0]
    module = node.names[0].name if isinstance(node, ast.Import) else node.module  # type: ignore[union-attr]
    return (module or "").split(".")[0] in sys.stdlib_module_names


def context_for(names: Iterable[str], ctx: ModuleContext, own: str) -> tuple[list[str], list[str]] | str:
    """(import lines, helper sources) that make `names` resolvable, or the reason they cannot be."""
    imports: dict[str, None] = {}
    helpers: dict[ast.stmt, None] = {}
    todo, seen = list(names), {own}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in ctx.imports:
            if not _stdlib(ctx.imports[name]):
                return THIRD_PARTY
            imports[ctx.imports[name]] = None
        elif name in ctx.defs:
            node = ctx.defs[name]
            helpers[node] = None
            todo += sorted(free_names(node))
        else:
            return UNRESOLVED
    # In the module's own order: a constant defined from another keeps its definition after that one.
    return list(imports), [ctx.source(n) for n in sorted(helpers, key=lambda n: n.lineno)]


def _exception_name(want: str) -> str | None:
    last = want.strip().splitlines()[-1] if want.strip() else ""
    name = last.split(":", 1)[0].strip().rsplit(".", 1)[-1]
    return (
        name if want.startswith("Traceback (most recent call last)") and name in BUILTIN_EXCEPTIONS else None
    )


def example_checks(examples: list[doctest.Example], entry: str) -> tuple[list[str], int]:
    """The body lines of `check(candidate)` for a function's examples, and how many are value checks that
    call the entry point."""
    lines, checks = [], 0
    skip = {doctest.OPTIONFLAGS_BY_NAME[n] for n in ("ELLIPSIS", "SKIP")}
    for ex in examples:
        source, want = ex.source.strip(), ex.want
        if any(ex.options.get(flag) for flag in skip):
            continue
        tree = try_parse(source)
        if tree is None or not tree.body:
            continue
        calls_entry = entry in {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        if not want.strip():
            if not (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)):
                lines.append(source)  # a statement examples after it may rely on
            continue
        if (exc := _exception_name(want)) is not None:
            lines += [
                "try:",
                *(f"    {line}" for line in source.splitlines()),
                f"except {exc}:",
                "    pass",
                "else:",
                f"    raise AssertionError({('expected ' + exc + ': ' + source)!r})",
            ]
            checks += calls_entry
            continue
        if not (len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)):
            continue
        try:
            ast.literal_eval(want.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        lines.append(f"assert ({source}) == {want.strip()}, {source!r}")
        checks += calls_entry
    return lines, checks


def problem_for(fn: FunctionRecord, ctx: ModuleContext, task_prefix: str = "") -> dict | str:
    """The problem a function gives, or the reason (a counter name) it gives none."""
    if fn.class_name is not None or fn.decorators or fn.signature.startswith("async"):
        return NOT_TOP_LEVEL
    if not fn.docstring or ">>>" not in fn.docstring:
        return NO_EXAMPLES
    if not fn.body.strip() or not fn.prompt:
        return NO_BODY
    try:
        examples = doctest.DocTestParser().get_examples(fn.docstring)
    except ValueError:
        return NO_EXAMPLES
    body_lines, checks = example_checks(examples, fn.name)
    if not checks:
        return NO_CHECKS
    node = ctx.defs.get(fn.name)
    if not isinstance(node, ast.FunctionDef):
        return NOT_TOP_LEVEL
    test_tree = try_parse("\n".join(body_lines))
    needed = free_names(node) | (free_names(test_tree) if test_tree else set())
    resolved = context_for(sorted(needed - {fn.name}), ctx, fn.name)
    if isinstance(resolved, str):
        return resolved
    imports, helpers = resolved
    head = "".join(f"{line}\n" for line in imports)
    head += "".join(f"\n\n{h.rstrip()}\n" for h in helpers)
    prompt = (head.lstrip("\n") + "\n\n" if head else "") + fn.prompt
    test = "\n\ndef check(candidate):\n" + f"    {fn.name} = candidate\n"
    test += "".join(f"    {line}\n" for chunk in body_lines for line in chunk.splitlines())
    return {
        "task_id": f"{task_prefix}{fn.path}::{fn.name}",
        "prompt": prompt,
        "entry_point": fn.name,
        "canonical_solution": fn.body,
        "test": test,
        "checks": checks,
    }


RETRY_TIMEOUT_FACTOR = 3  # an original that timed out gets this many times the time once more (`verify`)


def verification_jobs(problem: dict, index: int) -> list[Job]:
    """Two sandbox jobs: the original (must pass) and the bare prompt (must not)."""
    jobs = []
    for k, program in enumerate((problem["prompt"] + problem["canonical_solution"], problem["prompt"])):
        jobs.append(
            Job(
                problem["task_id"],
                2 * index + k,
                program,
                problem["test"],
                entry_point=problem["entry_point"],
                check="check",
                prelude=problem["prompt"],  # the checker runs the prompt itself, as for HumanEval
            )
        )
    return jobs


def verify(
    problems: list[dict], executor: Executor, progress: object | None = None
) -> tuple[list[dict], Counter]:
    """The problems whose original passes its test and whose bare prompt fails it; counts of the rest.

    An original that runs out of time is run once more with RETRY_TIMEOUT_FACTOR times the time: on a
    loaded machine a slow but correct function would otherwise be dropped, and which problems a tree
    yields would depend on the load. One that times out again is counted apart from the ones that fail."""
    jobs = [job for i, p in enumerate(problems) for job in verification_jobs(p, i)]
    outcome: dict[int, str] = {}
    for verdict in executor.map(jobs):
        outcome[verdict.sample_index] = verdict.outcome
        if callable(progress):
            progress(1)
    originals = jobs[::2]  # verification_jobs: each problem's original, then its bare prompt
    slow = [job for job in originals if outcome.get(job.sample_index) == "timeout"]
    if slow:
        timeout = executor.timeout
        executor.timeout = timeout * RETRY_TIMEOUT_FACTOR
        try:
            for verdict in executor.map(slow):
                outcome[verdict.sample_index] = verdict.outcome
        finally:
            executor.timeout = timeout
    kept, counts = [], Counter()
    for i, p in enumerate(problems):
        original, bare = outcome.get(2 * i), outcome.get(2 * i + 1)
        if original == "timeout":
            counts["dropped_original_times_out"] += 1
        elif original != "passed":
            counts["dropped_original_fails"] += 1
        elif bare == "passed":
            counts["dropped_trivial_test"] += 1
        else:
            kept.append(p)
    return kept, counts
