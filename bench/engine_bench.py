"""Decoding speed of the engine (pycodegen.generate.engine) against plain transformers `generate()` and
transformers' own continuous batching (`generate_batch`), measured in one run on the same model, prompt,
dtype and threads.

    PYTHONPATH=src python bench/engine_bench.py [--model smollm2-135m-instruct] [--tokens 64] [--threads 2]
        [--prompt-lookup 2] [--draft-heads DIR]

Prints single-stream decode tokens/s (greedy, a fixed number of new tokens: end-of-sequence ignored), the
8-request aggregate, the ratios the issue asks for (engine single stream / generate() ≥ 1.5; 8 requests
aggregate / single stream ≥ 3), the int8 and bf16 variants, and the memory-bandwidth bound (the bytes of
weights read per token at the measured copy bandwidth). Prompt-lookup speculative decoding (Saxena 2023)
is measured both ways: the engine's (`--prompt-lookup K` draft tokens at most, with its acceptance rate)
and plain `generate(..., prompt_lookup_num_tokens=K)`, what a transformers user would pick instead; with
draft heads (`--draft-heads DIR_OR_NAME`) the engine's single stream is also measured with the heads
alone and with prompt lookup + heads. A
shared machine makes every figure noisy: the ratios are measured seconds apart in the same process, so
they suffer less than the absolute rates.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from serve_bench import cpu_model  # this directory is on the path of a script run from it

from pycodegen.generate.engine import PROMPT_LOOKUP, DecodeParams, Engine

TASKS = [
    "Write a Python function that checks whether a number is prime.",
    "Write a Python function that reverses a string.",
    "Write a function that returns the n-th Fibonacci number.",
    "Write a Python function that merges two sorted lists.",
    "Write a function that counts the vowels in a string.",
    "Write a Python function that flattens a nested list.",
    "Write a function that returns the factorial of n.",
    "Write a Python class for a stack with push and pop.",
]


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights read per decoded token: every parameter and buffer once (tied weights once, input
    embeddings not: one row each), quantized Linear layers their packed int8 weights."""
    head = model.get_output_embeddings()
    head_weight = getattr(head, "weight", None)
    tied = head_weight.data_ptr() if isinstance(head_weight, torch.Tensor) else None
    # An input embedding is read one row per token, unless it is also the output layer (tied)
    seen = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)} - {tied}
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    for module in model.modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):  # packed weights are no parameters
            weight = module.weight()
            total += weight.numel() * weight.element_size()
    return total


