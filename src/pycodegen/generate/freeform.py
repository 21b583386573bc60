"""`pycodegen generate` on free-form prompts: load the model, decode, print and/or write samples.

`run_generate` is the verb's entry point; with a benchmark or problems file it hands over to
`generate.samples` (samples for evaluation), otherwise it completes the given prompts (`--prompt`, or
`--input FILE` / `-` for stdin) through the decoding engine and prints them as text or JSONL.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.syntax import Syntax

from pycodegen.console import plural
from pycodegen.errors import DataError, PycodegenError
from pycodegen.jsonl import dumps, write_jsonl


def run_generate(
    cfg: Any, console: Console, echo: bool = True, stdout: TextIO | None = None
) -> list[dict[str, Any]]:
    """`pycodegen generate`: benchmark samples (with `benchmark`/`problems`) or free-form prompts."""
    if cfg.benchmark is not None or cfg.problems is not None:
        from pycodegen.generate.samples import generate_benchmark

        generate_benchmark(cfg, console)
        return []
    return generate_freeform(cfg, console, echo=echo, stdout=stdout)


def read_prompts(source: str | None, stdin: TextIO | None = None) -> list[str]:
    """Prompts from a file ('-' = stdin): JSONL rows with a "prompt" field when the first line is a JSON
    object, else one prompt per non-empty line."""
    if source is None:
        return []
    if source == "-":
        text = (stdin or sys.stdin).read()
        where = "stdin"
    else:
        path = Path(source)
        if not path.is_file():
            raise DataError(f"--input {source}: no such file")
        text = path.read_text(encoding="utf-8")
        where = source
    lines = text.splitlines()
    if lines and lines[0].lstrip().startswith("{"):
        prompts = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise DataError(f'{where}:{number}: a JSONL prompt row needs a "prompt" string')
            prompts.append(row["prompt"])
        return prompts
    return [line for line in lines if line.strip()]


def generate_freeform(
    cfg: Any, console: Console, echo: bool = True, stdout: TextIO | None = None
) -> list[dict[str, Any]]:
    """Generate `cfg.n` samples per prompt (`--prompt`s, then `--input`'s) through the decoding engine;
    prints them on `stdout` (plain text, or JSONL with `--format jsonl`) when `echo`, and returns the
    sample rows (also written to `cfg.out`). An existing `cfg.out` is never overwritten silently."""
    from pycodegen.generate.engine import Engine, decode_params

    prompts = [*cfg.prompt, *read_prompts(cfg.input)]
    if not prompts:
        raise PycodegenError("give at least one --prompt or --input FILE (or --benchmark/--problems)")
    # Checked before the model loads, so the refusal costs nothing.
    if cfg.out is not None and cfg.out.exists() and not cfg.overwrite:
        raise PycodegenError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    out = stdout or sys.stdout
    started = time.perf_counter()
    console.print(f"[bold cyan]generate[/] loading {cfg.model}")
    engine = Engine.load(
        cfg.model,
        dtype=cfg.dtype,
        max_batch=cfg.batch_size,
        threads=cfg.threads,
        prompt_lookup=cfg.prompt_lookup,
        draft_heads=cfg.draft_heads,
    )
    mode = engine.prompt_mode(cfg.prompt_mode)
    formatted = [engine.format_prompt(p, mode) for p in prompts]
    loaded = time.perf_counter()
    params = decode_params(cfg, cfg.stop)
    if cfg.best_of is not None:
        params.n = cfg.best_of
        params.logprobs = 0 if engine.supports_logprobs else None
    completions = engine.generate(formatted, params)
    picked = best_of(cfg, prompts, completions, mode, console) if cfg.best_of is not None else None
    rows = []
    for i, (prompt, choices) in enumerate(zip(prompts, completions, strict=True)):
        for j, choice in enumerate(choices):
            if picked is not None and j != picked[i].index:
                continue
            row = {
                "task_id": f"prompt/{i}",
                "sample_index": j,
                "prompt": prompt,
                "prompt_mode": mode,
                "completion": choice.text,
                "raw": choice.text,
                "finish_reason": choice.finish_reason,
            }
            if picked is not None:
                row |= {
                    "best_of": cfg.best_of,
                    "mean_logprob": choice.mean_logprob,
                    "passed_examples": picked[i].passed_examples,
                    "examples": picked[i].examples,
                }
            rows.append(row)
            if not echo:
                continue
            if cfg.format == "jsonl":
                out.write(dumps(row) + "\n")
            else:
                if len(prompts) * (1 if picked is not None else cfg.n) > 1:
                    console.rule(f"prompt {i} · sample {j}")
                if out.isatty():  # highlighted on a terminal; in a pipe or file, exactly as generated
                    echo_sample(Console(file=out), choice.text)
                else:
                    out.write(choice.text + ("" if choice.text.endswith("\n") else "\n"))
            out.flush()
    if cfg.out is not None:
        write_jsonl(cfg.out, rows)
    done = time.perf_counter()
    tokens = sum(len(c.token_ids) for choices in completions for c in choices)
    rate = tokens / max(done - loaded, 1e-9)
    console.print(
        f"[bold cyan]generate[/] {plural(len(rows), 'sample')} ({mode} prompts), "
        f"{plural(tokens, 'token')} in {done - loaded:.1f} s ({rate:.1f} tokens/s; model load "
        f"{loaded - started:.1f} s)" + (f" → {cfg.out}" if cfg.out else "")
    )
    return rows


def best_of(cfg: Any, prompts: list[str], completions: list[Any], mode: str, console: Console) -> list[Any]:
    """Which of each prompt's samples to keep: one that passes its >>> examples in the sandbox."""
    from pycodegen.generate.select import select_by_examples
    from pycodegen.sandbox.executor import Executor

    samples = [[(c.text, c.mean_logprob) for c in choices] for choices in completions]
    with Executor(workers=0, timeout=10.0) as executor:
        picked = select_by_examples(prompts, samples, mode, executor)
    for i, sel in enumerate(picked):
        passing = sum(1 for p in sel.passed_examples if p)
        how = (
            f"{passing} of {len(sel.passed_examples)} samples pass its {plural(sel.examples, 'example')}"
            if sel.examples
            else "no >>> examples with literal results: the likeliest sample"
        )
        console.print(f"[bold cyan]generate[/] prompt {i}: sample {sel.index} chosen ({how})")
    return picked


def echo_sample(console: Console, text: str) -> None:
    """Show one generated text: highlighted on a terminal; in a log, exactly as generated (rich's
    Syntax pads every line with spaces to the console width)."""
    if console.is_terminal and "def " in text:
        console.print(Syntax(text, "python", word_wrap=True))
    else:
        console.print(text, markup=False, highlight=False)
