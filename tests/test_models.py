"""The model zoo and offline loading, with the real embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycodegen.errors import ModelNotFoundError
from pycodegen.zoo import ZOO, resolve_model


def test_zoo_name_resolves_to_the_shipped_gguf() -> None:
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.is_gguf and (resolved.path / str(resolved.gguf_file)).stat().st_size > 50_000_000
    assert set(ZOO) == {"smollm2-135m-instruct"}


def test_local_paths(tmp_path: Path) -> None:
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path / "hf")).gguf_file is None
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert resolve_model(str(tmp_path / "m.gguf")).gguf_file == "m.gguf"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not an HF-format model directory"):
        resolve_model(str(tmp_path / "empty"))


@pytest.mark.parametrize("ref", ["gpt2", "Salesforce/codet5p-220m", "./no/such/dir"])
def test_unknown_references_never_download(ref: str) -> None:
    with pytest.raises(ModelNotFoundError, match="never downloads from a hub"):
        resolve_model(ref)


def test_embedded_model_generates_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads the real SmolLM2 (converted once from GGUF, then cached) and decodes greedily."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from pycodegen.generate.decoding import DecodingConfig, format_prompt, generate, resolve_prompt_mode
    from pycodegen.zoo import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct")
    mode = resolve_prompt_mode(tokenizer, "auto")
    assert mode == "chat"  # an instruct model's tokenizer carries a chat template
    prompt = format_prompt(tokenizer, "Write a Python function that adds two numbers.", mode)
    cfg = DecodingConfig(max_new_tokens=24)
    first = generate(model, tokenizer, [prompt], cfg)
    again = generate(model, tokenizer, [prompt, prompt], cfg)
    assert first[0][0].strip() and again == [first[0], first[0]]  # greedy is deterministic, batch or not
    stopped = generate(model, tokenizer, [prompt], cfg, stops=["def "])
    assert "def " not in stopped[0][0] and first[0][0].startswith(stopped[0][0])