def copy_bandwidth(megabytes: int = 256) -> float:
    """Bytes per second of reading a large fp32 tensor (a sum: reads only), best of 5."""
    x = torch.ones(megabytes * 2**20 // 4)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - start)
    return x.numel() * 4 / best


def plain_generate(model: Any, tokenizer: Any, prompt: str, tokens: int, lookup: int = 0) -> float:
    """generate()'s tokens/s; `lookup` > 0: with transformers' prompt lookup (`prompt_lookup_num_tokens`)."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    extra = {"prompt_lookup_num_tokens": lookup} if lookup else {}
    with torch.no_grad():
        start = time.perf_counter()
        out = model.generate(
            **ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0, **extra
        )
        elapsed = time.perf_counter() - start
    return (out.shape[1] - ids["input_ids"].shape[1]) / elapsed


def engine_rate(
    engine: Engine, prompts: list[str], tokens: int, lookup: int = 0, drafter: Any = None
) -> float:
    """Aggregate generated tokens/s of `prompts` decoded together (one prompt: single stream), with
    `lookup` prompt-lookup draft tokens at most (0 = step by step) and `drafter`'s draft heads (None =
    without)."""
    engine.prompt_lookup = lookup
    engine.backend.drafter = drafter  # type: ignore[union-attr]
    params = DecodeParams(max_new_tokens=tokens, ignore_eos=True)
    start = time.perf_counter()
    done = engine.generate(prompts, params)
    elapsed = time.perf_counter() - start
    return sum(len(c[0].token_ids) for c in done) / elapsed


def library_batching(model: Any, tokenizer: Any, prompts: list[str], tokens: int) -> float | str:
    """transformers' continuous batching (`generate_batch`): aggregate tokens/s, or why it failed."""
    from transformers import GenerationConfig

    inputs = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    config = GenerationConfig(max_new_tokens=tokens, do_sample=False, eos_token_id=-1, pad_token_id=0)
    try:
        start = time.perf_counter()
        out = model.generate_batch(inputs, generation_config=config, progress_bar=False)
        elapsed = time.perf_counter() - start
    except Exception as exc:  # a library path that does not run here is a finding, not a crash
        return f"failed: {type(exc).__name__}: {str(exc)[:120]}"
    generated = sum(len(o.generated_tokens) for o in out.values())
    return generated / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per request")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--draft-heads",
        default=None,
        help="draft heads for the engine: a directory or a shipped name (smollm2-135m-instruct-draft)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per figure")
    parser.add_argument("--skip-library", action="store_true", help="skip transformers' generate_batch")
    parser.add_argument(
        "--prompt-lookup",
        type=int,
        default=PROMPT_LOOKUP or 2,  # the engine default, else 2
        help="most draft tokens of prompt lookup, for the engine and for generate()",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def best(measure: Any) -> float:
        return max(measure() for _ in range(args.repeats))

    engine = Engine.load(args.model, dtype="fp32", max_batch=8, draft_heads=args.draft_heads)
    drafter = engine.backend.drafter  # type: ignore[union-attr]
    model, tokenizer = engine.model, engine.tokenizer
    prompts = [engine.format_prompt(t) for t in TASKS]
    n = args.tokens
    engine_rate(engine, prompts[:1], 4)  # warm-up: first-call allocations
    plain_generate(model, tokenizer, prompts[0], 4)
    print(
        f"model {args.model}, {n} new tokens per request, {args.threads} threads, fp32 unless said; "
        f"CPU {cpu_model()}"
    )
    # Alternated, best of `repeats` each: a burst of load from elsewhere hits both sides alike.
    k = args.prompt_lookup
    runs: dict[str, list[float]] = {
        "generate": [],
        "single": [],
        "eight": [],
        "lookup": [],
        "gen_lookup": [],
        "heads": [],
        "both": [],
        "default_kernels": [],
    }
    head_stats: dict[str, int] = {}
    for _ in range(args.repeats):
        runs["generate"].append(plain_generate(model, tokenizer, prompts[0], n))
        runs["single"].append(engine_rate(engine, prompts[:1], n))
        runs["eight"].append(engine_rate(engine, prompts, n))
        before = dict(engine.stats)
        runs["lookup"].append(engine_rate(engine, prompts[:1], n, lookup=k))
        drafted, accepted, passes = (engine.stats[s] - before[s] for s in ("drafted", "accepted", "steps"))
        runs["gen_lookup"].append(plain_generate(model, tokenizer, prompts[0], n, lookup=k))
        plan = engine.backend._kernels  # type: ignore[union-attr]
        engine.backend._kernels = {}  # type: ignore[union-attr]  # torch's default Linear everywhere
        runs["default_kernels"].append(engine_rate(engine, prompts[:1], n, lookup=k))
        engine.backend._kernels = plan  # type: ignore[union-attr]
        if drafter is not None:
            runs["heads"].append(engine_rate(engine, prompts[:1], n, drafter=drafter))
            before = dict(engine.stats)
            runs["both"].append(engine_rate(engine, prompts[:1], n, lookup=k, drafter=drafter))
            head_stats = {s: engine.stats[s] - before[s] for s in ("drafted", "accepted", "steps")}
    base, single, eight, lookup, gen_lookup = (
        max(runs[r]) for r in ("generate", "single", "eight", "lookup", "gen_lookup")
    )
    print(f"plain generate()             {base:7.1f} tok/s")
    print(
        f"engine single stream         {single:7.1f} tok/s   {single / base:.2f}x generate()  (target 1.5x)"
    )
    print(
        f"engine 8 requests, aggregate {eight:7.1f} tok/s   {eight / single:.2f}x single stream (target 3x)"
    )
    print(
        f"engine single stream, prompt lookup {k}  {lookup:7.1f} tok/s   {lookup / base:.2f}x generate(), "
        f"{lookup / single:.2f}x engine without; {accepted} of {drafted} drafts accepted "
        f"({accepted / max(drafted, 1):.0%}), {passes} passes for {n - 1} tokens after the first"
    )
    print(
        f"generate(prompt_lookup_num_tokens={k})    {gen_lookup:7.1f} tok/s   {gen_lookup / base:.2f}x "
        f"generate(); the engine's is {lookup / gen_lookup:.2f}x it"
    )
    plan = engine.backend._kernels or {}  # type: ignore[union-attr]
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    one = sum(1 for m in linears if plan.get(id(m), (None, False))[1])
    many = sum(1 for m in linears if plan.get(id(m), (None, False, False))[2])
    default_kernels = max(runs["default_kernels"])
    print(
        f"kernels timed at load: oneDNN for {one} of {len(linears)} Linears at one row, {many} at several; "
        f"with torch's default for all, prompt lookup {k}: {default_kernels:.1f} tok/s "
        f"({lookup / default_kernels:.2f}x for the choice)"
    )
    if drafter is not None:
        heads, both = max(runs["heads"]), max(runs["both"])
        print(
            f"engine single stream, draft heads ({drafter.count})  {heads:7.1f} tok/s   "
            f"{heads / base:.2f}x generate(), {heads / single:.2f}x engine without"
        )
        print(
            f"engine single stream, prompt lookup {k} + draft heads  {both:7.1f} tok/s   "
            f"{both / base:.2f}x generate()  (target 1.5x); {head_stats['accepted']} of "
            f"{head_stats['drafted']} drafts accepted, {head_stats['steps']} passes for {n - 1} tokens"
        )
    engine.prompt_lookup, engine.backend.drafter = 0, None  # type: ignore[union-attr]
    plain_text = engine.generate(prompts[:1], DecodeParams(max_new_tokens=n))[0][0].token_ids
    engine.prompt_lookup = k
    same = engine.generate(prompts[:1], DecodeParams(max_new_tokens=n))[0][0].token_ids == plain_text
    engine.backend.drafter = drafter  # type: ignore[union-attr]
    same_heads = engine.generate(prompts[:1], DecodeParams(max_new_tokens=n))[0][0].token_ids == plain_text
    engine.prompt_lookup, engine.backend.drafter = 0, None  # type: ignore[union-attr]
    print(f"prompt-lookup greedy tokens equal step-by-step's: {same}; with draft heads too: {same_heads}")

    bandwidth = copy_bandwidth()
    fp32_bytes = weight_bytes(model)
    print(
        f"memory bound: {fp32_bytes / 1e6:.0f} MB of weights per token at {bandwidth / 1e9:.1f} GB/s read "
        f"= {bandwidth / fp32_bytes:.1f} tok/s (fp32)"
    )
    if not args.skip_library:
        lib1 = library_batching(model, tokenizer, prompts[:1], n)
        lib8 = library_batching(model, tokenizer, prompts, n)
        for label, rate in (("single stream", lib1), ("8 requests   ", lib8)):
            shown = f"{rate:7.1f} tok/s" if isinstance(rate, float) else rate
            print(f"transformers generate_batch {label} {shown}")

    int8 = Engine.load(args.model, dtype="int8", max_batch=8)
    engine_rate(int8, prompts[:1], 4)
    q_single = best(lambda: engine_rate(int8, prompts[:1], n))
    q_eight = best(lambda: engine_rate(int8, prompts, n))
    q_lookup = best(lambda: engine_rate(int8, prompts[:1], n, lookup=k))
    q_bytes = weight_bytes(int8.model)
    print(
        f"engine int8 single stream       {q_single:7.1f} tok/s   {q_single / base:.2f}x generate() fp32; "
        f"8 requests {q_eight:.1f} tok/s ({q_eight / q_single:.2f}x); {q_bytes / 1e6:.0f} MB per token, "
        f"bound {bandwidth / q_bytes:.1f} tok/s"
    )
    print(
        f"engine int8 single stream, prompt lookup {k} {q_lookup:7.1f} tok/s   {q_lookup / base:.2f}x "
        f"generate() fp32, {q_lookup / q_single:.2f}x int8 without"
    )
    same = int8.generate(prompts[:1], DecodeParams(max_new_tokens=n))[0][0].text
    ref = engine.generate(prompts[:1], DecodeParams(max_new_tokens=n))[0][0].text
    print(f"int8 greedy text equals fp32's: {same == ref}")
    bf16 = Engine.load(args.model, dtype="bf16", max_batch=8)
    engine_rate(bf16, prompts[:1], 4)
    print(f"engine bf16 single stream       {best(lambda: engine_rate(bf16, prompts[:1], n)):7.1f} tok/s")


if __name__ == "__main__":
    main()
