"""`pycodegen train`: one loop for every family, on `accelerate` (so `accelerate launch` / `torchrun`
run it with DDP, FSDP or DeepSpeed unchanged).

A checkpoint OUT/checkpoint-STEP holds the family's HF-format files (what generate/export read) and
`trainer_state/`, written by `accelerator.save_state`: the weights gathered the accelerate way, the
optimizer, the LR scheduler, every rank's RNG states and the trainer's position (step, epoch, data
position, best checkpoint, elapsed time). `--resume` after a kill -9 continues exactly, because the data
order is a pure function of (seed, epoch) and every random state is restored. OUT/best and OUT/final
hold the family's files only.

The trainer imports nothing from generate/ or evaluate/: dev evaluation arrives as a `TrainCallback`.
"""

from __future__ import annotations

import math
import random
import re
import shlex
import shutil
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from pycodegen.config import TrainConfig, parse_budget
from pycodegen.console import console as default_console
from pycodegen.console import plural, progress
from pycodegen.data.dataset_dir import read_manifest, read_split
from pycodegen.errors import ConfigError, PycodegenError
from pycodegen.jsonl import dumps, iter_jsonl, write_json, write_jsonl
from pycodegen.models.family import Family
from pycodegen.models.registry import apply_family_defaults, get_family
from pycodegen.train.callbacks import TrainCallback

STATE_DIR = "trainer_state"  # inside a step checkpoint: what accelerator.save_state writes
TICKS = 1000  # a budget-ruled schedule runs over this many ticks of elapsed time


class TrainingDiverged(PycodegenError):
    """The loss became NaN or infinite."""


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, total: int) -> Any:
    """The LR scheduler: transformers' constant/linear/cosine with warm-up over `total` steps (or ticks of
    a time budget), or `ExponentialLR` for `exponential` (stepped once per epoch, not per step)."""
    if cfg.schedule == "exponential":
        if cfg.warmup_ratio:
            raise ConfigError(
                "schedule 'exponential' decays per epoch and has no warm-up; set warmup_ratio 0"
            )
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.decay_per_epoch)
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[cfg.schedule]
    return get_scheduler(
        name, optimizer, num_warmup_steps=int(cfg.warmup_ratio * total), num_training_steps=total
    )


def apply_mode(cfg: TrainConfig, family: Family, model: torch.nn.Module) -> torch.nn.Module:
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
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=targets,
                **family.lora_options(),
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


