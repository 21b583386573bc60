"""Checkpoints that describe themselves: the pycodegen.json card, loading any family from the directory
alone (dataset deleted), export, zoo loading of hf-causal checkpoints, and the refusal of the others."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import functions_dataset
from rich.console import Console

from pycodegen import __version__
from pycodegen.config import PrepareConfig, TrainConfig
from pycodegen.data.prepare import prepare
from pycodegen.errors import ConfigError, ModelNotFoundError
from pycodegen.train.loop import train

QUIET = Console(quiet=True)
TINY = {
    "char-rnn": {"n_embd": 16, "n_layer": 1},
    "seq2seq": {"d_model": 32, "n_head": 4, "n_layer_enc": 1, "n_layer_dec": 1, "d_ff": 64, "dropout": 0.0},
    "retrieval": {"dim": 16},
    "new:gpt2": {"n_layer": 1, "n_embd": 32, "n_head": 2},
    "new:llama": {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64},
    "new:t5": {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 1, "num_heads": 4},
}


@pytest.fixture(scope="module")
def functions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """docstring→body pairs with a BPE trained on them."""
    return functions_dataset(tmp_path_factory, files=16)


@pytest.fixture(scope="module")
def chars(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pycodegen.data.tokenizers import CharVocab

    root = tmp_path_factory.mktemp("data") / "chars"
    root.mkdir()
    texts = [(f"def f{i}(x):\n    return x * {i}\n" * 3)[:40] for i in range(24)]
    CharVocab.build(texts).save(root / "vocab.json")
    for split, rows in (("train", texts), ("valid", texts[:4]), ("test", [])):
        (root / f"{split}.jsonl").write_text(
            "".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(rows))
        )
    (root / "manifest.json").write_text(json.dumps({"task": "char-stream"}))
    return root


def run(data: Path, out: Path, family: str, model: str | None = None, **kw: Any) -> TrainConfig:
    """Train a tiny model on a private copy of `data`, then delete that copy: what is left is the run."""
    copy = out.parent / f"{out.name}-data"
    shutil.copytree(data, copy)
    args = TINY[model or family] if (model or family) in TINY else {}
    cfg = TrainConfig(
        family=family,
        data=copy,
        out=out,
        model=model,
        max_steps=4,
        batch_size=4,
        lr=1e-2,
        eval_every=1000,
        save_every=2,
        eval_samples=0,
        max_length=64,
        model_args=args,
        **kw,
    )
    train(cfg, QUIET)
    shutil.rmtree(copy)
    return cfg


def moved(run_dir: Path, tmp_path: Path) -> Path:
    """The run's final checkpoint, copied somewhere else (and the run deleted)."""
    target = tmp_path / "elsewhere" / "final"
    shutil.copytree(run_dir / "final", target)
    shutil.rmtree(run_dir)
    return target


def test_card_says_what_the_checkpoint_is(chars: Path, tmp_path: Path) -> None:
    from pycodegen.models.checkpoint import read_card
    from pycodegen.models.registry import apply_family_defaults

    cfg = run(chars, tmp_path / "run", "char-rnn")
    card = read_card(tmp_path / "run" / "final")
    assert card == {
        "card_format": 1,
        "pycodegen_version": __version__,
        "family": "char-rnn",
        "model_type": "pycodegen-char-rnn",
        "architecture": "CharRNN",
        "tokenizer": "vocab.json",
        "adapter": None,
        "dataset": {"task": "char-stream", "template": None, "dataset_sha256": None},
        "prompt_mode": "raw",
        # the settings the run used: the family's own defaults where the user set none
        "train_config": json.loads(apply_family_defaults(cfg).model_dump_json()),
    }
    assert read_card(tmp_path / "run" / "checkpoint-2")["family"] == "char-rnn"  # every checkpoint has one
    with pytest.raises(ConfigError, match="not a pycodegen training checkpoint"):
        read_card(tmp_path / "run")


