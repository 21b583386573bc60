"""Benchmark training throughput on this machine, in one run.

1. Peak GEMM FLOP/s in fp32 and bf16 (the physical ceiling for training here).
2. pycodegen's trainer: tokens/s and model FLOPs utilisation (MFU) for the from-scratch `seq2seq`
   (the paper's size), a GPT-2-shaped `hf-causal` from scratch, and SmolLM2-135M with LoRA (r=8,
   q/k/v/o), each in fp32 and bf16 autocast.
3. The same model, data and batch through a plain `transformers.Trainer`, for comparison.

MFU counts 6 FLOPs per parameter per token for full training and 4 for LoRA (the frozen weights get no
weight gradient), against the GEMM peak of the same dtype. Steps after the first `--warmup` are timed.

    python bench/train_bench.py [--steps 6] [--warmup 3] [--batch 8] [--seq 256]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from pycodegen.config import PrepareConfig, TrainConfig
from pycodegen.data.prepare import prepare
from pycodegen.data.python_tree import stdlib_root
from pycodegen.train.loop import Trainer

QUIET = Console(quiet=True)


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - started)


def ours(cfg: TrainConfig, warmup: int) -> tuple[float, Any]:
    """tokens/s of pycodegen's trainer over the steps after `warmup` (from its metrics.jsonl)."""
    trainer = Trainer(cfg, QUIET)
    trainer.run()
    rows = [json.loads(x) for x in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in rows if "tokens_per_s" in r and r["step"] > warmup]
    seconds = sum(r["tokens"] / r["tokens_per_s"] for r in timed)
    return sum(r["tokens"] for r in timed) / seconds, trainer  # total tokens / total time, as for Trainer


def plain_trainer(trainer: Any, cfg: TrainConfig, warmup: int, steps: int) -> float:
    """The same model (seeded as pycodegen seeds it), examples and batch through transformers.Trainer."""
    import transformers

    family = trainer.family
    from pycodegen.train.loop import apply_mode

    model = apply_mode(cfg, family, family.model)
    examples = trainer.train_examples
    times: list[float] = []
    tokens: list[int] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step > warmup:
                times.append(time.perf_counter() - self.t)

    def collate(batch: list[dict]) -> dict:
        out = family.collate(batch)
        tokens.append(family.count_tokens(out))
        return out

    with tempfile.TemporaryDirectory() as tmp:
        args = transformers.TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=cfg.batch_size,
            max_steps=warmup + steps,
            learning_rate=cfg.lr,
            lr_scheduler_type="constant",
            logging_strategy="no",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            bf16=cfg.dtype == "bf16",
            dataloader_num_workers=0,
            remove_unused_columns=False,
            disable_tqdm=True,
            max_grad_norm=cfg.clip,
        )
        transformers.Trainer(
            model=model, args=args, train_dataset=examples, data_collator=collate, callbacks=[Timer()]
        ).train()
    timed_tokens = tokens[warmup : warmup + len(times)]
    return sum(timed_tokens) / sum(times)


SETUPS = {
    "seq2seq": ("seq2seq (6+6 layers, d_model 256)", {"family": "seq2seq", "data": "pairs"}, 6, False),
    "gpt2": (
        "gpt2 from scratch (6 layers, 384)",
        {
            "family": "hf-causal",
            "data": "windows",
            "model": "new:gpt2",
            "model_args": {"n_layer": 6, "n_embd": 384, "n_head": 6},
        },
        6,
        True,
    ),
    "lora": (
        "SmolLM2-135M LoRA r=8 q/k/v/o",
        {"family": "hf-causal", "data": "windows-smol", "model": "smollm2-135m-instruct", "mode": "lora"},
        4,
        True,
    ),
}


def measure_one(root: Path, setup: str, dtype: str, side: str, args: argparse.Namespace) -> dict:
    """One measurement, in a process of its own (no kernel caches or allocator state from another run)."""
    _, spec, _, _ = SETUPS[setup]
    common = {
        "max_steps": args.warmup + args.steps,
        "batch_size": args.batch,
        "log_every": 1,
        "save_every": 10**6,
        "eval_every": 10**6,
        "max_length": args.seq,
        "schedule": "constant",
        "eval_samples": 0,
    }
    spec = {**spec, "data": root / spec["data"]}
    cfg = TrainConfig(out=root / f"run-{setup}-{dtype}-{side}-{os.getpid()}", dtype=dtype, **common, **spec)
    if side == "pycodegen":
        tps, trainer = ours(cfg, args.warmup)
        return {"tokens_per_s": tps, "parameters": sum(p.numel() for p in trainer.family.model.parameters())}
    # transformers.Trainer needs the family's examples: set them up without training
    trainer = Trainer(cfg, QUIET)
    trainer.load_family()
    return {"tokens_per_s": plain_trainer(trainer, cfg, args.warmup, args.steps)}


def main() -> None:
    import subprocess
    import sys

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--one", nargs=4, metavar=("ROOT", "SETUP", "DTYPE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        root, setup, dtype, side = args.one
        print("RESULT " + json.dumps(measure_one(Path(root), setup, dtype, side, args)))
        return
    torch.manual_seed(0)
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"peak GEMM: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
        f"(bf16/fp32 {peaks['bf16'] / peaks['fp32']:.1f}x)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        source = str(stdlib_root() / "email")
        windows = {"task": "lm-windows", "window": args.seq, "stride": args.seq}
        bpe = {"train_tokenizer": True, "vocab_size": 8192}
        datasets = {  # the `data` directories SETUPS name
            "windows": {**windows, **bpe},
            "windows-smol": {**windows, "tokenizer": "smollm2-135m-instruct"},
            "pairs": bpe,
        }
        for name, settings in datasets.items():
            prepare(
                PrepareConfig(
                    source=source, out=root / name, valid_fraction=0.0, test_fraction=0.0, **settings
                ),
                QUIET,
            )
        print(
            f"batch {args.batch} x {args.seq} tokens; {args.warmup} warm-up + {args.steps} timed steps; "
            "each figure from a fresh process"
        )

        def run(setup: str, dtype: str, side: str) -> dict:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                str(root),
                setup,
                dtype,
                side,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--batch",
                str(args.batch),
                "--seq",
                str(args.seq),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            return json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:])

        for setup, (name, _, flops_per_param, compare) in SETUPS.items():
            for dtype in ("fp32", "bf16"):
                mine = run(setup, dtype, "pycodegen")
                tps = mine["tokens_per_s"]
                mfu = tps * flops_per_param * mine["parameters"] / peaks[dtype]
                line = f"{name:36s} {dtype}: pycodegen {tps:8.0f} tok/s, MFU {100 * mfu:5.1f}%"
                if compare:
                    theirs = run(setup, dtype, "transformers")["tokens_per_s"]
                    line += f"; transformers.Trainer {theirs:8.0f} tok/s; ratio {tps / theirs:.2f}x"
                print(line, flush=True)


if __name__ == "__main__":
    main()
