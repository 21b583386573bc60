"""`pycodegen generate` on free-form prompts: load the model, decode, print and/or write samples.

`run_generate` is the verb's entry point; with a benchmark or problems file it hands over to
`generate.samples` (samples for evaluation), otherwise it completes the given prompts.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.syntax import Syntax

from pycodegen.console import plural
from pycodegen.errors import PycodegenError
from pycodegen.jsonl import write_jsonl


def run_generate(cfg: Any, console: Console, echo: bool = True) -> list[dict[str, Any]]:
    """`pycodegen generate`: benchmark samples (with `benchmark`/`problems`) or free-form prompts."""
    if cfg.benchmark is not None or cfg.problems is not None:
        from pycodegen.generate.samples import generate_benchmark

        generate_benchmark(cfg, console)
        return []
    if not cfg.prompt:
        raise PycodegenError("give at least one --prompt (or --benchmark/--problems)")
    return generate_freeform(cfg, console, echo=echo)


def generate_freeform(cfg: Any, console: Console, echo: bool = True) -> list[dict[str, Any]]:
    """Generate `cfg.n` samples per prompt; returns the sample rows (also written to `cfg.out`).

    An existing `cfg.out` is never overwritten silently: it is refused unless `overwrite` is set.
    """
    from pycodegen.generate.decoding import format_prompt, generate, resolve_prompt_mode
    from pycodegen.zoo import load_causal_lm

    # Checked before the model loads, so the refusal costs nothing.
    if cfg.out is not None and cfg.out.exists() and not cfg.overwrite:
        raise PycodegenError(f"{cfg.out} already exists; choose another --out or pass --overwrite")
    started = time.perf_counter()
    console.print(f"[bold cyan]generate[/] loading {cfg.model}")
    model, tokenizer = load_causal_lm(cfg.model)
    mode = resolve_prompt_mode(tokenizer, cfg.prompt_mode, cfg.model)
    formatted = [format_prompt(tokenizer, p, mode) for p in cfg.prompt]
    loaded = time.perf_counter()
    completions = generate(model, tokenizer, formatted, cfg)
    rows = []
    for i, (prompt, samples) in enumerate(zip(cfg.prompt, completions, strict=True)):
        for j, text in enumerate(samples):
            rows.append(
                {
                    "task_id": f"prompt/{i}",
                    "sample_index": j,
                    "prompt": prompt,
                    "prompt_mode": mode,
                    "completion": text,
                    "raw": text,
                }
            )
            if echo:
                console.rule(f"prompt {i} · sample {j}")
                echo_sample(console, text)
    if cfg.out is not None:
        write_jsonl(cfg.out, rows)
    done = time.perf_counter()
    console.print(
        f"[bold cyan]generate[/] {plural(len(rows), 'sample')} ({mode} prompts) in {done - loaded:.1f} s "
        f"(model load {loaded - started:.1f} s)" + (f" → {cfg.out}" if cfg.out else "")
    )
    return rows


def echo_sample(console: Console, text: str) -> None:
    """Show one generated text: highlighted on a terminal; in a log, exactly as generated (rich's
    Syntax pads every line with spaces to the console width)."""
    if console.is_terminal and "def " in text:
        console.print(Syntax(text, "python", word_wrap=True))
    else:
        console.print(text, markup=False, highlight=False)
