"""Fill-in-the-middle end to end: `prepare --fim-rate` rows, the checkpoint card's FIM record, LoRA's saved
sentinel rows, FIM prompts, and a tiny model trained through prepare + train that fills a middle."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from rich.console import Console

from pycodegen.config import PrepareConfig, TrainConfig
from pycodegen.data.fim import fim_split, fim_text
from pycodegen.data.prepare import prepare
from pycodegen.data.tokenizers import FIM_TOKENS
from pycodegen.errors import ConfigError
from pycodegen.generate.fim import FimUnsupported, fim_prompt
from pycodegen.train.loop import train
from pycodegen.zoo import load_causal_lm

QUIET = Console(quiet=True)
# Letters and digits alternate, so the byte-level pre-tokenizer keeps every character a token of its own
# (no merge can span two pre-tokens), and each character fixes the next: the middle between any prefix
# and suffix is determined by them, and a tiny model learns where to stop within a few hundred steps.
TEXT = "a1b2c3d4e5f6\n"
SENTINELS = "|".join(FIM_TOKENS[k] for k in ("prefix", "suffix", "middle"))


def toy_tree(root: Path, files: int = 300) -> Path:
    root.mkdir(parents=True)
    for i in range(files):
        (root / f"m{i:03d}.py").write_text(TEXT)
    return root


def prepared(tmp: Path, name: str, **options: object) -> Path:
    settings: dict[str, object] = {
        "source": str(tmp / "tree"),
        "out": tmp / name,
        "task": "lm-windows",
        "train_tokenizer": True,
        "vocab_size": 300,
        "dedup": False,  # every file is the same text: the rows differ by their FIM cuts only
        "builtin_eval_sets": False,
        "valid_fraction": 0.02,
        "test_fraction": 0.0,
        "workers": 1,
    }
    prepare(PrepareConfig(**{**settings, **options}), QUIET)
    return tmp / name


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("fim")
    toy_tree(tmp / "tree")
    return tmp


@pytest.fixture(scope="module")
def fim_data(toy: Path) -> Path:
    return prepared(toy, "fim", fim_rate=1.0)


def rows(data: Path) -> list[dict]:
    return [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]


def split_fim(text: str) -> tuple[str, str, str, str]:
    """(mode, prefix, middle, suffix) of a decoded FIM row (inverse of fim_text)."""
    pre, suf, mid = (FIM_TOKENS[k] for k in ("prefix", "suffix", "middle"))
    if text.startswith(pre + suf):
        suffix, prefix_middle = text[len(pre + suf) :].split(mid)
        return "spm", prefix_middle, "", suffix
    prefix, rest = text[len(pre) :].split(suf)
    suffix, middle = rest.split(mid)
    return "psm", prefix, middle, suffix


def test_split_round_trips() -> None:
    rng = random.Random(1)
    for text in ["", "x", TEXT, "def f(x):\n    return x  # é\n" * 3]:
        for _ in range(50):
            p, m, s = fim_split(text, rng)
            assert p + m + s == text
            # PSM with an empty prefix is the same string as SPM with one (both start <pre><suf>)
            assert split_fim(fim_text("psm", p, m, s)) == (("psm", p, m, s) if p else ("spm", m, "", s))
            assert split_fim(fim_text("spm", p, m, s)) == ("spm", p + m, "", s)


def test_rows_are_the_windows_rewritten(toy: Path, fim_data: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fim_data / "tokenizer")
    ids = {tok.convert_tokens_to_ids(t) for t in FIM_TOKENS.values()}
    assert len(ids) == 4 and tok.unk_token_id not in ids  # the sentinels were added
    modes = set()
    for row in rows(fim_data):
        assert row["input_ids"][-1] == tok.eos_token_id  # the model learns to stop after the middle
        _, p, m, s = split_fim(tok.decode(row["input_ids"][:-1]))
        assert p + m + s == TEXT
        modes.add(row["fim"])
    assert modes == {"psm", "spm"}
    manifest = json.loads((fim_data / "manifest.json").read_text())
    assert manifest["fim"]["rate"] == 1.0 and manifest["fim"]["modes"] == ["psm", "spm"]
    assert manifest["fim"]["tokens"] == FIM_TOKENS and manifest["fim"]["added"] == list(FIM_TOKENS.values())
    counts = manifest["counts"]
    assert counts["fim_psm_windows"] + counts["fim_spm_windows"] == 300
    again = prepared(toy, "fim-again", fim_rate=1.0)  # seeded: the same cuts
    assert (again / "train.jsonl").read_bytes() == (fim_data / "train.jsonl").read_bytes()
    other_seed = prepared(toy, "fim-seed", fim_rate=1.0, seed=1)
    first, second = ({r["id"]: r["input_ids"] for r in rows(d)} for d in (fim_data, other_seed))
    assert any(first[k] != second[k] for k in first.keys() & second.keys())


def test_sentinels_are_reused_where_the_tokenizer_has_them(fim_data: Path) -> None:
    from transformers import AutoTokenizer

    from pycodegen.data.tokenizers import with_fim_tokens

    tok = AutoTokenizer.from_pretrained(fim_data / "tokenizer")  # a FIM tokenizer, as StarCoder's
    before = {t: tok.convert_tokens_to_ids(t) for t in FIM_TOKENS.values()}
    size = len(tok)
    assert with_fim_tokens(tok) == [] and len(tok) == size
    assert {t: tok.convert_tokens_to_ids(t) for t in FIM_TOKENS.values()} == before


def test_rate_zero_leaves_the_data_unchanged(toy: Path) -> None:
    plain = prepared(toy, "plain")
    zero = prepared(toy, "zero", fim_rate=0.0, fim_spm_rate=1.0)
    for name in ("train.jsonl", "valid.jsonl", "tokenizer/tokenizer.json"):
        assert (plain / name).read_bytes() == (zero / name).read_bytes()
    assert "fim" not in json.loads((zero / "manifest.json").read_text())
    half = prepared(toy, "half", fim_rate=0.5, fim_spm_rate=0.0)
    made = [r.get("fim") for r in rows(half)]
    assert set(made) == {None, "psm"} and 0.3 < made.count("psm") / len(made) < 0.7
    with pytest.raises(ConfigError, match="--fim-rate"):
        prepared(toy, "docs", task="docstring-to-body", fim_rate=0.5)


def test_fim_prompt_needs_a_fim_model() -> None:
    record = {"tokens": FIM_TOKENS, "modes": ["psm"], "rate": 0.5}
    assert fim_prompt({"family": "hf-causal", "fim": record}, "P", "S") == (
        "<fim_prefix>P<fim_suffix>S<fim_middle>"
    )
    for card in ({"family": "hf-causal", "fim": None}, {"family": "hf-causal"}):
        with pytest.raises(FimUnsupported, match="not trained for fill-in-the-middle"):
            fim_prompt(card, "P", "S")
    with pytest.raises(FimUnsupported, match="PSM order, not spm"):
        fim_prompt(record, "P", "S", mode="spm")
    from pycodegen.zoo import DEFAULT_MODEL, load_tokenizer

    with pytest.raises(FimUnsupported):  # the embedded model: no FIM tokens
        fim_prompt(load_tokenizer(DEFAULT_MODEL), "P", "S")


def infill(model: torch.nn.Module, tok: object, card: dict, prefix: str, suffix: str, mode: str) -> str:
    ids = tok(fim_prompt(card, prefix, suffix, mode), return_tensors="pt", add_special_tokens=False)  # type: ignore[operator]
    out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tok.pad_token_id)  # type: ignore[attr-defined, operator]
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)  # type: ignore[attr-defined]


def test_a_tiny_model_learns_to_fill_the_middle(fim_data: Path, tmp_path: Path) -> None:
    """prepare --fim-rate 1 + train (new:gpt2, 2 layers) → its checkpoint, loaded like any other, writes
    the middle between a prefix and a suffix it was given, in both orders, and stops there."""
    train(
        TrainConfig(
            family="hf-causal",
            data=fim_data,
            out=tmp_path / "run",
            model="new:gpt2",
            model_args={"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 32},
            max_steps=150,
            batch_size=32,
            lr=3e-3,
            schedule="constant",
            eval_samples=0,
            eval_every=1000,
            save_every=1000,
        ),
        QUIET,
    )
    final = tmp_path / "run" / "final"
    card = json.loads((final / "pycodegen.json").read_text())
    assert card["fim"] == {"tokens": FIM_TOKENS, "modes": ["psm", "spm"], "rate": 1.0, "spm_rate": 0.5}
    model, tok = load_causal_lm(str(final))
    cases = [(2, 6), (5, 9), (0, 7), (6, 13)]
    for mode in ("psm", "spm"):
        got = [infill(model, tok, card, TEXT[:lo], TEXT[hi:], mode) for lo, hi in cases]
        assert got == [TEXT[lo:hi] for lo, hi in cases], mode


def test_lora_saves_the_added_sentinels(toy: Path, tmp_path: Path) -> None:
    """A pre-trained model whose tokenizer lacks the sentinels: training resizes its embeddings, LoRA
    trains the sentinel rows beside the adapters, and the checkpoint loads with the trained rows."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    plain = prepared(toy, "plain-for-base")
    base_tok = AutoTokenizer.from_pretrained(plain / "tokenizer")
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(base_tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=True,
            eos_token_id=base_tok.eos_token_id,
            pad_token_id=base_tok.pad_token_id,
        )
    )
    base.save_pretrained(tmp_path / "base")
    base_tok.save_pretrained(tmp_path / "base")
    data = prepared(toy, "fim-lora", fim_rate=1.0, train_tokenizer=False, tokenizer=str(tmp_path / "base"))
    train(
        TrainConfig(
            family="hf-causal",
            data=data,
            out=tmp_path / "run",
            model=str(tmp_path / "base"),
            mode="lora",
            max_steps=4,
            batch_size=8,
            lr=1e-2,
            eval_samples=0,
            eval_every=1000,
            save_every=1000,
        ),
        QUIET,
    )
    final = tmp_path / "run" / "final"
    assert json.loads((final / "pycodegen.json").read_text())["fim"]["rate"] == 1.0
    from safetensors.torch import load_file

    saved = load_file(str(final / "adapter_model.safetensors"))
    rows_saved = next(v for k, v in saved.items() if "trainable_tokens" in k)
    model, tok = load_causal_lm(str(final))
    fim_ids = [tok.convert_tokens_to_ids(t) for t in FIM_TOKENS.values()]
    assert min(fim_ids) >= len(base_tok)  # added, past the base vocabulary
    loaded = model.get_input_embeddings()(torch.tensor(fim_ids))
    assert torch.equal(loaded, rows_saved.to(loaded.dtype))
    with model.disable_adapter():  # the rows as the resize drew them, before training
        resized = model.get_input_embeddings()(torch.tensor(fim_ids))
    assert not torch.allclose(loaded, resized)
    from pycodegen.train.export import export

    merged = export(final, tmp_path / "merged")  # LoRA merged: the trained rows and the card's FIM record
    assert json.loads((merged / "pycodegen.json").read_text())["fim"]["modes"] == ["psm", "spm"]
    plain, _ = load_causal_lm(str(merged))
    assert torch.equal(plain.get_input_embeddings()(torch.tensor(fim_ids)), loaded)
