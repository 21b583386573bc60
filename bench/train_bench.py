"""Benchmark training throughput on this machine, in one run.

1. Peak GEMM FLOP/s in fp32 and bf16 (the physical ceiling for training here).
2. pycodegen's trainer: tokens/s and model FLOPs utilisation (MFU) for the from-scratch `seq2seq`
   (the paper's size), a GPT-2-shaped `hf-causal` from scratch, and SmolLM2-135M with LoRA (r=8,
   q/k/v/o), each in fp32 and bf16 autocast.
3. The same model, data and batch through a plain `transformers.Trainer`, for comparison.

MFU counts 6 FLOPs per parameter per token for full training and 4 for LoRA (the frozen weights get no
weight gradient), against the GEMM peak of the same dtype. Steps after the first `--warmup` are timed.

    python bench/train_bench.py [--steps 6] [--warmup 2] [--batch 8] [--seq 256]
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
    timed = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r and r["step"] > warmup]
    return sum(timed) / len(timed), trainer


def plain_trainer(trainer: Any, cfg: TrainConfig, warmup: int, steps: int) -> float:
    """The same model (re-initialised the same way), examples and batch through transformers.Trainer."""
    import transformers

    family = trainer.family
    torch.manual_seed(cfg.seed)
    family.setup()
    from pycodegen.train.loop import apply_mode

    model = apply_mode(cfg, family, family.model, torch.device("cpu"))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    args = parser.parse_args()
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
        prepare(
            PrepareConfig(
                source=source,
                out=root / "windows",
                task="lm-windows",
                window=args.seq,
                stride=args.seq,
                train_tokenizer=True,
                vocab_size=8192,
                valid_fraction=0.0,
                test_fraction=0.0,
            ),
            QUIET,
        )
        prepare(
            PrepareConfig(
                source=source,
                out=root / "windows-smol",
                task="lm-windows",
                window=args.seq,
                stride=args.seq,
                tokenizer="smollm2-135m-instruct",
                valid_fraction=0.0,
                test_fraction=0.0,
            ),
            QUIET,
        )
        prepare(
            PrepareConfig(
                source=source,
                out=root / "pairs",
                train_tokenizer=True,
                vocab_size=8192,
                valid_fraction=0.0,
                test_fraction=0.0,
            ),
            QUIET,
        )
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
        setups = [
            ("seq2seq (6+6 layers, d_model 256)", dict(family="seq2seq", data=root / "pairs"), 6, False),
            (
                "gpt2 from scratch (6 layers, 384)",
                dict(
                    family="hf-causal",
                    data=root / "windows",
                    model="new:gpt2",
                    model_args={"n_layer": 6, "n_embd": 384, "n_head": 6},
                ),
                6,
                True,
            ),
            (
                "SmolLM2-135M LoRA r=8 q/k/v/o",
                dict(
                    family="hf-causal", data=root / "windows-smol", model="smollm2-135m-instruct", mode="lora"
                ),
                4,
                True,
            ),
        ]
        print(f"batch {args.batch} x {args.seq} tokens; {args.warmup} warm-up + {args.steps} timed steps")
        for name, spec, flops_per_param, compare in setups:
            for dtype in ("fp32", "bf16"):
                cfg = TrainConfig(out=root / f"run-{len(os.listdir(root))}", dtype=dtype, **common, **spec)
                tps, trainer = ours(cfg, args.warmup)
                params = sum(p.numel() for p in trainer.family.model.parameters())
                mfu = tps * flops_per_param * params / peaks[dtype]
                line = f"{name:36s} {dtype}: pycodegen {tps:8.0f} tok/s, MFU {100 * mfu:5.1f}%"
                if compare:
                    theirs = plain_trainer(trainer, cfg, args.warmup, args.steps)
                    line += f"; transformers.Trainer {theirs:8.0f} tok/s; ratio {tps / theirs:.2f}x"
                print(line, flush=True)


if __name__ == "__main__":
    main()
