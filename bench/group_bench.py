"""Benchmark `--group-by-length` against plain shuffled batches, in one run on this machine.

The same model, data, batch and steps through pycodegen's trainer, the two orders alternated (each run a
fresh Trainer), `--repeats` times each. The figure is real (non-padding) input tokens per second over the
steps after `--warmup`, so the two orders are compared on the work that counts, whichever rows they drew.
The padding each order adds over a whole epoch is printed too.

Default data: MBPP train as chat instructions (what `prepare --task instruction` makes of it), prepared in a
temporary directory; `--data DIR` takes any prepared dataset (the zoo model's, for instance).

    python bench/group_bench.py [--data DIR] [--steps 10] [--warmup 2] [--batch 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from pycodegen.config import PrepareConfig, TrainConfig
from pycodegen.data.prepare import prepare
from pycodegen.train.loop import Trainer, grouped_by_length

QUIET = Console(quiet=True)


def padding(lengths: list[int], order: list[int], batch: int) -> float:
    """Padded tokens over real tokens for the full batches of `order`."""
    full = len(order) - len(order) % batch
    padded = sum(max(lengths[i] for i in order[k : k + batch]) * batch for k in range(0, full, batch))
    return padded / sum(lengths[i] for i in order[:full])


def measure(cfg: TrainConfig, warmup: int) -> float:
    Trainer(cfg, QUIET).run()
    rows = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "input_tokens_per_s" in r and r["step"] > warmup]
    seconds = sum(r["input_tokens"] / r["input_tokens_per_s"] for r in timed)
    return sum(r["input_tokens"] for r in timed) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a prepared dataset directory (default: MBPP train)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--mode", default="lora")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data
        if data is None:
            data = root / "mbpp"
            prepare(
                PrepareConfig(
                    source="builtin:mbpp",
                    mbpp_splits=["train"],
                    task="instruction",
                    template="chat",
                    tokenizer=args.model,
                    eval_format=True,
                    out=data,
                    valid_fraction=0.0,
                    test_fraction=0.0,
                ),
                QUIET,
            )

        def cfg(group: bool, run: int) -> TrainConfig:
            return TrainConfig(
                family="hf-causal",
                model=args.model,
                mode=args.mode,
                dtype=args.dtype,
                data=data,
                out=root / f"run-{group}-{run}",
                max_steps=args.warmup + args.steps,
                batch_size=args.batch,
                max_length=args.max_length,
                drop_long=True,
                group_by_length=group,
                log_every=1,
                save_every=10**6,
                eval_every=10**6,
                eval_samples=0,
                schedule="constant",
            )

        probe = Trainer(cfg(False, -1), QUIET)
        probe.load_family()
        lengths = [max(len(v) for v in e.values()) for e in probe.train_examples]
        order = list(range(len(lengths)))
        rng = random.Random(0)
        rng.shuffle(order)
        print(
            f"data {data}: {len(lengths):,} rows, {min(lengths)}-{max(lengths)} tokens (mean "
            f"{statistics.mean(lengths):.0f}); padded/real tokens per epoch at batch {args.batch}: shuffled "
            f"{padding(lengths, order, args.batch):.2f}x, grouped "
            f"{padding(lengths, grouped_by_length(order, lengths, args.batch, rng), args.batch):.2f}x"
        )
        del probe
        figures: dict[bool, list[float]] = {False: [], True: []}
        for run in range(args.repeats):
            for group in (False, True):
                figures[group].append(measure(cfg(group, run), args.warmup))
                name = "grouped " if group else "shuffled"
                print(f"  run {run + 1}, {name}: {figures[group][-1]:.0f} tok/s")
        plain, grouped = (statistics.median(figures[g]) for g in (False, True))
        print(
            f"{args.model} {args.mode} {args.dtype}, batch {args.batch}, {args.steps} timed steps, "
            f"medians of {args.repeats}: shuffled {plain:.0f} input tok/s, --group-by-length {grouped:.0f} "
            f"({grouped / plain:.2f}x)"
        )


if __name__ == "__main__":
    main()