@pytest.mark.parametrize(
    ("family", "model", "mode"),
    [
        ("char-rnn", None, "full"),
        ("seq2seq", None, "full"),
        ("retrieval", None, "full"),
        ("hf-causal", "new:gpt2", "full"),
        ("hf-causal", "new:llama", "lora"),
        ("hf-seq2seq", "new:t5", "full"),
        ("hf-seq2seq", "new:t5", "lora"),
    ],
)
def test_any_family_loads_and_exports_from_the_directory_alone(
    family: str, model: str | None, mode: str, chars: Path, functions: Path, tmp_path: Path
) -> None:
    """Trained with a dataset that is then deleted, copied elsewhere: it loads as the trained model and
    exports (LoRA merged) to a directory that loads as the same model again."""
    from pycodegen.models.checkpoint import load_checkpoint
    from pycodegen.models.family import is_adapter
    from pycodegen.train.export import export

    data = chars if family == "char-rnn" else functions
    kw = {"target_modules": ["q", "v"]} if family == "hf-seq2seq" and mode == "lora" else {}
    run(data, tmp_path / "run", family, model, mode=mode, **kw)
    trained = json.loads((tmp_path / "run" / "summary.json").read_text())
    checkpoint = moved(tmp_path / "run", tmp_path)

    fam, loaded = load_checkpoint(checkpoint)
    assert fam.name == family and not loaded.training
    assert is_adapter(loaded) == (mode == "lora")
    exported = export(checkpoint, tmp_path / "exported")
    fam2, again = load_checkpoint(exported)
    assert not is_adapter(again)
    rows = [json.loads(x) for x in (data / "valid.jsonl").read_text().splitlines()]
    # the loaded model is the trained one: its validation loss is the one the run reported
    assert valid_loss(fam, loaded, rows) == pytest.approx(trained["valid_loss"], rel=1e-4)
    assert valid_loss(fam2, again, rows) == pytest.approx(trained["valid_loss"], rel=1e-4)


def valid_loss(family: Any, model: torch.nn.Module, rows: list[dict[str, Any]], bs: int = 4) -> float:
    """Token-weighted mean loss over batches of `bs` rows, as the trainer's validation computes it."""
    examples = [family.encode(r) for r in rows]
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), bs):
            batch = family.collate(examples[start : start + bs])
            n = family.count_tokens(batch)
            total += float(family.loss(model, batch)) * n
            tokens += n
    return total / tokens


def test_hf_seq2seq_full_run_resumes_and_exports(functions: Path, tmp_path: Path) -> None:
    """The defect: hf-seq2seq borrowed hf-causal's load_weights (zero-argument super() on a class that
    is not a subclass), so --resume and export of a full or freeze run raised TypeError."""
    from transformers import AutoModelForSeq2SeqLM

    from pycodegen.train.export import export

    cfg = TrainConfig(
        family="hf-seq2seq",
        data=functions,
        out=tmp_path / "run",
        model="new:t5",
        max_steps=2,
        batch_size=4,
        save_every=2,
        eval_every=1000,
        eval_samples=0,
        model_args=TINY["new:t5"],
    )
    train(cfg, QUIET)
    summary = train(cfg.model_copy(update={"resume": True, "max_steps": 4}), QUIET)
    assert summary["steps"] == 4
    exported = export(tmp_path / "run" / "final", tmp_path / "exported")
    a = AutoModelForSeq2SeqLM.from_pretrained(exported)
    b = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "run" / "final")
    assert all(torch.equal(p, b.state_dict()[k]) for k, p in a.state_dict().items())


