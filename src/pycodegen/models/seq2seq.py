"""An encoder-decoder Transformer from scratch (the Nazarbayev system: Amirov 2024, after Vaswani et al.
2017): 6 encoder + 6 decoder layers, 8 heads, d_model 256, feed-forward 1024, dropout, sinusoidal
positions, padding and causal masks, teacher forcing; greedy and beam decoding.

Layers are pre-norm (LayerNorm before each sub-layer), which trains stably without warm-up tricks on
small data; the paper's sizes are the defaults. Attention is torch's scaled_dot_product_attention.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pycodegen.errors import ConfigError
from pycodegen.models.family import Family, check_model_args, pad_field, read_model_config, save_module

DEFAULTS = {
    "d_model": 256,
    "n_head": 8,
    "n_layer_enc": 6,
    "n_layer_dec": 6,
    "d_ff": 1024,
    "dropout": 0.1,
    "max_len": 1024,
}


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed position encodings of Vaswani et al. 2017, (max_len, d_model)."""
    position = torch.arange(max_len).unsqueeze(1)  # (T, 1)
    div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))  # (C/2,)
    pe = torch.zeros(max_len, d_model)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


class Attention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float) -> None:
        super().__init__()
        self.n_head, self.dropout = n_head, dropout
        self.q, self.k, self.v = (nn.Linear(d_model, d_model) for _ in range(3))
        self.o = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        S = memory.shape[1]
        q = self.q(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, T, C/H)
        k = self.k(memory).view(B, S, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, S, C/H)
        v = self.v(memory).view(B, S, self.n_head, C // self.n_head).transpose(1, 2)  # (B, H, S, C/H)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.o(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(c["d_model"]), nn.LayerNorm(c["d_model"])
        self.attn = Attention(c["d_model"], c["n_head"], c["dropout"])
        self.ff = FeedForward(c["d_model"], c["d_ff"], c["dropout"])
        self.drop = nn.Dropout(c["dropout"])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, mask))
        return x + self.drop(self.ff(self.ln2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: dict[str, Any]) -> None:
        super().__init__()
        self.ln1, self.ln2, self.ln3 = (nn.LayerNorm(c["d_model"]) for _ in range(3))
        self.self_attn = Attention(c["d_model"], c["n_head"], c["dropout"])
        self.cross_attn = Attention(c["d_model"], c["n_head"], c["dropout"])
        self.ff = FeedForward(c["d_model"], c["d_ff"], c["dropout"])
        self.drop = nn.Dropout(c["dropout"])

    def forward(
        self, x: torch.Tensor, memory: torch.Tensor, self_mask: torch.Tensor, cross_mask: torch.Tensor
    ) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.self_attn(h, h, self_mask))
        x = x + self.drop(self.cross_attn(self.ln2(x), memory, cross_mask))
        return x + self.drop(self.ff(self.ln3(x)))


