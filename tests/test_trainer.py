"""The training loop itself: what a checkpoint holds, the best checkpoint, dev evaluation as a callback
(also under DDP), budgets that rule the schedule, Ctrl-C, and the LR schedules."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import QUIET, char_cfg, char_dataset, functions  # noqa: F401 (a fixture)

from pycodegen.config import TrainConfig
from pycodegen.errors import ConfigError
from pycodegen.train.callbacks import TrainCallback
from pycodegen.train.loop import STATE_DIR, grouped_by_length, make_scheduler, train


@pytest.fixture(scope="module")
def chars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return char_dataset(tmp_path_factory.mktemp("data") / "chars")


def rows(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


class Scripted(TrainCallback):
    """Dev metrics whose values the test chooses, one per validation pass (for the selection logic)."""

    def __init__(self, values: list[float]) -> None:
        self.values = list(values)

    def on_validate(self, trainer: Any, model: torch.nn.Module, family: Any) -> dict[str, float]:
        return {"dev_pass@1": self.values.pop(0)}


def test_a_step_checkpoint_holds_exactly_the_family_files_and_accelerate_state(
    chars: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    cfg = char_cfg(
        chars, run, max_steps=4, save_every=2, eval_every=2, keep_checkpoints=5, schedule="constant"
    )
    train(cfg, QUIET)
    family_files = files(run / "final")  # what family.save writes: weights, config, vocabulary
    assert "model.safetensors" in family_files and not any(f.startswith(STATE_DIR) for f in family_files)
    state_files = {
        "model.safetensors",  # the weights as accelerate gathers them (FSDP/ZeRO-3 safe)
        "optimizer.bin",
        "random_states_0.pkl",  # one per rank
        "custom_checkpoint_0.pkl",  # the LR scheduler
        "custom_checkpoint_1.pkl",  # the trainer's position
    }
    for step in (2, 4):
        assert files(run / f"checkpoint-{step}") == family_files | {f"{STATE_DIR}/{f}" for f in state_files}
    assert files(run / "best") == family_files
    position = torch.load(run / "checkpoint-4" / STATE_DIR / "custom_checkpoint_1.pkl", weights_only=False)
    assert set(position) == {"step", "epoch", "position", "elapsed", "best", "seen"}
    assert (position["step"], position["epoch"], position["position"]) == (4, 0, 32)  # 40 examples, batch 8
    assert position["best"]["metric"] == "valid_loss" and position["best"]["step"] in (2, 4)
    assert len(position["seen"]) == 2 and position["elapsed"] > 0
    scheduler = torch.load(run / "checkpoint-4" / STATE_DIR / "custom_checkpoint_0.pkl", weights_only=False)
    assert scheduler["last_epoch"] == 4
    rng = torch.load(run / "checkpoint-4" / STATE_DIR / "random_states_0.pkl", weights_only=False)
    assert {"random_state", "numpy_random_seed", "torch_manual_seed"} <= set(rng)


def test_resume_without_a_checkpoint_leaves_no_directory(chars: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no checkpoint"):
        train(char_cfg(chars, tmp_path / "nothing", max_steps=2, resume=True), QUIET)
    assert not (tmp_path / "nothing").exists()


def three_evaluations(chars: Path, run: Path, pass_at_1: list[float]) -> dict[str, Any]:
    """A 6-step run validated (and checkpointed) at steps 2, 4 and 6, its dev pass@1 scripted."""
    cfg = char_cfg(chars, run, max_steps=6, eval_every=2, save_every=2, keep_checkpoints=5)
    return train(cfg, QUIET, callbacks=[Scripted(pass_at_1)])


def test_best_is_the_higher_pass_at_1_not_the_lower_loss(chars: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = three_evaluations(chars, run, [0.25, 0.5, 0.25])
    evals = [r for r in rows(run) if "valid_loss" in r]
    assert [r["dev_pass@1"] for r in evals] == [0.25, 0.5, 0.25]
    assert evals[2]["valid_loss"] < evals[1]["valid_loss"]  # the loss alone would pick step 6
    best = summary["best"]
    assert (best["metric"], best["value"], best["step"], best["decided_by"]) == (
        "dev_pass@1",
        0.5,
        4,
        "dev_pass@1",
    )
    assert (run / "best" / "model.safetensors").read_bytes() == (
        run / "checkpoint-4" / "model.safetensors"
    ).read_bytes()


def test_pass_at_1_that_never_moved_falls_back_to_valid_loss(chars: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    summary = three_evaluations(chars, run, [0.0, 0.0, 0.0])
    evals = [r for r in rows(run) if "valid_loss" in r]
    lowest = min(evals, key=lambda r: r["valid_loss"])["step"]
    assert lowest != 2  # the first evaluation is not the best: it must not win the tie
    best = summary["best"]
    assert (best["metric"], best["step"], best["decided_by"]) == ("dev_pass@1", lowest, "valid_loss")
    assert (run / "best" / "model.safetensors").read_bytes() == (
        run / f"checkpoint-{lowest}" / "model.safetensors"
    ).read_bytes()


def test_a_run_without_validation_rows_still_ends_with_best(chars: Path, tmp_path: Path) -> None:
    data = tmp_path / "novalid"
    shutil.copytree(chars, data)
    (data / "valid.jsonl").write_text("")
    summary = train(char_cfg(data, tmp_path / "run", max_steps=3), QUIET)
    assert summary["best"]["step"] == 3 and summary["best"]["decided_by"] == "last step"
    assert (tmp_path / "run" / "best" / "model.safetensors").is_file()


@pytest.fixture
def one_thread() -> Any:
    """One intra-op thread: a tiny model steps fastest so, and steadily on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_budget_without_max_steps_rules_the_schedule(chars: Path, tmp_path: Path, one_thread: None) -> None:
    run = tmp_path / "run"
    tiny = {"n_embd": 8, "n_layer": 1}
    cfg = char_cfg(
        chars,
        run,
        budget="4s",
        batch_size=2,
        log_every=10,
        schedule="cosine",
        eval_every=10**6,
        model_args=tiny,
    )
    assert "max_steps" not in cfg.model_fields_set and cfg.max_steps == 200
    summary = train(cfg, QUIET)
    assert summary["stop_reason"] == "budget" and summary["steps"] > 200  # not capped by the default
    lrs = [r["lr"] for r in rows(run) if "lr" in r]
    assert lrs[0] > 0.9 * cfg.lr and lrs[-1] < 0.05 * cfg.lr  # cosine over the time: decayed at the end
    assert summary["best"]["step"] == summary["steps"] and (run / "best" / "model.safetensors").is_file()
    saved = json.loads((run / "train_config.json").read_text())  # what `--config ... --resume` reads
    assert "max_steps" not in saved and saved["budget"] == "4s" and saved["out"] == str(run.resolve())


