"""Tokenizers for prepared data: a character vocabulary, a byte-level BPE trained with HF `tokenizers`,
or any local HF tokenizer (including the embedded model's)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pycodegen.data.python_tree import LANGUAGES

EOS = "<|endoftext|>"
PAD = "<pad>"
CONTROL_TOKENS = [f"<{lang}>" for lang in sorted(set(LANGUAGES.values()))]
# StarCoder's fill-in-the-middle sentinels by role (pycodegen.data.fim); `pad` is declared, as StarCoder's
# tokenizer does, so that FIM tokenizers are interchangeable, though pycodegen's rows never need it.
FIM_TOKENS = {
    "prefix": "<fim_prefix>",
    "middle": "<fim_middle>",
    "suffix": "<fim_suffix>",
    "pad": "<fim_pad>",
}


def control_token(lang: str) -> str:
    """The language control token Autocoder prepends to each window.

    >>> control_token("python")
    '<python>'
    """
    return f"<{lang}>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE trained on `texts`, with EOS, PAD and the language control tokens as specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, *CONTROL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, pad_token=PAD, extra_special_tokens=CONTROL_TOKENS
    )


def with_control_tokens(tokenizer: Any) -> Any:
    """Add the control tokens (and a PAD if missing) to an existing tokenizer as special tokens."""
    tokenizer.add_special_tokens({"additional_special_tokens": CONTROL_TOKENS})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def with_fim_tokens(tokenizer: Any) -> list[str]:
    """Add the FIM sentinels the tokenizer lacks (as special tokens: never split, skipped when decoding
    with skip_special_tokens); a tokenizer that already has them (a StarCoder-style vocabulary) keeps
    its own. Returns the tokens added."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in FIM_TOKENS.values() if t not in vocab]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    return missing


class CharVocab:
    """Character vocabulary for the char-RNN baseline: id 0 is padding, 1 unknown, 2 end of text."""

    SPECIALS = ("<pad>", "<unk>", "<eos>")

    def __init__(self, chars: list[str]) -> None:
        self.itos = [*self.SPECIALS, *chars]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def build(cls, texts: Iterable[str]) -> CharVocab:
        """The sorted set of characters in `texts`.

        >>> v = CharVocab.build(["ba", "ab"]); v.encode("abc")
        [3, 4, 1]
        """
        chars: set[str] = set()
        for t in texts:
            chars.update(t)
        return cls(sorted(chars))

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(c, 1) for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[i] for i in ids if i >= len(self.SPECIALS))

    def save(self, path: Path) -> None:
        path.write_text(
            json.dumps({"specials": list(self.SPECIALS), "chars": self.itos[3:]}, ensure_ascii=False) + "\n"
        )

    @classmethod
    def load(cls, path: Path) -> CharVocab:
        return cls(json.loads(path.read_text())["chars"])
