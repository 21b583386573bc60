"""`pycodegen generate` on free-form prompts: load the model, decode, print and/or write samples."""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.syntax import Syntax

from pycodegen.config import GenerateConfig
from pycodegen.generate.decoding import DecodingConfig, format_prompt, generate, resolve_prompt_mode
from pycodegen.zoo import load_causal_lm


def run_generate(cfg: GenerateConfig, console: Console, echo: bool = True) -> list[dict[str, Any]]:
    """Generate `cfg.n` samples per prompt; returns the sample rows (also written to `cfg.out`)."""
    started = time.perf_counter()
    console.print(f"[bold cyan]generate[/] loading {cfg.model}")
    model, tokenizer = load_causal_lm(cfg.model)
    mode = resolve_prompt_mode(tokenizer, cfg.prompt_mode)
    formatted = [format_prompt(tokenizer, p, mode) for p in cfg.prompt]
    decoding = DecodingConfig.of(cfg)
    loaded = time.perf_counter()
    completions = generate(model, tokenizer, formatted, decoding)
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
                console.print(Syntax(text, "python", word_wrap=True) if "def " in text else text)
    if cfg.out is not None:
        cfg.out.parent.mkdir(parents=True, exist_ok=True)
        with cfg.out.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    done = time.perf_counter()
    console.print(
        f"[bold cyan]generate[/] {len(rows)} samples ({mode} prompts) in {done - loaded:.1f} s "
        f"(model load {loaded - started:.1f} s)" + (f" → {cfg.out}" if cfg.out else "")
    )
    return rows