def test_a_budget_with_the_exponential_schedule_decays_per_epoch(chars: Path, tmp_path: Path) -> None:
    """char-rnn's own schedule (exponential, ×0.97 per epoch) under a budget: the LR follows the epochs,
    not the budget's ticks (which would have multiplied it by 0.97 a thousand times)."""
    run = tmp_path / "run"
    cfg = char_cfg(chars, run, budget="2s", batch_size=2, schedule="exponential", model_args={"n_embd": 8})
    summary = train(cfg, QUIET)
    last = [r for r in rows(run) if "lr" in r][-1]
    assert summary["stop_reason"] == "budget"
    assert last["lr"] == pytest.approx(cfg.lr * cfg.decay_per_epoch ** last["epoch"], rel=1e-6)


def test_an_explicit_max_steps_caps_a_budget(chars: Path, tmp_path: Path) -> None:
    summary = train(char_cfg(chars, tmp_path / "run", budget="1h", max_steps=5), QUIET)
    assert summary["stop_reason"] == "max_steps" and summary["steps"] == 5


def test_schedules_come_from_the_libraries(chars: Path, tmp_path: Path) -> None:
    """Warm-up then cosine over max_steps (transformers.get_scheduler), exponential per epoch."""
    param = torch.nn.Parameter(torch.zeros(1))
    cfg = char_cfg(chars, tmp_path, max_steps=10, schedule="cosine", warmup_ratio=0.2, lr=1.0)
    opt = torch.optim.SGD([param], lr=1.0)
    sched = make_scheduler(cfg, opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.0, 0.5, 1.0]) and lrs[-1] < 0.05
    # exponential: the trainer steps it once per epoch (40 examples, batch 8: 5 steps per epoch)
    run = tmp_path / "exp"
    train(char_cfg(chars, run, max_steps=12, schedule="exponential", decay_per_epoch=0.5), QUIET)
    by_step = {r["step"]: r["lr"] for r in rows(run) if "lr" in r}
    assert [by_step[s] for s in (1, 5, 6, 10, 11, 12)] == pytest.approx(
        [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]
    )