def test_zoo_loads_hf_causal_checkpoints_and_refuses_other_families(
    chars: Path, functions: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    from pycodegen.models.checkpoint import load_checkpoint
    from pycodegen.zoo import load_causal_lm

    run(functions, tmp_path / "lora", "hf-causal", "new:llama", mode="lora")
    lora = moved(tmp_path / "lora", tmp_path / "l")
    model, tokenizer = load_causal_lm(str(lora))
    assert isinstance(model, PeftModel) and not model.training  # the adapter over its base, not merged
    _, expected = load_checkpoint(lora)
    ids = torch.tensor([tokenizer("def total(values):")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected(ids).logits, atol=1e-5)

    run(chars, tmp_path / "rnn", "char-rnn")
    rnn = tmp_path / "rnn" / "final"
    with pytest.raises(ModelNotFoundError) as refused:
        load_causal_lm(str(rnn))
    assert str(refused.value) == (
        f"{rnn} is a char-rnn checkpoint, not a causal language model; load it with "
        "pycodegen.generate.engine.Engine.load (generate, evaluate and serve do)"
    )
    # ... which is what generate does: every family generates through the engine
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "pycodegen",
            "generate",
            "--model",
            str(rnn),
            "-p",
            "def f",
            "--max-new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 0 and "Traceback" not in cli.stderr, cli.stderr
    # search reads the card too: another family's checkpoint is one clear error, not a traceback
    from pycodegen.models.retrieval import search

    with pytest.raises(ConfigError, match="is a char-rnn checkpoint; search needs a retrieval one"):
        search(rnn, functions, "add the values up")


def test_recorded_prompt_mode(functions: Path, tmp_path: Path, shared_data: Path) -> None:
    from pycodegen.zoo import recorded_prompt_mode

    hust = tmp_path / "hust"
    rows = [json.loads(x) for x in (shared_data / "mbpp.jsonl").read_text().splitlines()[:40]]
    (tmp_path / "mbpp.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(
        PrepareConfig(
            source=str(tmp_path / "mbpp.jsonl"),
            out=hust,
            task="instruction",
            template="hust",
            train_tokenizer=True,
            vocab_size=400,
            builtin_eval_sets=False,
            valid_fraction=0.1,
            test_fraction=0,
        ),
        QUIET,
    )
    run(hust, tmp_path / "h", "hf-causal", "new:gpt2")
    assert recorded_prompt_mode(str(tmp_path / "h" / "final")) == "hust"
    # generate (and evaluate, through the same resolver) default to it: issue 10, B9
    from pycodegen.config import GenerateConfig
    from pycodegen.generate.freeform import run_generate

    cfg = GenerateConfig(model=str(tmp_path / "h" / "final"), prompt=["add two numbers"], max_new_tokens=4)
    assert [r["prompt_mode"] for r in run_generate(cfg, QUIET, echo=False)] == ["hust"]
    explicit = cfg.model_copy(update={"prompt_mode": "raw"})
    assert [r["prompt_mode"] for r in run_generate(explicit, QUIET, echo=False)] == ["raw"]
    run(functions, tmp_path / "r", "hf-causal", "new:gpt2")
    assert recorded_prompt_mode(str(tmp_path / "r" / "final")) == "raw"
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    assert recorded_prompt_mode(str(tmp_path / "plain")) is None  # an HF directory, not a checkpoint
    assert recorded_prompt_mode("smollm2-135m-instruct") is None


def test_dev_generation_leaves_the_tokenizer_as_it_was(functions: Path, tmp_path: Path) -> None:
    """Batched greedy decoding left-pads by hand: the training tokenizer (and so every saved checkpoint)
    keeps its padding side, and a prompt decodes the same alone or beside a longer one."""
    from pycodegen.models.hf import HFCausalFamily

    cfg = TrainConfig(
        family="hf-causal",
        data=functions,
        out=tmp_path / "run",
        model="new:gpt2",
        model_args=TINY["new:gpt2"],
    )
    torch.manual_seed(0)
    family = HFCausalFamily(cfg, {"task": "docstring-to-body"}, functions)
    family.setup()
    assert family.model is not None
    side = family.tokenizer.padding_side
    short, long = "def f(x):", '"""Multiply every value by factor, then add the values up."""\ndef g(values):'
    both = family.generate(family.model, [short, long], 6)
    assert family.tokenizer.padding_side == side == "right"
    assert both == family.generate(family.model, [short], 6) + family.generate(family.model, [long], 6)
    family.save(family.model, tmp_path / "ckpt")
    saved = json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())
    assert saved.get("padding_side", "right") == "right"


def test_lora_base_reference_names_the_default_model(tmp_path: Path) -> None:
    """A LoRA run without --model adapts the embedded SmolLM2: the card must name it, not None."""
    from pycodegen.models.hf import HFCausalFamily

    cfg = TrainConfig(family="hf-causal", data=tmp_path, mode="lora")
    assert HFCausalFamily(cfg, {"task": "instruction"}, tmp_path).base_reference() == "smollm2-135m-instruct"
    local = tmp_path / "my-model"
    local.mkdir()
    cfg = TrainConfig(family="hf-causal", data=tmp_path, mode="lora", model=str(local))
    assert HFCausalFamily(cfg, {"task": "instruction"}, tmp_path).base_reference() == str(local.resolve())
