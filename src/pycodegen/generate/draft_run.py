"""`pycodegen draft-heads`: the model answers instructions (resumable), then `generate.draft` fits its
draft heads to the answers and writes them with their card. Apart from `generate.draft` because it
decodes through the engine, which itself imports `generate.draft`."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pycodegen.generate.draft import (
    DraftHeadsError,
    fingerprint,
    save_heads,
    train_draft_heads,
)


def default_instructions() -> list[str]:
    """MBPP's train, validation and prompt splits (CC BY 4.0; never its test split): 474 instructions."""
    from pycodegen.benchmarks import MBPP_SPLITS, mbpp_problem, mbpp_rows

    return [mbpp_problem(r).instruction for s in MBPP_SPLITS if s != "test" for r in mbpp_rows(s)]


def answer(
    engine: Any,
    instructions: Sequence[str],
    out: Path,
    max_new_tokens: int,
    report: Callable[[int, int], None] | None = None,
) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, greedy answer ids) for each instruction, through the engine in batches; appended to
    `out` as they come, and read back from it on a rerun (a killed run loses at most one batch). Row i
    answers instruction i: a different instruction list needs a fresh `out`."""
    from pycodegen.generate.engine import DecodeParams
    from pycodegen.jsonl import AppendLog, iter_jsonl

    # a torn last line (a kill mid-write) is dropped and its batch answered again
    done = (
        [(r["prompt_ids"], r["answer_ids"]) for _, r in iter_jsonl(out, skip_bad=True)]
        if out.is_file()
        else []
    )
    log = AppendLog(out)
    params = DecodeParams(max_new_tokens=max_new_tokens)
    batch = max(1, engine.max_batch)
    for start in range(len(done), len(instructions), batch):
        prompts = [engine.format_prompt(t) for t in instructions[start : start + batch]]
        results = engine.generate(prompts, params)
        for prompt, choices in zip(prompts, results, strict=True):
            ids = engine.backend.encode(prompt)
            log.append({"prompt_ids": ids, "answer_ids": list(choices[0].token_ids)})
            done.append((ids, list(choices[0].token_ids)))
        if report:
            report(len(done), len(instructions))
    return done[: len(instructions)]  # a rerun with a smaller --limit reads only its own


def run_draft_heads(cfg: Any, console: Any) -> dict[str, Any]:
    """`pycodegen draft-heads`: answers (OUT/answers.jsonl, resumed), heads, card; the card's dict."""
    from pycodegen.benchmarks import load_humaneval_file
    from pycodegen.console import progress
    from pycodegen.generate.engine import Engine

    started = time.perf_counter()
    engine = Engine.load(cfg.model, dtype="fp32", max_batch=cfg.batch_size, threads=cfg.threads)
    backend = engine.backend
    if not getattr(backend, "lean", False):
        raise DraftHeadsError(f"draft heads need a Llama-architecture model; {cfg.model} is not")
    instructions = default_instructions()
    for path in cfg.problems:
        instructions += [p.instruction for p in load_humaneval_file(Path(path))]
    # an instruction whose prompt leaves no room for an answer within the model's context is left out
    context = getattr(backend, "max_len", None)
    fits = [
        t
        for t in instructions
        if context is None or engine.count_tokens(engine.format_prompt(t)) + cfg.max_new_tokens <= context
    ]
    too_long = len(instructions) - len(fits)
    instructions = fits[: cfg.limit]
    if too_long:
        console.print(f"[yellow]draft-heads[/] {too_long} instructions left out: too long for the context")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    with progress("answering", console) as bar:
        task = bar.add_task("answering", total=len(instructions), status="")
        pairs = answer(
            engine,
            instructions,
            out / "answers.jsonl",
            cfg.max_new_tokens,
            lambda done, total: bar.update(task, completed=done),
        )
    answered = time.perf_counter()
    console.print(f"[bold cyan]draft-heads[/] {len(pairs)} answers in {answered - started:.0f} s; training")
    heads, metrics = train_draft_heads(
        engine.model, pairs, count=cfg.heads, epochs=cfg.epochs, report=console.print
    )
    card = {
        "model": cfg.model,
        "fingerprint": fingerprint(engine.model),
        "hidden": int(engine.model.config.hidden_size),
        "heads": cfg.heads,
        "data": {
            "instructions": len(instructions),
            "left_out_too_long": too_long,
            "sources": ["MBPP train/validation/prompt (CC BY 4.0)", *map(str, cfg.problems)],
            "answers": f"the model's own greedy answers (prompt mode {engine.prompt_mode()})",
            "max_new_tokens": cfg.max_new_tokens,
        },
        "epochs": cfg.epochs,
        **metrics,
        "seconds": {
            "answering": round(answered - started),
            "training": round(time.perf_counter() - answered),
        },
    }
    save_heads(heads, out, card)
    console.print(
        f"[bold cyan]draft-heads[/] {out}: held-out accuracy per head {metrics.get('head_accuracy')}, "
        f"first k all right {metrics.get('first_k_all_right')}"
    )
    return card
