"""The model zoo and offline loading, with the real embedded model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pycodegen.errors import ModelNotFoundError
from pycodegen.zoo import resolve_model


def test_zoo_name_resolves_to_the_shipped_gguf() -> None:
    resolved = resolve_model("smollm2-135m-instruct")
    assert resolved.is_gguf and (resolved.path / str(resolved.gguf_file)).stat().st_size > 50_000_000


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
    from pycodegen.config import SamplingConfig
    from pycodegen.generate.decoding import format_prompt, resolve_prompt_mode
    from pycodegen.generate.engine import generate
    from pycodegen.zoo import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2-135m-instruct")
    mode = resolve_prompt_mode(tokenizer, "auto")
    assert mode == "chat"  # an instruct model's tokenizer carries a chat template
    prompt = format_prompt(tokenizer, "Write a Python function that adds two numbers.", mode)
    cfg = SamplingConfig(max_new_tokens=24)
    first = generate(model, tokenizer, [prompt], cfg)
    again = generate(model, tokenizer, [prompt, prompt], cfg)
    assert first[0][0].strip() and again == [first[0], first[0]]  # greedy is deterministic, batch or not
    stopped = generate(model, tokenizer, [prompt], cfg, stops=["def "])
    assert "def " not in stopped[0][0] and first[0][0].startswith(stopped[0][0])


def test_unknown_family_lists_the_valid_ones() -> None:
    from pycodegen.errors import ConfigError
    from pycodegen.models.registry import get_family

    with pytest.raises(ConfigError) as err:
        get_family("char_rnn")
    assert str(err.value) == (
        "unknown model family 'char_rnn'; valid: char-rnn, hf-causal, hf-seq2seq, retrieval, seq2seq"
    )


def tiny_dataset(root: Path) -> Path:
    """Enough of a dataset directory for families to set up: a few rows, a char vocabulary and a BPE."""
    import json

    from pycodegen.data.tokenizers import CharVocab, train_bpe

    root.mkdir()
    rows = [{"id": str(i), "prompt": f"def f{i}(x):", "target": f"    return x + {i}\n"} for i in range(4)]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    CharVocab.build(["def f(x): return x"]).save(root / "vocab.json")
    train_bpe([r["prompt"] + r["target"] for r in rows] * 20, 300).save_pretrained(root / "tokenizer")
    return root


@pytest.mark.parametrize(
    ("family", "model", "typo", "valid"),
    [
        ("char-rnn", None, "cel", "cell, dropout, n_embd, n_layer$"),
        ("seq2seq", None, "n_layr", "d_ff, d_model, dropout, max_len, n_head, n_layer_dec, n_layer_enc$"),
        ("retrieval", None, "encodr", "dim, encoder, scale, shared_embedding, vocab$"),
        ("hf-causal", "new:gpt2", "n_layr", "n_layer"),
        ("hf-causal", "new:llama", "hidden_sise", "hidden_size"),
        ("hf-seq2seq", "new:t5", "num_layer", "num_layers"),
    ],
)
def test_model_arg_typos_are_errors_listing_the_valid_names(
    family: str, model: str | None, typo: str, valid: str, tmp_path: Path
) -> None:
    """`--model-arg cel=gru` used to train an LSTM silently; now it names the valid arguments."""
    from pycodegen.config import TrainConfig
    from pycodegen.errors import ConfigError
    from pycodegen.models.registry import get_family

    data = tiny_dataset(tmp_path / "data")
    task = "char-stream" if family == "char-rnn" else "docstring-to-body"
    cfg = TrainConfig(family=family, data=data, model=model, model_args={typo: 2})
    with pytest.raises(
        ConfigError,
        match=f"unknown {family if model is None else model} model argument '{typo}'; valid: .*{valid}",
    ):
        get_family(family)(cfg, {"task": task}, data).setup()


def test_new_gpt2_default_size(tmp_path: Path) -> None:
    """The documented default of new:gpt2: 4 layers × 256 wide, 4 heads."""
    from pycodegen.config import TrainConfig
    from pycodegen.models.hf import HFCausalFamily

    data = tiny_dataset(tmp_path / "data")
    family = HFCausalFamily(
        TrainConfig(family="hf-causal", data=data, model="new:gpt2"), {"task": "instruction"}, data
    )
    family.setup()
    config = family.model.config  # type: ignore[union-attr]
    assert (config.n_layer, config.n_embd, config.n_head) == (4, 256, 4)
    blocks = sum(p.numel() for n, p in family.model.named_parameters() if ".h." in n)  # type: ignore[union-attr]
    assert 3_000_000 < blocks < 3_300_000


def test_family_defaults_apply_where_the_user_gave_nothing() -> None:
    """The char-RNN trains with the paper's settings unless told otherwise (its docstring says so)."""
    from pycodegen.config import TrainConfig
    from pycodegen.models.registry import apply_family_defaults

    plain = apply_family_defaults(TrainConfig(family="char-rnn"))
    assert (plain.batch_size, plain.lr, plain.schedule, plain.decay_per_epoch, plain.clip) == (
        50,
        0.002,
        "exponential",
        0.97,
        5.0,
    )
    given = apply_family_defaults(TrainConfig(family="char-rnn", lr=0.01, clip=1.0))
    assert (given.lr, given.clip, given.batch_size) == (0.01, 1.0, 50)
    assert given.model_fields_set == {"family", "lr", "clip"}  # still what the user gave
    assert apply_family_defaults(TrainConfig(family="hf-causal")) == TrainConfig(family="hf-causal")
