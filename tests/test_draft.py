"""Draft heads (generate/draft.py): trained on a tiny model's own answers, they draft tokens the engine
verifies, so the greedy text stays the model's in fewer passes; heads made for another model, or an int8
engine, are refused; `pycodegen draft-heads` answers, trains, writes its card and resumes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_engine import CORPUS, PROMPTS, texts, tiny  # noqa: F401 (tiny: the module's fixture)

from pycodegen.generate.draft import DraftHeadsError, fingerprint, save_heads, train_draft_heads
from pycodegen.generate.engine import DecodeParams, Engine

PARAMS = DecodeParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def heads_dir(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    engine = Engine.load(str(tiny), prompt_lookup=0)
    prompts = sorted(set(CORPUS)) + PROMPTS
    answers = engine.generate(prompts, PARAMS)
    pairs = [(engine.backend.encode(p), list(c[0].token_ids)) for p, c in zip(prompts, answers, strict=True)]
    heads, metrics = train_draft_heads(engine.model, pairs, count=2, epochs=40, batch=16, held_out=0.0)
    assert metrics["train_positions"] > 0
    out = tmp_path_factory.mktemp("heads")
    card = {"model": "tiny", "fingerprint": fingerprint(engine.model), "hidden": 32, "heads": 2}
    save_heads(heads, out, card)
    return out


def test_heads_draft_and_the_greedy_text_stays_the_models(tiny: Path, heads_dir: Path) -> None:  # noqa: F811
    plain = Engine.load(str(tiny), prompt_lookup=0)
    drafted = Engine.load(str(tiny), prompt_lookup=0, draft_heads=heads_dir)
    for prompt in PROMPTS:  # one at a time: heads draft for a lone greedy request
        assert texts(drafted, [prompt], PARAMS) == texts(plain, [prompt], PARAMS)
    assert drafted.stats["tokens_generated"] == plain.stats["tokens_generated"] > 0
    assert drafted.stats["drafted"] > 0 and drafted.stats["accepted"] > 0
    assert drafted.stats["steps"] < plain.stats["steps"]  # accepted guesses saved passes
    # batched rows decode step by step, with the same text
    assert texts(drafted, PROMPTS, PARAMS) == texts(plain, PROMPTS, PARAMS)


def test_heads_for_another_model_or_an_int8_engine_are_refused(
    tiny: Path,  # noqa: F811
    heads_dir: Path,
    tmp_path: Path,
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    other = AutoModelForCausalLM.from_pretrained(tiny)
    with torch.no_grad():
        other.lm_head.weight.add_(0.01)
    other.save_pretrained(tmp_path / "other")
    AutoTokenizer.from_pretrained(tiny).save_pretrained(tmp_path / "other")
    with pytest.raises(DraftHeadsError, match="trained for 'tiny'"):
        Engine.load(str(tmp_path / "other"), draft_heads=heads_dir)
    with pytest.raises(DraftHeadsError, match="not int8"):
        Engine.load(str(tiny), dtype="int8", draft_heads=heads_dir)
    with pytest.raises(DraftHeadsError, match="holds no draft heads"):
        Engine.load(str(tiny), draft_heads=tmp_path)


def test_cli_answers_trains_writes_its_card_and_resumes(tiny: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "draft"
    command = [sys.executable, "-m", "pycodegen", "draft-heads", str(tiny), "--out", str(out)]
    command += ["--limit", "6", "--epochs", "1", "--max-new-tokens", "12", "--batch-size", "4"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    card = json.loads((out / "draft_heads.json").read_text())
    assert card["heads"] == 2 and card["data"]["instructions"] == 6 and len(card["head_accuracy"]) == 2
    answers = (out / "answers.jsonl").read_text()
    assert len(answers.splitlines()) == 6
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert (out / "answers.jsonl").read_text() == answers  # answered once, read back on the rerun
    Engine.load(str(tiny), draft_heads=out)  # the directory loads as heads for this model


def test_heads_resolve_by_directory_or_shipped_name_and_are_off_by_default(
    heads_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pycodegen.generate.draft import resolve_heads
    from pycodegen.zoo import zoo_dir

    assert (zoo_dir() / "smollm2-135m-instruct-draft" / "draft_heads.json").is_file()  # in the package
    monkeypatch.setenv("PYCODEGEN_ZOO_DIR", str(tmp_path))
    shutil.copytree(heads_dir, tmp_path / "tiny-draft")
    assert resolve_heads("tiny-draft") == tmp_path / "tiny-draft"
    assert resolve_heads(str(heads_dir)) == heads_dir
    assert resolve_heads(None) is None and resolve_heads("none") is None


def test_shipped_heads_load_on_the_embedded_model_and_keep_its_text() -> None:
    plain = Engine.load("smollm2-135m-instruct", prompt_lookup=0)
    drafted = Engine.load("smollm2-135m-instruct", prompt_lookup=0, draft_heads="smollm2-135m-instruct-draft")
    prompt = plain.format_prompt("Write a Python function that returns the largest of three numbers.")
    params = DecodeParams(max_new_tokens=40)
    assert texts(drafted, [prompt], params) == texts(plain, [prompt], params)
    assert drafted.stats["accepted"] > 0 and drafted.stats["steps"] < plain.stats["steps"]