class Seq2SeqTransformer(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = {**DEFAULTS, **config, "model_type": "pycodegen-seq2seq"}
        c = self.config
        if c["d_model"] % c["n_head"]:
            raise ConfigError(f"d_model {c['d_model']} is not divisible by n_head {c['n_head']}")
        self.embed = nn.Embedding(c["vocab_size"], c["d_model"], padding_idx=c["pad_id"])
        # Scaled by sqrt(d_model) on input and tied to the output: unit-variance inputs, unit-scale logits.
        nn.init.normal_(self.embed.weight, std=c["d_model"] ** -0.5)
        self.register_buffer("pos", sinusoidal_positions(c["max_len"], c["d_model"]), persistent=False)
        self.encoder = nn.ModuleList(EncoderLayer(c) for _ in range(c["n_layer_enc"]))
        self.decoder = nn.ModuleList(DecoderLayer(c) for _ in range(c["n_layer_dec"]))
        self.ln_enc, self.ln_dec = nn.LayerNorm(c["d_model"]), nn.LayerNorm(c["d_model"])
        self.drop = nn.Dropout(c["dropout"])

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.drop(
            self.embed(ids) * math.sqrt(self.config["d_model"]) + self.pos[: ids.shape[1]]
        )  # (B, T, C)

    def encode(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (src != self.config["pad_id"])[:, None, None, :]  # (B, 1, 1, S): padding is never attended
        x = self._embed(src)
        for layer in self.encoder:
            x = layer(x, keep)
        return self.ln_enc(x), keep

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        T = tgt.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool, device=tgt.device).tril()[None, None]  # (1, 1, T, T)
        x = self._embed(tgt)
        for layer in self.decoder:
            x = layer(x, memory, causal, src_keep)
        return self.ln_dec(x) @ self.embed.weight.T  # (B, T, V): output projection tied to the embedding

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        memory, keep = self.encode(src)
        return self.decode(tgt, memory, keep)  # teacher forcing: the whole target prefix at once

    @torch.no_grad()
    def greedy(self, src: torch.Tensor, bos: int, eos: int, max_new_tokens: int) -> list[list[int]]:
        memory, keep = self.encode(src)
        out = torch.full((src.shape[0], 1), bos, dtype=torch.long, device=src.device)
        done = torch.zeros(src.shape[0], dtype=torch.bool, device=src.device)
        for _ in range(max_new_tokens):
            nxt = self.decode(out, memory, keep)[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            out = torch.cat([out, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        return [_until(row[1:].tolist(), eos) for row in out]

    @torch.no_grad()
    def beam(self, src: torch.Tensor, bos: int, eos: int, max_new_tokens: int, beams: int = 4) -> list[int]:
        """Beam search for one source sequence (1, S); scores are summed log-probabilities / length."""
        memory, keep = self.encode(src)
        alive: list[tuple[float, list[int]]] = [(0.0, [bos])]
        finished: list[tuple[float, list[int]]] = []
        for _ in range(max_new_tokens):
            seqs = torch.tensor([s for _, s in alive], device=src.device)
            logp = self.decode(seqs, memory.expand(len(alive), -1, -1), keep.expand(len(alive), -1, -1, -1))
            logp = logp[:, -1].float().log_softmax(-1)  # (beams, V)
            candidates = []
            for (score, seq), row in zip(alive, logp, strict=True):
                top = row.topk(beams)
                candidates += [
                    (score + float(v), [*seq, int(i)]) for v, i in zip(top.values, top.indices, strict=True)
                ]
            candidates.sort(key=lambda c: c[0], reverse=True)
            alive = []
            for score, seq in candidates[:beams]:
                (finished if seq[-1] == eos else alive).append((score, seq))
            if not alive:
                break
        pool = finished or alive
        best = max(pool, key=lambda c: c[0] / len(c[1]))
        return _until(best[1][1:], eos)


def _until(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


class Seq2SeqFamily(Family):
    name = "seq2seq"
    views = ("docstring-to-body", "instruction")
    generates = True
    tokenizer_file = "tokenizer"

    def setup(self) -> None:
        from transformers import AutoTokenizer

        source = Path(self.cfg.model) if self.cfg.model else None
        tok_dir = (
            source / "tokenizer"
            if source and (source / "tokenizer").is_dir()
            else self.data_dir / "tokenizer"
        )
        if not (tok_dir / "tokenizer.json").is_file():
            raise ConfigError(
                f"seq2seq needs a tokenizer: {tok_dir} has none (prepare with --train-tokenizer)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        if source is not None:
            config = json.loads((source / "config.json").read_text())
        else:
            check_model_args(self.name, self.cfg.model_args, list(DEFAULTS))
            config = {
                **DEFAULTS,
                **self.cfg.model_args,
                "vocab_size": len(self.tokenizer),
                "pad_id": int(self.tokenizer.pad_token_id),
            }
        self.model = Seq2SeqTransformer(config)
        if source is not None:
            self.load_weights(self.model, source)

    def setup_from_checkpoint(self, directory: Path, card: dict[str, Any]) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        self.model = Seq2SeqTransformer(read_model_config(directory))
        self.load_weights(self.model, directory)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        limit = (
            min(self.cfg.max_length, self.model.config["max_len"] - 1) if self.model else self.cfg.max_length
        )
        eos = int(self.tokenizer.eos_token_id)
        src = self.tokenizer(row["prompt"], add_special_tokens=False)["input_ids"][:limit]
        tgt = (self.tokenizer(row["target"], add_special_tokens=False)["input_ids"] + [eos])[:limit]
        return {"src": src, "tgt_in": [eos, *tgt[:-1]], "labels": tgt}  # EOS doubles as the start token

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return {
            "src": pad_field(examples, "src", self.pad_id),
            "tgt_in": pad_field(examples, "tgt_in", self.pad_id),
            "labels": pad_field(examples, "labels", -100),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(batch["src"], batch["tgt_in"])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)

    def save_files(self, model: nn.Module, directory: Path) -> None:
        save_module(model, directory)
        self.tokenizer.save_pretrained(directory / "tokenizer")

    beam_search = True

    @torch.no_grad()
    def generate(
        self, model: nn.Module, prompts: list[str], max_new_tokens: int, beams: int = 1
    ) -> list[str]:
        was_training = model.training
        model.eval()
        eos = int(self.tokenizer.eos_token_id)
        outs = []
        for prompt in prompts:
            src = torch.tensor(
                [
                    self.tokenizer(prompt, add_special_tokens=False)["input_ids"][: self.cfg.max_length]
                    or [eos]
                ]
            )
            ids = (
                model.beam(src, eos, eos, max_new_tokens, beams)
                if beams > 1
                else model.greedy(src, eos, eos, max_new_tokens)[0]
            )
            outs.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        model.train(was_training)
        return outs

    def describe(self) -> dict[str, Any]:
        return {"family": self.name, **(self.model.config if self.model is not None else {})}