def test_metrics_say_which_tokens_are_counted(chars: Path, functions: Path, tmp_path: Path) -> None:  # noqa: F811
    train(char_cfg(chars, tmp_path / "chars", max_steps=2), QUIET)
    row = rows(tmp_path / "chars")[0]
    # char-stream: each sequence of 48 characters feeds 47 and predicts 47
    assert row["tokens_counted"] == "target" and row["tokens"] == row["input_tokens"] == 8 * 47
    cfg = TrainConfig(
        family="hf-causal",
        data=functions,
        out=tmp_path / "gpt2",
        model="new:gpt2",
        max_steps=2,
        batch_size=4,
        log_every=1,
        model_args={"n_layer": 1, "n_embd": 16, "n_head": 2},
    )
    train(cfg, QUIET)
    row = rows(tmp_path / "gpt2")[0]
    # docstring → body: the prompt is fed but not predicted, so fewer targets than inputs
    assert row["tokens_counted"] == "target" and 0 < row["tokens"] < row["input_tokens"]
    assert row["tokens_per_s"] < row["input_tokens_per_s"]


def train_args(data: Path, out: Path) -> list[str]:
    return [
        "--family", "char-rnn", "--data", str(data), "--out", str(out), "--batch-size", "8",
        "--lr", "0.01", "--log-every", "1", "--save-every", "1000", "--model-arg", "n_embd=32",
    ]  # fmt: skip


def test_ctrl_c_saves_a_checkpoint_and_prints_the_resume_command(chars: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pycodegen", "train", *train_args(chars, run), "--max-steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (
        (run / "metrics.jsonl").is_file() and len((run / "metrics.jsonl").read_text().splitlines()) >= 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    saved = [p for p in run.glob("checkpoint-*") if (p / STATE_DIR).is_dir()]
    assert len(saved) == 1 and f"checkpoint saved in {saved[0]}" in stderr
    step = int(saved[0].name.split("-")[1])
    assert step >= 3
    command = stderr.split("continue with: ")[1].splitlines()[0]
    assert command == f"pycodegen train --config {run / 'train_config.json'} --resume"
    resumed = subprocess.run(
        [sys.executable, "-m", "pycodegen", *command.split()[1:], "--max-steps", str(step + 2)],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming at step {step}" in resumed.stderr
    assert [r["step"] for r in rows(run) if "loss" in r][-2:] == [step + 1, step + 2]


def instruction_dataset(functions: Path, root: Path) -> Path:  # noqa: F811
    """Instruction rows with tests whose target a tiny GPT-2 learns in a few dozen steps (its BPE, from
    the functions fixture, has tokens for every word of it), so dev pass@1 really changes."""
    data = root / "instructions"
    shutil.copytree(functions, data)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "task": "instruction"}))

    def row(i: int) -> str:
        return json.dumps(
            {
                "id": f"r{i}",
                "prompt": f"# task {i}: add the values up\n",
                "target": "def total(values):\n    return sum(values)\n",
                "tests": ["assert total([1, 2]) == 3"],
            }
        )

    (data / "train.jsonl").write_text("".join(row(i) + "\n" for i in range(32)))
    (data / "valid.jsonl").write_text("".join(row(100 + i) + "\n" for i in range(4)))
    return data


