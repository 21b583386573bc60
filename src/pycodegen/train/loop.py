"""`pycodegen train`: one loop for every family, on `accelerate` (so `accelerate launch` / `torchrun`
run it with DDP, FSDP or DeepSpeed unchanged).

Checkpoints are directories OUT/checkpoint-STEP holding the model in HF format (safetensors) and
trainer_state.pt (optimizer, scheduler, data position, RNG states): `--resume` after a kill -9 continues
exactly, because the data order is a pure function of (seed, epoch) and every random state is restored.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pycodegen.config import TrainConfig
from pycodegen.data.prepare import read_manifest
from pycodegen.errors import ConfigError, PycodegenError
from pycodegen.models.family import Family, get_family

STATE_FILE = "trainer_state.pt"


class TrainingDiverged(PycodegenError):
    """The loss became NaN or infinite."""


def parse_budget(text: str | None) -> float | None:
    """Seconds in a budget such as '90s', '10m', '1.5h'.

    >>> parse_budget("10m"), parse_budget("90s"), parse_budget("1.5h"), parse_budget(None)
    (600.0, 90.0, 5400.0, None)
    """
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ConfigError(f"budget {text!r}: use a number with s, m or h, e.g. 10m")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def lr_lambda(cfg: TrainConfig, steps_per_epoch: int):
    """Multiplier of the peak learning rate at each step: linear warm-up by ratio, then the schedule."""
    warmup = int(cfg.warmup_ratio * cfg.max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.max_steps - warmup)
        if cfg.schedule == "linear":
            return max(0.0, 1.0 - progress)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "exponential":
            return cfg.decay_per_epoch ** (step // max(1, steps_per_epoch))
        return 1.0

    return factor


def read_rows(data_dir: Path, split: str) -> list[dict[str, Any]]:
    path = data_dir / f"{split}.jsonl"
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def apply_mode(
    cfg: TrainConfig, family: Family, model: torch.nn.Module, device: torch.device
) -> torch.nn.Module:
    """LoRA / QLoRA via PEFT, and freezing by parameter-name pattern."""
    if cfg.mode == "qlora":
        # The family loaded the weights in 4 bits (its `quantization_config`); LoRA makes them trainable.
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    if cfg.mode in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        targets = cfg.target_modules or family.lora_targets
        if not targets:
            raise ConfigError(f"family {family.name!r} has no default LoRA targets; pass target_modules")
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=targets
            ),
        )
    for name, param in model.named_parameters():
        if any(re.search(p, name) for p in cfg.freeze) and not any(re.search(p, name) for p in cfg.unfreeze):
            param.requires_grad_(False)
    return model


def parameter_counts(model: torch.nn.Module) -> dict[str, Any]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "trainable_share": trainable / total if total else 0.0}


class LossModule(torch.nn.Module):
    """The model and its family's loss as one module. The trainer hands this to `accelerate.prepare`,
    so that DDP/FSDP wrap the whole loss computation: a fused loss calls the model's decoder and output
    layer separately, which would bypass a wrapper around the model alone."""

    def __init__(self, family: Family, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.family_ref = [family]  # a list: the family is not a submodule

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.family_ref[0].loss(self.model, batch)


class Trainer:
    """Runs one training configuration; `run()` returns a summary (also in OUT/summary.json)."""

    def __init__(self, cfg: TrainConfig, console: Console | None = None) -> None:
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.out = Path(cfg.out)

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        found = [
            p for p in self.out.glob("checkpoint-*") if (p / STATE_FILE).is_file() and p.name[11:].isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def inner_model(self) -> torch.nn.Module:
        """The model itself, without the DDP/FSDP wrapper and the loss module."""
        return self.accelerator.unwrap_model(self.model).model

    def save(self, step: int, state: dict[str, Any], name: str | None = None) -> Path:
        acc = self.accelerator
        target = self.out / (name or f"checkpoint-{step}")
        if acc.is_main_process:
            partial = target.with_name(target.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            self.family.save(self.inner_model(), partial)
            torch.save(
                {
                    **state,
                    "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(),
                    "rng": {
                        "python": random.getstate(),
                        "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state(),
                    },
                    "config": json.loads(self.cfg.model_dump_json()),
                },
                partial / STATE_FILE,
            )
            shutil.rmtree(target, ignore_errors=True)
            partial.replace(target)  # a checkpoint appears whole or not at all
            if name is None:
                for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return target

    def restore(self, directory: Path) -> dict[str, Any]:
        state = torch.load(directory / STATE_FILE, weights_only=False)
        self.family.load_weights(self.inner_model(), directory)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        return state

    # -- data -----------------------------------------------------------------------------------------
    def order(self, epoch: int) -> list[int]:
        """The example order of an epoch: a pure function of (seed, epoch), so resuming needs no state."""
        order = list(range(len(self.train_examples)))
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def micro_batches(self, epoch: int, position: int) -> tuple[list[dict[str, torch.Tensor]], int, int]:
        """The micro-batches of one optimizer step for this process, and the next (epoch, position)."""
        cfg, acc = self.cfg, self.accelerator
        per_step = cfg.batch_size * acc.num_processes
        batches = []
        for _ in range(cfg.grad_accum):
            order = self.order(epoch)
            if position + per_step > len(order):  # drop the ragged tail: every step sees a full batch
                epoch, position = epoch + 1, 0
                order = self.order(epoch)
            chunk = order[position : position + per_step]
            mine = chunk[acc.process_index * cfg.batch_size : (acc.process_index + 1) * cfg.batch_size]
            batches.append(self.family.collate([self.train_examples[i] for i in mine]))
            position += per_step
        return batches, epoch, position

    def autocast(self) -> Any:
        device = self.accelerator.device.type
        return torch.autocast(device, dtype=torch.bfloat16, enabled=self.cfg.dtype == "bf16")

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if not self.valid_examples:
            return {}
        model = self.model
        model.eval()
        losses, tokens = 0.0, 0
        bs = self.cfg.batch_size
        for start in range(0, min(len(self.valid_examples), bs * self.cfg.eval_batches), bs):
            batch = self.family.collate(self.valid_examples[start : start + bs])
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            n = self.family.count_tokens(batch)
            with self.autocast():
                loss = model(**batch)
            losses += float(loss) * n
            tokens += n
        mean = losses / max(1, tokens)
        result = {"valid_loss": mean, "valid_perplexity": math.exp(min(mean, 50))}
        unwrapped = self.inner_model()
        result.update(self.family.evaluate(unwrapped, self.valid_rows))
        dev = [r for r in self.valid_rows if "prompt" in r][: self.cfg.eval_samples]
        if self.family.generates and dev and self.accelerator.is_main_process:
            from pycodegen.train.evalgen import generation_metrics

            result.update(generation_metrics(self.family, unwrapped, dev, self.cfg.eval_max_new_tokens))
        model.train()
        return result

    def best_metric(self) -> tuple[str, bool]:
        """(metric, higher is better) for choosing the best checkpoint."""
        name = self.cfg.best_metric
        if name == "auto":
            has_tests = any(r.get("tests") for r in self.valid_rows[: self.cfg.eval_samples])
            name = (
                "dev_pass@1"
                if has_tests and self.family.generates and self.cfg.eval_samples
                else "valid_loss"
            )
        return name, not name.endswith(("loss", "perplexity"))

    # -- the loop -------------------------------------------------------------------------------------
    def load_family(self) -> None:
        """Seed every generator, build the family and its model, and encode the training examples (where
        `run()` starts; bench/train_bench.py uses it to hand the same model and data to another trainer)."""
        cfg = self.cfg
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.family = get_family(cfg.family)(cfg, read_manifest(cfg.data), Path(cfg.data))
        self.family.setup()
        self.train_examples = self.family.pack([self.family.encode(r) for r in read_rows(cfg.data, "train")])

    def run(self) -> dict[str, Any]:
        from accelerate import Accelerator

        cfg = self.cfg
        budget = parse_budget(cfg.budget)
        self.accelerator = acc = Accelerator(cpu=not torch.cuda.is_available())
        if cfg.mode == "qlora" and acc.device.type != "cuda":
            raise ConfigError(
                "QLoRA needs a CUDA GPU (4-bit weights through bitsandbytes); use --mode lora on CPU"
            )
        self.load_family()
        assert self.family.model is not None
        model = apply_mode(cfg, self.family, self.family.model, acc.device)
        counts = parameter_counts(model)
        self.valid_rows = read_rows(cfg.data, "valid")
        self.valid_examples = [self.family.encode(r) for r in self.valid_rows]
        if len(self.train_examples) < cfg.batch_size * acc.num_processes:
            raise ConfigError(
                f"{cfg.data}: {len(self.train_examples)} training examples, fewer than one batch "
                f"({cfg.batch_size} × {acc.num_processes} processes)"
            )
        steps_per_epoch = (
            len(self.train_examples) // (cfg.batch_size * acc.num_processes * cfg.grad_accum) or 1
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:  # the fused kernel (CPU and CUDA in recent torch) is what transformers.Trainer uses by default
            optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, steps_per_epoch))
        self.model, self.optimizer = acc.prepare(LossModule(self.family, model), optimizer)
        self.scheduler = scheduler
        self.out.mkdir(parents=True, exist_ok=True)
        step, epoch, position = 0, 0, 0
        metric, higher = self.best_metric()
        best: dict[str, Any] = {"metric": metric, "higher_is_better": higher, "value": None, "step": None}
        if cfg.resume:
            found = self.checkpoints()
            if not found:
                raise ConfigError(f"--resume: no checkpoint in {self.out}")
            state = self.restore(found[-1])
            step, epoch, position, best = state["step"], state["epoch"], state["position"], state["best"]
        elif self.checkpoints():
            raise ConfigError(f"{self.out} already has checkpoints: pass --resume, or choose another --out")
        if acc.is_main_process:
            (self.out / "train_config.json").write_text(cfg.model_dump_json(indent=2) + "\n")
            share = 100 * counts["trainable_share"]
            self.console.print(
                f"[bold cyan]train[/] {cfg.family} ({cfg.mode}, {cfg.dtype}): "
                f"{counts['trainable']:,} trainable of {counts['total']:,} parameters ({share:.2f}%); "
                f"{len(self.train_examples)} examples, {steps_per_epoch} steps/epoch"
                + (f"; resuming at step {step}" if step else "")
            )
        metrics_path = self.out / "metrics.jsonl"
        if acc.is_main_process and metrics_path.exists():  # drop lines past the checkpoint we resumed from
            kept = [x for x in metrics_path.read_text().splitlines() if x and json.loads(x)["step"] <= step]
            metrics_path.write_text("".join(x + "\n" for x in kept))
        writer = None
        if acc.is_main_process:
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.out / "tensorboard"))
            except ImportError:
                writer = None
        started = time.perf_counter()
        window_tokens, window_compute = 0, 0.0  # tokens/s counts training compute, not evaluation or saving
        stop_reason = "max_steps"
        last_good = self.checkpoints()[-1] if self.checkpoints() else None

        def log(row: dict[str, Any]) -> None:
            if acc.is_main_process:
                with metrics_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                if writer is not None:
                    for k, v in row.items():
                        if k != "step" and isinstance(v, int | float):
                            writer.add_scalar(k, v, row["step"])

        progress = Progress(
            TextColumn("[cyan]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            disable=not acc.is_main_process,
        )
        with progress:
            bar = progress.add_task("train", total=cfg.max_steps, completed=step, status="")
            while step < cfg.max_steps:
                batches, epoch, position = self.micro_batches(epoch, position)
                step_start = time.perf_counter()  # tokens/s: forward, backward and optimizer step
                total_loss, tokens = 0.0, 0
                for batch in batches:
                    batch = {k: v.to(acc.device) for k, v in batch.items()}
                    with self.autocast():
                        loss = self.model(**batch) / cfg.grad_accum
                    acc.backward(loss)
                    total_loss += float(loss.detach())
                    tokens += self.family.count_tokens(batch)
                loss_tensor = acc.reduce(torch.tensor(total_loss, device=acc.device), "mean")
                if not math.isfinite(float(loss_tensor)):
                    kept = f"; the last good checkpoint is {last_good}" if last_good else ""
                    raise TrainingDiverged(
                        f"loss is {float(loss_tensor)} at step {step + 1}: training stopped{kept} "
                        "(try a lower --lr or --dtype fp32)"
                    )
                acc.clip_grad_norm_(self.model.parameters(), cfg.clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                window_tokens += tokens * acc.num_processes
                window_compute += time.perf_counter() - step_start
                rate = window_tokens / max(window_compute, 1e-9)
                progress.update(bar, advance=1, status=f"loss {float(loss_tensor):.4f} · {rate:,.0f} tok/s")
                if step % cfg.log_every == 0 or step == cfg.max_steps:
                    log(
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": round(float(loss_tensor), 6),
                            "lr": self.scheduler.get_last_lr()[0],
                            "tokens": window_tokens,
                            "tokens_per_s": round(window_tokens / max(window_compute, 1e-9), 2),
                            "elapsed_s": round(time.perf_counter() - started, 2),
                        }
                    )
                    window_tokens, window_compute = 0, 0.0
                state = {"step": step, "epoch": epoch, "position": position, "best": best}
                if step % cfg.eval_every == 0:
                    evaluation = self.validate()
                    if evaluation:
                        log({"step": step, **evaluation})
                        value = evaluation.get(best["metric"])
                        if value is None:
                            raise ConfigError(
                                f"best_metric {best['metric']!r} is not among the validation "
                                f"metrics: {', '.join(sorted(evaluation))}"
                            )
                        previous = best["value"]
                        if previous is None or (
                            value > previous if best["higher_is_better"] else value < previous
                        ):
                            best = {**best, "value": value, "step": step}
                            state["best"] = best
                            self.save(step, state, name="best")
                if step % cfg.save_every == 0:
                    last_good = self.save(step, state)
                if budget is not None:
                    # Every rank must stop at the same step: the decision is reduced across processes.
                    over = torch.tensor(float(time.perf_counter() - started >= budget), device=acc.device)
                    if float(acc.reduce(over, "sum")) > 0:
                        stop_reason = "budget"
                        break
        state = {"step": step, "epoch": epoch, "position": position, "best": best}
        final_eval = self.validate()
        if final_eval and step % cfg.eval_every != 0:
            log({"step": step, **final_eval})
        if step % cfg.save_every != 0:
            self.save(step, state)
        final = self.save(step, state, name="final")
        summary = {
            "stop_reason": stop_reason,
            "steps": step,
            "parameters": counts,
            "final": str(final),
            "best": best,
            "elapsed_s": round(time.perf_counter() - started, 2),
            **final_eval,
            **self.family.describe(),
        }
        if acc.is_main_process:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            self.console.print(
                f"[bold cyan]train[/] stopped ({stop_reason}) at step {step}"
                + (f", valid loss {final_eval['valid_loss']:.4f}" if final_eval else "")
                + f" → {final}"
            )
        if writer is not None:
            writer.close()
        return summary


def train(cfg: TrainConfig, console: Console | None = None) -> dict[str, Any]:
    return Trainer(cfg, console).run()
