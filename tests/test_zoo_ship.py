"""Shipping a LoRA fine-tune as a zoo model: `export --zoo` writes the adapter in float16 with its sha256
in the card; the zoo name then loads offline as that checkpoint would (generate, prompt mode, further
training), a corrupted adapter or a damaged directory is refused in one line, and the package data
configuration ships the directory's files."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from conftest import functions_dataset
from rich.console import Console

from pycodegen.config import GenerateConfig, TrainConfig
from pycodegen.errors import ConfigError, ModelNotFoundError
from pycodegen.generate.engine import DecodeParams, Engine
from pycodegen.train.loop import train
from pycodegen.zoo import (
    ADAPTER_FILE,
    CARD_FILE,
    MODEL_CARD_FILE,
    ZOO_DIR_ENV,
    file_sha256,
    load_causal_lm,
    resolve_model,
    zoo_listing,
)

QUIET = Console(quiet=True)
NAME = "smollm2-135m-pycodegen"  # the zoo entry a shipped directory of this name fills
REPO = Path(__file__).resolve().parents[1]
PROMPT = "def total(values):"
CARD_TEXT = "# tiny test fine-tune\n\nData: the test's own modules. Licence: Apache-2.0.\n"


def tiny_train(data: Path, out: Path, model: str, **kw: object) -> Path:
    cfg = TrainConfig(
        family="hf-causal",
        data=data,
        out=out,
        model=model,
        max_steps=4,
        batch_size=4,
        lr=2e-2,
        eval_every=1000,
        save_every=1000,
        eval_samples=0,
        max_length=64,
        **kw,
    )
    train(cfg, QUIET)
    return out / "final"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(data, base, lora): a tiny Llama trained from scratch (the base, an HF directory), and a LoRA
    checkpoint over it whose card names that base by its absolute path."""
    data = functions_dataset(tmp_path_factory, files=16)
    runs = tmp_path_factory.mktemp("runs")
    size = {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 64}
    base = tiny_train(data, runs / "base", "new:llama", mode="full", model_args=size)
    lora = tiny_train(data, runs / "lora", str(base), mode="lora")
    return data, base, lora


def shipped_copy(lora: Path, root: Path) -> Path:
    """`export --zoo` into root/NAME, as the lead runs it (in-process: the CLI path is tested once)."""
    from pycodegen.train.export import ship

    root.mkdir(parents=True, exist_ok=True)
    card = root / "card.md"
    card.write_text(CARD_TEXT)
    ship(lora, root / NAME, card)
    return root / NAME


def greedy(ref: str, prompt: str = PROMPT) -> str:
    engine = Engine.load(ref, dtype="fp32")
    return engine.generate([prompt], DecodeParams(max_new_tokens=16, ignore_eos=True))[0][0].text