GPT2 = {"n_layer": 1, "n_embd": 64, "n_head": 2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def test_real_dev_pass_at_1_picks_the_best_checkpoint(functions: Path, tmp_path: Path) -> None:  # noqa: F811
    from pycodegen.evaluate.dev import DevGeneration

    data = instruction_dataset(functions, tmp_path)
    run = tmp_path / "run"
    cfg = TrainConfig(
        family="hf-causal",
        data=data,
        out=run,
        model="new:gpt2",
        max_steps=80,
        batch_size=8,
        lr=3e-3,
        schedule="constant",
        eval_every=20,
        save_every=20,
        keep_checkpoints=10,
        model_args=GPT2,
    )
    summary = train(cfg, QUIET, callbacks=[DevGeneration(eval_samples=2, max_new_tokens=24)])
    evals = [r for r in rows(run) if "valid_loss" in r]
    assert [r["step"] for r in evals] == [20, 40, 60, 80]
    assert all({"dev_pass@1", "dev_bleu", "dev_codebleu"} <= set(r) for r in evals)
    scores = [r["dev_pass@1"] for r in evals]
    assert len(set(scores)) > 1  # the metric moved: it, not the loss, decides
    top = [r for r in evals if r["dev_pass@1"] == max(scores)]
    expected = min(top, key=lambda r: r["valid_loss"])["step"]
    assert summary["best"]["metric"] == "dev_pass@1" and summary["best"]["decided_by"] == "dev_pass@1"
    assert (summary["best"]["step"], summary["best"]["value"]) == (expected, max(scores))
    assert (run / "best" / "model.safetensors").read_bytes() == (
        run / f"checkpoint-{expected}" / "model.safetensors"
    ).read_bytes()


def test_resume_of_a_tied_weight_model_continues_exactly(functions: Path, tmp_path: Path) -> None:  # noqa: F811
    """GPT-2 ties its output layer to the embedding: the checkpoint stores it once and resume re-ties it."""

    def cfg(out: Path, steps: int, **kw: Any) -> TrainConfig:
        return TrainConfig(
            family="hf-causal",
            data=functions,
            out=out,
            model="new:gpt2",
            max_steps=steps,
            batch_size=4,
            lr=3e-3,
            schedule="constant",
            log_every=1,
            save_every=2,
            model_args={"n_layer": 1, "n_embd": 32, "n_head": 2},
            **kw,
        )

    train(cfg(tmp_path / "whole", 6), QUIET)
    train(cfg(tmp_path / "parts", 4), QUIET)
    train(cfg(tmp_path / "parts", 6, resume=True), QUIET)
    loss = [[r["loss"] for r in rows(tmp_path / run) if "loss" in r] for run in ("whole", "parts")]
    assert len(loss[0]) == 6 and loss[1] == loss[0]


DDP_SCRIPT = """
import json, os, sys
from pathlib import Path
from rich.console import Console
from pycodegen.config import TrainConfig
from pycodegen.evaluate.dev import DevGeneration
from pycodegen.train.loop import train

cfg = TrainConfig(**json.loads(sys.argv[1]))
summary = train(cfg, Console(quiet=True), callbacks=[DevGeneration(eval_samples=2, max_new_tokens=16)])
Path(cfg.out, f"summary-rank{os.environ['RANK']}.json").write_text(json.dumps(summary, sort_keys=True))
"""


def test_ddp_with_dev_pass_at_1_finishes_and_ranks_agree(functions: Path, tmp_path: Path) -> None:  # noqa: F811
    """torchrun, 2 gloo ranks, a generating family with dev pass@1: rank 0 generates and scores, every
    rank receives the metrics before the best checkpoint is chosen, and the run finishes."""
    data = instruction_dataset(functions, tmp_path)
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    settings = {
        "family": "hf-causal",
        "data": str(data),
        "out": str(tmp_path / "run"),
        "model": "new:gpt2",
        "max_steps": 4,
        "batch_size": 4,
        "lr": 3e-3,
        "eval_every": 2,
        "save_every": 2,
        "model_args": GPT2,
    }
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
    ]
    result = subprocess.run(
        [*torchrun, str(script), json.dumps(settings)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads((tmp_path / "run" / f"summary-rank{r}.json").read_text()) for r in (0, 1)]
    for summary in summaries:
        del summary["elapsed_s"]  # each rank's own clock
    assert summaries[0] == summaries[1]
    assert summaries[0]["best"]["metric"] == "dev_pass@1" and "dev_pass@1" in summaries[0]
    evals = [r for r in rows(tmp_path / "run") if "valid_loss" in r]
    assert [r["step"] for r in evals] == [2, 4] and all("dev_pass@1" in r for r in evals)
    assert sorted(
        p.name for p in (tmp_path / "run" / "checkpoint-4" / STATE_DIR).glob("random_states_*")
    ) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]


