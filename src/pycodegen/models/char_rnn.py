"""The char-RNN baseline of the Stanford system: an RNN/GRU/LSTM over characters (Karpathy's char-rnn).

Defaults follow the paper: LSTM, 2 layers × 128 units (the model arguments), and the training settings
of `CharRNNFamily.default_overrides`: batch 50, learning rate 0.002 decayed ×0.97 per epoch, gradient
clipping at 5, used wherever the user did not set them. Sequences of 50-128 characters are the dataset's
(`prepare --task char-stream --seq-len`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pycodegen.data.tokenizers import CharVocab
from pycodegen.errors import unknown_name
from pycodegen.models.family import Family, check_model_args, read_model_config, save_module

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
DEFAULTS: dict[str, Any] = {"n_embd": 128, "n_layer": 2, "cell": "lstm", "dropout": 0.0}


class CharRNN(nn.Module):
    def __init__(
        self, vocab_size: int, n_embd: int = 128, n_layer: int = 2, cell: str = "lstm", dropout: float = 0.0
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise unknown_name("char-rnn cell", cell, list(CELLS))
        rnn = CELLS[cell]
        self.config = {
            "vocab_size": vocab_size,
            "n_embd": n_embd,
            "n_layer": n_layer,
            "cell": cell,
            "dropout": dropout,
            "model_type": "pycodegen-char-rnn",
        }
        self.embed = nn.Embedding(vocab_size, n_embd)
        self.rnn = rnn(n_embd, n_embd, n_layer, batch_first=True, dropout=dropout if n_layer > 1 else 0.0)
        self.head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx: torch.Tensor, state: Any = None) -> tuple[torch.Tensor, Any]:
        x = self.embed(idx)  # (B, T, C)
        y, state = self.rnn(x, state)  # (B, T, C)
        return self.head(y), state  # (B, T, V)


class CharRNNFamily(Family):
    name = "char-rnn"
    views = ("char-stream",)

    tokenizer_file = "vocab.json"

    @classmethod
    def default_overrides(cls) -> dict[str, Any]:
        return {
            "batch_size": 50,
            "lr": 0.002,
            "schedule": "exponential",
            "decay_per_epoch": 0.97,
            "clip": 5.0,
        }

    def setup(self) -> None:
        source = Path(self.cfg.model) if self.cfg.model else None
        vocab_path = (
            source / "vocab.json"
            if source and (source / "vocab.json").is_file()
            else (self.data_dir / "vocab.json")
        )
        self.vocab = CharVocab.load(vocab_path)
        check_model_args(self.name, self.cfg.model_args, list(DEFAULTS))
        has_config = source is not None and (source / "config.json").is_file()
        self.model = self.build(
            read_model_config(source) if has_config else {**DEFAULTS, **self.cfg.model_args}
        )
        if source is not None:
            self.load_weights(self.model, source)

    def build(self, opts: dict[str, Any]) -> CharRNN:
        return CharRNN(
            len(self.vocab.itos),
            int(opts["n_embd"]),
            int(opts["n_layer"]),
            str(opts["cell"]),
            float(opts["dropout"]),
        )

    def setup_from_checkpoint(self, directory: Path, card: dict[str, Any]) -> None:
        self.vocab = CharVocab.load(directory / "vocab.json")
        self.model = self.build(read_model_config(directory))
        self.load_weights(self.model, directory)

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        ids = self.vocab.encode(row["text"])
        return {"input_ids": ids[:-1], "labels": ids[1:]}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits, _ = model(batch["input_ids"])
        return nn.functional.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100
        )

    def save_files(self, model: nn.Module, directory: Path) -> None:
        save_module(model, directory)
        self.vocab.save(directory / "vocab.json")

    @torch.no_grad()
    def generate(
        self,
        model: nn.Module,
        prompts: list[str],
        max_new_tokens: int,
        beams: int = 1,
        temperature: float = 0.0,
    ) -> list[str]:
        """Continue each prompt character by character (greedy, or sampled with `temperature`)."""
        outs = []
        for prompt in prompts:
            ids = torch.tensor([self.vocab.encode(prompt) or [2]])
            logits, state = model(ids)
            chars = []
            for _ in range(max_new_tokens):
                last = logits[0, -1].float()
                if temperature > 0:
                    nxt = int(torch.multinomial(torch.softmax(last / temperature, -1), 1))
                else:
                    nxt = int(last.argmax())
                if nxt == 2:  # <eos>
                    break
                chars.append(nxt)
                logits, state = model(torch.tensor([[nxt]]), state)
            outs.append(self.vocab.decode(chars))
        return outs

    def describe(self) -> dict[str, Any]:
        return {"family": self.name, **(self.model.config if self.model is not None else {})}