def input_tokens(family: Family, batch: dict[str, torch.Tensor]) -> int:
    """Tokens the model reads: the attention mask's ones where the batch has a mask (prompt and target
    of a causal LM, the encoder side of an encoder-decoder), else every non-padding id of the batch's
    input tensors (all but the labels)."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return sum(int((v != family.pad_id).sum()) for k, v in batch.items() if k != "labels")


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


class Position:
    """Where the run is: saved in every step checkpoint through `accelerator.register_for_checkpointing`.

    `best` is {metric, higher_is_better, value, valid_loss, step, decided_by}; `elapsed` is training
    time summed over every process lifetime of the run (a budget counts the whole run, resumes included).
    """

    def __init__(self) -> None:
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.elapsed = 0.0
        self.best: dict[str, Any] = {"metric": None, "value": None, "step": None}
        self.seen: list[float] = []  # every value of the best metric so far: did it ever move?

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)


def is_better(metric: str, higher: bool, candidate: dict[str, float], best: dict[str, Any]) -> bool:
    """Whether `candidate` (a validation row) beats the best so far: by `metric`, ties by valid loss.

    A metric that never moved (pass@1 0.0 at every evaluation) ties everywhere, so valid loss decides.

    >>> best = {"value": 0.0, "valid_loss": 4.0, "step": 20}
    >>> is_better("dev_pass@1", True, {"dev_pass@1": 0.0, "valid_loss": 3.5}, best)
    True
    >>> is_better("dev_pass@1", True, {"dev_pass@1": 0.0, "valid_loss": 4.5}, best)
    False
    >>> is_better("dev_pass@1", True, {"dev_pass@1": 0.5, "valid_loss": 9.0}, best)
    True
    >>> is_better("valid_loss", False, {"valid_loss": 3.9}, best | {"value": 4.0})
    True
    """
    if best["step"] is None:
        return True
    sign = 1.0 if higher else -1.0
    mine = (sign * candidate[metric], -candidate.get("valid_loss", math.inf))
    theirs = (
        sign * best["value"],
        -(best.get("valid_loss") if best.get("valid_loss") is not None else math.inf),
    )
    return mine > theirs


GROUP_WINDOW = 64  # batches sorted together by group_by_length: wide enough to find similar lengths,
# narrow enough that an epoch still mixes short and long examples from across the data


def grouped_by_length(order: list[int], lengths: list[int], per_step: int, rng: random.Random) -> list[int]:
    """`order` regrouped so that each consecutive run of `per_step` examples has similar lengths (HF
    Trainer's `group_by_length` idea; its sampler lives inside `Trainer`, which this loop does not use).

    Windows of GROUP_WINDOW batches are sorted by length and cut into batches, and the batches are shuffled;
    the ragged tail (fewer than `per_step`) stays last, where `micro_batches` drops it, so every batch is
    aligned to a multiple of `per_step`."""
    full = len(order) - len(order) % per_step
    window = per_step * GROUP_WINDOW
    batches = []
    for start in range(0, full, window):
        chunk = sorted(order[start : min(start + window, full)], key=lambda i: -lengths[i])
        batches += [chunk[k : k + per_step] for k in range(0, len(chunk), per_step)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch] + order[full:]


class Trainer:
    """Runs one training configuration; `run()` returns a summary (also in OUT/summary.json)."""

    def __init__(
        self, cfg: TrainConfig, console: Console | None = None, callbacks: Sequence[TrainCallback] = ()
    ) -> None:
        self.cfg = cfg = apply_family_defaults(cfg)  # e.g. retrieval's batch 64 where the user set none
        self.console = console or default_console
        self.out = Path(cfg.out)
        self.callbacks = list(callbacks)
        self.interrupted = False
        self.last_eval: tuple[int | None, dict[str, float]] = (None, {})  # (step, validation row)

    def call(self, hook: str, *args: Any) -> list[Any]:
        """Call `hook(self, *args)` on every callback (each declares every hook: TrainCallback)."""
        return [getattr(c, hook)(self, *args) for c in self.callbacks]

    # -- checkpoints ----------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        found = [
            p for p in self.out.glob("checkpoint-*") if (p / STATE_DIR).is_dir() and p.name[11:].isdigit()
        ]
        return sorted(found, key=lambda p: int(p.name.split("-")[1]))

    def inner_model(self) -> torch.nn.Module:
        """The model itself, without the DDP/FSDP wrapper and the loss module."""
        return self.accelerator.unwrap_model(self.model).model

    def save(self, name: str, *, with_state: bool) -> Path:
        """OUT/name written whole or not at all (built as name.partial, then renamed), on every process.

        `with_state` adds trainer_state/ (accelerate's save_state: every rank writes its RNG file)."""
        acc = self.accelerator
        target = self.out / name
        partial = target.with_name(target.name + ".partial")
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        acc.wait_for_everyone()
        if with_state:
            acc.save_state(str(partial / STATE_DIR))
        if acc.is_main_process:
            self.family.save(self.inner_model(), partial)
            shutil.rmtree(target, ignore_errors=True)
            partial.replace(target)
            if with_state:
                for old in self.checkpoints()[: -self.cfg.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        self.call("on_save", target)
        return target

    def save_step(self) -> Path:
        return self.save(f"checkpoint-{self.pos.step}", with_state=True)

    def _slim_weights(self, models: list[Any], weights: list[dict[str, Any]], _: str) -> None:
        """save_state hook: leave out frozen weights, which resuming rebuilds from the base model (a LoRA
        checkpoint holds no second copy of the whole base), and the second name of a tied weight (an
        output layer tied to the embedding), which loading re-ties."""
        for model, state in zip(models, weights, strict=False):
            frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
            seen: set[int] = set()
            for key in list(state):
                tensor = state[key]
                if key in frozen or (tensor.numel() and tensor.data_ptr() in seen):
                    del state[key]
                else:
                    seen.add(tensor.data_ptr())

    # -- data -----------------------------------------------------------------------------------------
    def order(self, epoch: int) -> list[int]:
        """The example order of an epoch: a pure function of (seed, epoch), so resuming needs no state."""
        order = list(range(len(self.train_examples)))
        rng = random.Random(self.cfg.seed * 1_000_003 + epoch)
        rng.shuffle(order)
        if self.cfg.group_by_length:
            per_step = self.cfg.batch_size * self.accelerator.num_processes
            lengths = [max(len(v) for v in example.values()) for example in self.train_examples]
            order = grouped_by_length(order, lengths, per_step, rng)
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

    # -- setup ----------------------------------------------------------------------------------------
    def load_family(self) -> None:
        """Seed every generator, build the family and its model, and encode the training examples (where
        `run()` starts; bench/train_bench.py uses it to hand the same model and data to another trainer)."""
        cfg = self.cfg
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.family = get_family(cfg.family)(cfg, read_manifest(cfg.data), Path(cfg.data))
        self.family.setup()
        encoded = [self.family.encode(r) for r in read_split(cfg.data, "train")]
        kept = [e for e in encoded if e is not None]
        if len(kept) < len(encoded):  # drop_long: rows over max_length are left out, not cut
            self.console.print(
                f"[bold cyan]train[/] {plural(len(encoded) - len(kept), 'training example')} longer than "
                f"{cfg.max_length} tokens left out (--drop-long); {len(kept):,} kept"
            )
        if not kept:
            raise ConfigError(f"every training example is longer than --max-length {cfg.max_length}")
        self.train_examples = self.family.pack(kept)

    def setup(self) -> None:
        """Everything before the first step: accelerator, family, optimizer, scheduler, resumed state."""
        from accelerate import Accelerator

        cfg = self.cfg
        self.budget = parse_budget(cfg.budget)
        # With a budget and no max_steps of the user's own, time rules: the schedule runs over TICKS
        # ticks of the budget, stepped by elapsed time, so it decays to its end when the time is up.
        self.time_ruled = self.budget is not None and "max_steps" not in cfg.model_fields_set
        if cfg.resume and not self.checkpoints():  # before anything is created in OUT
            raise ConfigError(f"--resume: no checkpoint in {self.out}")
        if not cfg.resume and self.checkpoints():
            raise ConfigError(f"{self.out} already has checkpoints: pass --resume, or choose another --out")
        self.accelerator = acc = Accelerator(cpu=not torch.cuda.is_available())
        if cfg.mode == "qlora" and acc.device.type != "cuda":
            raise ConfigError(
                "QLoRA needs a CUDA GPU (4-bit weights through bitsandbytes); use --mode lora on CPU"
            )
        self.load_family()
        assert self.family.model is not None
        model = apply_mode(cfg, self.family, self.family.model)
        self.counts = parameter_counts(model)
        self.valid_rows = read_split(cfg.data, "valid")
        self.valid_examples = [e for e in map(self.family.encode, self.valid_rows) if e is not None]
        if len(self.train_examples) < cfg.batch_size * acc.num_processes:
            raise ConfigError(
                f"{cfg.data}: {len(self.train_examples)} training examples, fewer than one batch "
                f"({cfg.batch_size} × {acc.num_processes} processes)"
            )
        self.steps_per_epoch = (
            len(self.train_examples) // (cfg.batch_size * acc.num_processes * cfg.grad_accum) or 1
        )
        trainable = [p for p in model.parameters() if p.requires_grad]
        try:  # the fused kernel (CPU and CUDA in recent torch) is what transformers.Trainer uses by default
            optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(cfg, optimizer, TICKS if self.time_ruled else cfg.max_steps)
        self.model, self.optimizer = acc.prepare(LossModule(self.family, model), optimizer)
        # The scheduler is registered, not prepared: a prepared one steps once per process per step.
        self.pos = Position()
        acc.register_for_checkpointing(self.scheduler, self.pos)
        acc.register_save_state_pre_hook(self._slim_weights)
        if cfg.resume:
            found = self.checkpoints()[-1]
            # strict=False only where frozen weights were left out of the checkpoint on purpose
            acc.load_state(str(found / STATE_DIR), strict=len(trainable) == len(list(model.parameters())))
        self.out.mkdir(parents=True, exist_ok=True)
        self.last_good = self.checkpoints()[-1] if self.checkpoints() else None
        if acc.is_main_process:
            # The settings as given (defaults stay defaults: a budget run resumed from this file is still
            # ruled by time), with absolute paths, so that `--config` this file `--resume` continues the run.
            given = cfg.model_dump(mode="json", exclude_unset=True, exclude={"resume"})
            given.update(data=str(Path(cfg.data).resolve()), out=str(self.out.resolve()))
            if cfg.model and Path(cfg.model).expanduser().exists():  # a local model or checkpoint
                given["model"] = str(Path(cfg.model).expanduser().resolve())
            write_json(self.out / "train_config.json", given)
            self.prepare_metrics_log()

    def prepare_metrics_log(self) -> None:
        """Open OUT/metrics.jsonl, dropping lines past the checkpoint we resumed from, and TensorBoard."""
        path = self.out / "metrics.jsonl"
        if path.exists():  # a kill may have torn the last line: skip_bad drops it
            kept = [r for _, r in iter_jsonl(path, skip_bad=True) if r.get("step", 0) <= self.pos.step]
            write_jsonl(path, kept)
        # Flushed, not fsynced (jsonl.AppendLog): a row per step would cost a disk sync per step, and a
        # row lost to a crash is past the last checkpoint anyway, so resuming drops it.
        self.metrics_log = path.open("a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer: Any = SummaryWriter(str(self.out / "tensorboard"))
        except ImportError:
            self.writer = None

    def log(self, row: dict[str, Any]) -> None:
        if not self.accelerator.is_main_process:
            return
        self.metrics_log.write(dumps(row) + "\n")
        self.metrics_log.flush()
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float):
                    self.writer.add_scalar(k, v, row["step"])
        self.call("on_log", row)

    def announce(self) -> None:
        cfg, counts = self.cfg, self.counts
        if not self.accelerator.is_main_process:
            return
        share = 100 * counts["trainable_share"]
        until = (
            f"for {cfg.budget} (the schedule follows time)" if self.time_ruled else f"{cfg.max_steps} steps"
        )
        self.console.print(
            f"[bold cyan]train[/] {cfg.family} ({cfg.mode}, {cfg.dtype}): "
            f"{counts['trainable']:,} trainable of {counts['total']:,} parameters ({share:.2f}%); "
            f"{len(self.train_examples)} examples, {self.steps_per_epoch} steps/epoch, {until}"
            + (f"; resuming at step {self.pos.step}" if self.pos.step else "")
        )

    # -- one step -------------------------------------------------------------------------------------
    def train_step(self, batches: list[dict[str, torch.Tensor]], epoch: int) -> tuple[float, int, int, float]:
        """One optimizer step on this process's micro-batches (assembled by `micro_batches`, outside the
        timed window, as the bench times the plain Trainer): (mean loss across processes, target tokens and
        input tokens of this process, learning rate of the step)."""
        cfg, acc, pos = self.cfg, self.accelerator, self.pos
        total_loss, target, fed = 0.0, 0, 0
        for cpu_batch in batches:
            # counted on the CPU copy: counting on the device would wait for it at every micro-batch
            target += self.family.count_tokens(cpu_batch)
            fed += input_tokens(self.family, cpu_batch)
            batch = {k: v.to(acc.device) for k, v in cpu_batch.items()}
            with self.autocast():
                loss = self.model(**batch) / cfg.grad_accum
            acc.backward(loss)
            total_loss += float(loss.detach())
        mean = float(acc.reduce(torch.tensor(total_loss, device=acc.device), "mean"))
        if not math.isfinite(mean):
            kept = f"; the last good checkpoint is {self.last_good}" if self.last_good else ""
            raise TrainingDiverged(
                f"loss is {mean} at step {pos.step + 1}: training stopped{kept} "
                "(try a lower --lr or --dtype fp32)"
            )
        acc.clip_grad_norm_(self.model.parameters(), cfg.clip)
        if cfg.schedule == "exponential":
            for _ in range(epoch - pos.epoch):  # once per epoch boundary crossed, before its first step
                self.scheduler.step()
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        pos.step += 1
        pos.epoch = epoch
        if cfg.schedule != "exponential" and not self.time_ruled:
            self.scheduler.step()
        return mean, target, fed, lr

    def follow_time(self, elapsed: float) -> None:
        """A budget-ruled schedule: advance the scheduler to the tick of the elapsed share of the budget."""
        assert self.budget is not None
        tick = min(TICKS, int(TICKS * elapsed / self.budget))
        while self.scheduler.last_epoch < tick:
            self.scheduler.step()

    def should_stop(self, elapsed: float) -> str | None:
        """'budget' or 'interrupted' when every process must stop now (the decision is reduced across
        processes so that all stop at the same step), else None."""
        acc = self.accelerator
        over = self.budget is not None and elapsed >= self.budget
        flags = acc.reduce(torch.tensor([float(over), float(self.interrupted)], device=acc.device), "sum")
        if float(flags[1]) > 0:
            return "interrupted"
        return "budget" if float(flags[0]) > 0 else None

    @contextmanager
    def catching_sigint(self) -> Iterator[None]:
        """Ctrl-C sets a flag that the loop checks after each step (a second Ctrl-C stops at once)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum: int, frame: Any) -> None:
            self.interrupted = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    # -- the loop -------------------------------------------------------------------------------------
    def fit(self) -> str:
        """Train until max_steps, the budget or Ctrl-C; returns the stop reason."""
        cfg, pos = self.cfg, self.pos
        started, before = time.perf_counter(), pos.elapsed
        window: dict[str, float] = {"target": 0, "input": 0, "seconds": 0.0}  # training compute only
        bar_label = "train (time)" if self.time_ruled else "train"
        bar = progress(bar_label, self.console)
        bar.disable = bar.disable or not self.accelerator.is_main_process
        total = self.budget if self.time_ruled else cfg.max_steps
        done = pos.elapsed if self.time_ruled else pos.step
        with bar, self.catching_sigint():
            task = bar.add_task(bar_label, total=total, completed=done, status="")
            while self.time_ruled or pos.step < cfg.max_steps:
                batches, epoch, pos.position = self.micro_batches(pos.epoch, pos.position)
                step_start = time.perf_counter()  # tokens/s: forward, backward and optimizer step
                loss, target, fed, lr = self.train_step(batches, epoch)
                n = self.accelerator.num_processes
                window["target"] += target * n
                window["input"] += fed * n
                window["seconds"] += time.perf_counter() - step_start
                pos.elapsed = before + time.perf_counter() - started
                if self.time_ruled and self.accelerator.num_processes > 1:
                    # every rank must take the same tick (the same LR at each step): one agreed clock
                    clock = torch.tensor(pos.elapsed, device=self.accelerator.device)
                    pos.elapsed = float(self.accelerator.reduce(clock, "max"))
                if self.time_ruled and cfg.schedule != "exponential":  # exponential decays per epoch
                    self.follow_time(pos.elapsed)
                rate = window["target"] / max(window["seconds"], 1e-9)
                status = f"step {pos.step} · loss {loss:.4f} · {rate:,.0f} {self.family.tokens_counted} tok/s"
                bar.update(task, completed=pos.elapsed if self.time_ruled else pos.step, status=status)
                if pos.step % cfg.log_every == 0 or pos.step == cfg.max_steps:
                    self.log_training(loss, lr, window, pos.elapsed)
                    window = {"target": 0, "input": 0, "seconds": 0.0}
                if pos.step % cfg.eval_every == 0:
                    self.validate_and_keep_best()
                if pos.step % cfg.save_every == 0:
                    self.last_good = self.save_step()
                reason = self.should_stop(pos.elapsed)
                if reason:
                    return reason
        return "max_steps"

    def log_training(self, loss: float, lr: float, window: dict[str, float], elapsed: float) -> None:
        seconds = max(window["seconds"], 1e-9)
        self.log(
            {
                "step": self.pos.step,
                "epoch": self.pos.epoch,
                "loss": round(loss, 6),
                "lr": lr,  # the rate this step used
                # tokens = target (label) tokens, the ones the loss is taken on; input = every token fed
                "tokens": int(window["target"]),
                "tokens_per_s": round(window["target"] / seconds, 2),
                "tokens_counted": self.family.tokens_counted,
                "input_tokens": int(window["input"]),
                "input_tokens_per_s": round(window["input"] / seconds, 2),
                "elapsed_s": round(elapsed, 2),
            }
        )

    # -- validation and the best checkpoint -----------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Validation loss, the family's own metrics and the callbacks' (computed on the main process and
        broadcast, so that every process holds the same row and chooses the same best checkpoint)."""
        if not self.valid_examples:
            return {}
        acc = self.accelerator
        self.model.eval()
        losses, tokens = 0.0, 0
        bs = self.cfg.batch_size
        for start in range(0, min(len(self.valid_examples), bs * self.cfg.eval_batches), bs):
            batch = self.family.collate(self.valid_examples[start : start + bs])
            batch = {k: v.to(acc.device) for k, v in batch.items()}
            n = self.family.count_tokens(batch)
            with self.autocast():
                loss = self.model(**batch)
            losses += float(loss) * n
            tokens += n
        mean = losses / max(1, tokens)
        result = {"valid_loss": mean, "valid_perplexity": math.exp(min(mean, 50))}
        unwrapped = self.inner_model()
        result.update(self.family.evaluate(unwrapped, self.valid_rows))
        if acc.is_main_process:
            for metrics in self.call("on_validate", unwrapped, self.family):
                result.update(metrics or {})
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            result = broadcast_object_list([result], from_process=0)[0]
        self.model.train()
        return result

    def choose_metric(self, evaluation: dict[str, float]) -> tuple[str, bool]:
        """(metric, higher is better) for the best checkpoint, from the first validation row."""
        name = self.cfg.best_metric
        if name == "auto":
            name = next(m for m in ("dev_pass@1", "valid_mrr", "valid_loss") if m in evaluation)
        elif name not in evaluation:
            raise ConfigError(
                f"best_metric {name!r} is not among the validation metrics: {', '.join(sorted(evaluation))}"
            )
        return name, not name.endswith(("loss", "perplexity"))

    def keep_best(self, evaluation: dict[str, float]) -> None:
        """Save OUT/best when this validation row beats the best so far (see `is_better`)."""
        pos = self.pos
        if pos.best["metric"] is None:
            metric, higher = self.choose_metric(evaluation)
            pos.best = {**pos.best, "metric": metric, "higher_is_better": higher}
        metric, higher = pos.best["metric"], pos.best["higher_is_better"]
        if metric not in evaluation:
            raise ConfigError(f"best_metric {metric!r} is missing from the validation at step {pos.step}")
        pos.seen.append(evaluation[metric])
        if is_better(metric, higher, evaluation, pos.best):
            pos.best = {
                **pos.best,
                "value": evaluation[metric],
                "valid_loss": evaluation.get("valid_loss"),
                "step": pos.step,
            }
            self.save("best", with_state=False)
        # Ties are broken by valid loss; a metric that never moved decided nothing.
        moved = len(set(pos.seen)) > 1 or metric == "valid_loss"
        pos.best["decided_by"] = metric if moved else "valid_loss"

    def validate_and_keep_best(self) -> dict[str, float]:
        evaluation = self.validate()
        if evaluation:
            self.log({"step": self.pos.step, **evaluation})
            self.keep_best(evaluation)
        self.last_eval = (self.pos.step, evaluation)
        return evaluation

    # -- the end --------------------------------------------------------------------------------------
    def finish(self, stop_reason: str, started: float) -> dict[str, Any]:
        """The last validation (unless this step had one), the last step checkpoint, OUT/best (always:
        the final model when nothing was validated) and OUT/final, then summary.json."""
        cfg, pos, acc = self.cfg, self.pos, self.accelerator
        evaluated_at, final_eval = self.last_eval
        if evaluated_at != pos.step:
            final_eval = self.validate_and_keep_best()
        if pos.best["step"] is None:  # no validation rows: the best we can say is the last step
            pos.best = {"metric": None, "value": None, "step": pos.step, "decided_by": "last step"}
            self.save("best", with_state=False)
        if pos.step % cfg.save_every != 0:
            self.save_step()
        final = self.save("final", with_state=False)
        summary = {
            "stop_reason": stop_reason,
            "steps": pos.step,
            "parameters": self.counts,
            "final": str(final),
            "best": {**pos.best, "path": str(self.out / "best")},
            "elapsed_s": round(time.perf_counter() - started, 2),
            **final_eval,
            **self.family.describe(),
            "notes": self.family.notes(final_eval),
        }
        if acc.is_main_process:
            write_json(self.out / "summary.json", summary)
            self.console.print(
                f"[bold cyan]train[/] stopped ({stop_reason}) at step {pos.step}"
                + (f", valid loss {final_eval['valid_loss']:.4f}" if "valid_loss" in final_eval else "")
                + f" → {final} (best: step {pos.best['step']})"
            )
            for note in summary["notes"]:
                self.console.print(f"[bold yellow]note:[/] {note}", highlight=False)
        self.call("on_train_end", summary)
        return summary

    def stop_on_interrupt(self) -> None:
        """After Ctrl-C: a step checkpoint, where it is, and the command that continues the run."""
        where = self.save_step()
        if self.accelerator.is_main_process:
            command = f"pycodegen train --config {shlex.quote(str(self.out / 'train_config.json'))} --resume"
            self.console.print(
                f"[bold yellow]train[/] interrupted at step {self.pos.step}: checkpoint saved in {where}\n"
                f"continue with: {command}",
                highlight=False,
                soft_wrap=True,
            )

    def close(self) -> None:
        if self.accelerator.is_main_process:
            self.metrics_log.close()
            if self.writer is not None:
                self.writer.close()

    def run(self) -> dict[str, Any]:
        self.setup()
        try:
            self.announce()
            self.call("on_train_begin")
            started = time.perf_counter()
            reason = self.fit()
            if reason == "interrupted":
                self.stop_on_interrupt()
                raise KeyboardInterrupt  # the CLI exits 130, as for any Ctrl-C
            return self.finish(reason, started)
        finally:
            self.close()


def train(
    cfg: TrainConfig, console: Console | None = None, callbacks: Sequence[TrainCallback] = ()
) -> dict[str, Any]:
    """Train `cfg`; `callbacks` (e.g. evaluate.dev.DevGeneration) add dev metrics and hooks."""
    return Trainer(cfg, console, callbacks).run()