def test_dev_callbacks_follow_the_config(chars: Path, tmp_path: Path) -> None:
    from pycodegen.evaluate.dev import DevGeneration, dev_callbacks

    (dev,) = dev_callbacks(char_cfg(chars, tmp_path, eval_samples=3, eval_max_new_tokens=7))
    assert isinstance(dev, DevGeneration) and (dev.eval_samples, dev.max_new_tokens) == (3, 7)
    assert dev_callbacks(char_cfg(chars, tmp_path, eval_samples=0)) == []


def test_resume_drops_a_torn_metrics_line(chars: Path, tmp_path: Path) -> None:
    """A kill -9 while a metrics line was being written leaves half a line: resuming drops it."""
    run = tmp_path / "run"
    train(char_cfg(chars, run, max_steps=4, save_every=2, schedule="constant"), QUIET)
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 5, "lo')
    train(char_cfg(chars, run, max_steps=6, save_every=2, schedule="constant", resume=True), QUIET)
    assert [r["step"] for r in rows(run) if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_group_by_length_batches_similar_lengths_and_keeps_every_example() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(10, 700) for _ in range(1_003)]
    order = list(range(len(lengths)))
    rng.shuffle(order)

    def padded(o: list[int]) -> int:
        return sum(max(lengths[i] for i in o[k : k + 4]) * 4 for k in range(0, len(o) - 3, 4))

    grouped = grouped_by_length(list(order), lengths, 4, random.Random(2))
    assert sorted(grouped) == list(range(len(lengths)))
    assert grouped[-3:] == order[-3:]  # the ragged tail stays last, where the loop drops it
    assert padded(grouped) < 1.05 * sum(lengths[i] for i in grouped[:-3])
    assert padded(order) > 1.3 * padded(grouped)
    batches = [grouped[k : k + 4] for k in range(0, 1_000, 4)]
    assert sorted(batches, key=lambda b: b[0]) != batches  # the batches themselves are still shuffled


def test_a_length_grouped_run_resumes_exactly(functions: Path, tmp_path: Path) -> None:  # noqa: F811
    """The grouped order is a pure function of (seed, epoch), like the plain one: a resumed run sees the
    same batches as an uninterrupted one, and those batches are not the ungrouped run's."""

    def cfg(out: Path, steps: int, group: bool = True, **kw: Any) -> TrainConfig:
        return TrainConfig(
            family="hf-causal",
            data=functions,
            out=out,
            model="new:gpt2",
            max_steps=steps,
            batch_size=3,
            lr=3e-3,
            schedule="constant",
            log_every=1,
            save_every=2,
            group_by_length=group,
            model_args={"n_layer": 1, "n_embd": 32, "n_head": 2},
            **kw,
        )

    train(cfg(tmp_path / "whole", 6), QUIET)
    train(cfg(tmp_path / "plain", 6, group=False), QUIET)
    train(cfg(tmp_path / "parts", 4), QUIET)
    train(cfg(tmp_path / "parts", 6, resume=True), QUIET)
    loss = [[r["loss"] for r in rows(tmp_path / run) if "loss" in r] for run in ("whole", "parts", "plain")]
    assert len(loss[0]) == 6 and loss[1] == loss[0] and loss[2] != loss[0]