def test_export_zoo_writes_a_hashed_float16_adapter_and_a_model_card(
    checkpoint: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    from safetensors import safe_open

    _, _, lora = checkpoint
    (tmp_path / "card.md").write_text(CARD_TEXT)
    out = tmp_path / "zoo" / NAME
    argv = ["export", str(lora), "--zoo", "--model-card", str(tmp_path / "card.md"), "--out", str(out)]
    cli = subprocess.run([sys.executable, "-m", "pycodegen", *argv], capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    files = {p.name for p in out.iterdir()}
    assert files == {
        ADAPTER_FILE,
        "adapter_config.json",
        CARD_FILE,
        MODEL_CARD_FILE,
        "tokenizer.json",
        "tokenizer_config.json",
    }  # no PEFT README, no training state
    card = json.loads((out / CARD_FILE).read_text())
    assert card["adapter_sha256"] == file_sha256(out / ADAPTER_FILE)
    assert card["adapter_sha256"] in cli.stdout + cli.stderr
    assert card["zoo"] == {
        "name": NAME,
        "adapter_dtype": "float16",
        "adapter_bytes": (out / ADAPTER_FILE).stat().st_size,
    }
    with (
        safe_open(str(out / ADAPTER_FILE), framework="pt") as shipped,
        safe_open(str(lora / ADAPTER_FILE), framework="pt") as original,
    ):
        assert set(shipped.keys()) == set(original.keys())
        for key in original.keys():
            assert original.get_tensor(key).dtype == torch.float32
            assert shipped.get_tensor(key).dtype == torch.float16
            assert torch.allclose(
                shipped.get_tensor(key).float(), original.get_tensor(key), rtol=1e-3, atol=1e-6
            )
    model_card = (out / MODEL_CARD_FILE).read_text()
    assert model_card.startswith(CARD_TEXT) and card["adapter_sha256"] in model_card
    assert "LoRA r=8, alpha=16, targets k_proj, o_proj, q_proj, v_proj; float16" in model_card
    # written whole: shipping again over it is refused, and the first ship is left as it was
    again = subprocess.run([sys.executable, "-m", "pycodegen", *argv], capture_output=True, text=True)
    assert again.returncode == 2 and f"{out} exists; remove it first" in again.stdout + again.stderr
    assert file_sha256(out / ADAPTER_FILE) == card["adapter_sha256"]


def test_the_zoo_name_loads_offline_as_the_checkpoint_does(
    checkpoint: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, base, lora = checkpoint
    shipped = shipped_copy(lora, tmp_path)
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model(NAME).path == shipped
    from pycodegen.recipe import RecipeRun

    assert RecipeRun.model_input(NAME) == {"model": shipped}  # a recipe's stages see its files change
    model, tokenizer = load_causal_lm(NAME)
    reference, _ = load_causal_lm(str(lora))
    plain, _ = load_causal_lm(str(base))
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        logits, want, before = model(ids).logits, reference(ids).logits, plain(ids).logits
    assert (want - before).abs().max() > 1e-2  # the adapter matters, so the comparison below means something
    assert torch.allclose(logits, want, atol=1e-3)  # the float16 adapter, loaded back into float32
    # the same greedy text through the engine every verb decodes with (generate, evaluate, serve)
    assert greedy(NAME) == greedy(str(lora))
    # --prompt-mode auto takes the card's mode, as for the checkpoint directory
    card = json.loads((shipped / CARD_FILE).read_text())
    (shipped / CARD_FILE).write_text(json.dumps({**card, "prompt_mode": "hust"}))
    from pycodegen.generate.freeform import run_generate

    rows = run_generate(GenerateConfig(model=NAME, prompt=["add"], max_new_tokens=2), QUIET, echo=False)
    assert [r["prompt_mode"] for r in rows] == ["hust"]
    # the listing shows it installed here, and not installed where the directory is absent
    listed = {r["name"]: r for r in zoo_listing()}
    assert listed[NAME]["kind"] == "fine-tune" and listed[NAME]["installed"] == "yes"
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path / "empty"))
    assert {r["name"]: r for r in zoo_listing()}[NAME]["installed"].startswith("no (")


def test_a_corrupted_or_missing_shipment_is_refused_in_one_line(
    checkpoint: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, _, lora = checkpoint
    shipped = shipped_copy(lora, tmp_path)
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path))
    adapter = shipped / ADAPTER_FILE
    raw = bytearray(adapter.read_bytes())
    raw[-5] ^= 0x01  # one bit of one weight
    adapter.write_bytes(bytes(raw))
    with pytest.raises(ModelNotFoundError) as refused:
        Engine.load(NAME)
    message = str(refused.value)
    assert message.startswith(f"{adapter}: sha256 ") and "adapter_sha256" in message and "\n" not in message
    # as the user sees it: one red line and exit status 2, no traceback
    cli = subprocess.run(
        [sys.executable, "-m", "pycodegen", "generate", "--model", NAME, "-p", "x", "--max-new-tokens", "2"],
        capture_output=True,
        text=True,
        env={**os.environ, ZOO_DIR_ENV: str(tmp_path)},
    )
    assert cli.returncode == 2 and "Traceback" not in cli.stderr and str(adapter) in cli.stdout + cli.stderr
    # a damaged card, then a missing directory
    (shipped / CARD_FILE).write_text('{"family": "hf-causal"}')
    with pytest.raises(ModelNotFoundError, match="records no LoRA adapter and adapter_sha256"):
        Engine.load(NAME)
    shutil.rmtree(shipped)
    with pytest.raises(ModelNotFoundError, match=f"zoo model '{NAME}': {shipped} is missing"):
        Engine.load(NAME)


def test_training_further_from_the_zoo_name(
    checkpoint: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train --model ZOO-NAME` starts from the shipped fine-tune merged; the new checkpoint's card names
    the zoo name as its base and loads back over it (adapter off: exactly the shipped model)."""
    from pycodegen.models.hf import HFCausalFamily
    from pycodegen.train.loop import apply_mode

    data, _, lora = checkpoint
    shipped_copy(lora, tmp_path / "zoo")
    monkeypatch.setenv(ZOO_DIR_ENV, str(tmp_path / "zoo"))
    start, tokenizer = load_causal_lm(NAME)
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    # what training starts from: the shipped fine-tune, with a new (zero) adapter over it
    cfg = TrainConfig(family="hf-causal", data=data, model=NAME, mode="lora")
    family = HFCausalFamily(cfg, {"task": "docstring-to-body"}, data)
    family.setup()
    assert family.model is not None
    fresh = apply_mode(cfg, family, family.model).eval()
    with torch.no_grad():
        assert torch.allclose(fresh(ids).logits, start(ids).logits, atol=1e-5)
    further = tiny_train(data, tmp_path / "further", NAME, mode="lora")
    card = json.loads((further / CARD_FILE).read_text())
    assert card["adapter"]["base_model"] == NAME
    model, _ = load_causal_lm(str(further))
    with torch.no_grad(), model.disable_adapter():
        assert torch.allclose(model(ids).logits, start(ids).logits, atol=1e-5)


def test_export_zoo_refuses_what_cannot_ship(
    checkpoint: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pycodegen.train import export

    _, base, lora = checkpoint
    card = tmp_path / "card.md"
    card.write_text(CARD_TEXT)
    with pytest.raises(ConfigError, match="only LoRA checkpoints of the hf-causal family ship"):
        export.ship(base, tmp_path / "full", card)  # full weights: nothing small to ship
    monkeypatch.setattr(export, "MAX_ADAPTER_BYTES", 1000)
    with pytest.raises(ConfigError, match=rf"{ADAPTER_FILE}: .* MB in float16, over the 0 MB"):
        export.ship(lora, tmp_path / "big", card)
    assert not (tmp_path / "big").exists() and not (tmp_path / "big.partial").exists()


def test_package_data_ships_a_zoo_directory(checkpoint: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """Every file `export --zoo` writes matches the package-data globs, so `pip install .` ships it."""
    shipped = shipped_copy(checkpoint[2], tmp_path)
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for file in shipped.iterdir():
        relative = f"zoo_models/{NAME}/{file.name}"
        assert any(fnmatch.fnmatch(relative, g) for g in globs["pycodegen"]), relative


def test_the_shipped_zoo_model_is_the_one_its_card_describes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fine-tune pycodegen ships: in the package, within 30 MB, its adapter the file the card's
    sha256 names, a MODEL_CARD.md with its data licences and figures, and it loads offline over the
    embedded model and answers a HumanEval-style question with a fenced function."""
    monkeypatch.delenv(ZOO_DIR_ENV, raising=False)
    shipped = REPO / "src" / "pycodegen" / "zoo_models" / NAME
    card = json.loads((shipped / CARD_FILE).read_text())
    adapter = shipped / ADAPTER_FILE
    assert adapter.stat().st_size <= 30 * 2**20
    assert card["adapter_sha256"] == file_sha256(adapter)
    assert card["adapter"]["base_model"] == "smollm2-135m-instruct" and card["prompt_mode"] == "chat"
    text = (shipped / MODEL_CARD_FILE).read_text()
    for needed in ("MIT", "CC BY 4.0", "CC BY-NC", "HumanEval", "paired"):
        assert needed in text, needed
    assert resolve_model(NAME).path == shipped.resolve()
    engine = Engine.load(NAME)
    question = engine.format_prompt(
        "Complete the following Python function:\n```python\ndef add(a: int, b: int) -> int:\n"
        '    """Return the sum of a and b.\n\n    >>> add(2, 3)\n    5\n    """\n```',
        "chat",
    )
    answer = engine.generate([question], DecodeParams(max_new_tokens=40, temperature=0.0))[0][0].text
    assert answer.lstrip().startswith("```python") and "def add(" in answer, answer
