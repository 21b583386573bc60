"""The CodeSearchNet retrieval baselines (Husain et al. 2019; the Stanford system's equation 1): a query
encoder and a code encoder, each a neural bag of words or a bidirectional GRU over subtokens, trained
with the softmax loss over in-batch pairs and evaluated by MRR against 999 distractors.

Subtokens: identifiers split at underscores and camelCase, lower-cased, as CodeSearchNet does; the
vocabulary is the most frequent subtokens of the training split (saved as vocab.json).

Unlike CodeSearchNet's baselines, the two encoders share their subtoken embedding by default
(`shared_embedding`; `--model-arg shared_embedding=false` for separate ones): a query and a function
that use the same words start out close, so a short run is useful. On the stdlib docstring-to-body
split (263 validation rows, chance MRR 0.023), the family defaults (200 steps, batch 64, lr 0.005) reach
MRR 0.46 in about 40 s; separate embeddings reached 0.29 after 1500 such steps, and 0.026 with the
global defaults (batch 8, lr 5e-4).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pycodegen.data.dataset_dir import SPLITS, read_manifest, read_split
from pycodegen.errors import ConfigError
from pycodegen.metrics import mean_reciprocal_rank
from pycodegen.models.family import Family, check_model_args, pad_field, read_model_config, save_module

DEFAULTS: dict[str, Any] = {
    "encoder": "nbow",
    "dim": 128,
    "vocab": 10000,
    "scale": 20.0,
    "shared_embedding": True,
}
AT_CHANCE = 1.5  # an MRR below this multiple of chance's is reported as a model at chance
WORD = re.compile(r"[A-Za-z]+|\d+")
CAMEL = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def subtokens(text: str) -> list[str]:
    """Identifier subtokens, lower-cased.

    >>> subtokens("def getUserName(user_id): return HTTPError")
    ['def', 'get', 'user', 'name', 'user', 'id', 'return', 'http', 'error']
    """
    return [p.lower() for w in WORD.findall(text) for p in CAMEL.findall(w)]


def chance_mrr(n: int, distractors: int) -> float:
    """The MRR of a random ranking, as `mean_reciprocal_rank` cuts `n` queries into chunks of
    `distractors + 1`: a query's expected reciprocal rank among m candidates is H(m) / m.

    >>> round(chance_mrr(263, 262), 4), chance_mrr(2, 1)
    (0.0234, 0.75)
    """
    size = distractors + 1
    chunks = [min(size, n - start) for start in range(0, n, size)]
    return sum(sum(1 / r for r in range(1, m + 1)) for m in chunks) / n


class Encoder(nn.Module):
    """Subtoken ids (B, T) → one vector per sequence (B, C)."""

    def __init__(self, vocab_size: int, dim: int, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.rnn = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True) if kind == "bigru" else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).unsqueeze(-1).float()  # (B, T, 1)
        x = self.embed(ids)  # (B, T, C)
        if self.rnn is not None:
            x, _ = self.rnn(x)  # (B, T, C)
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, C): mean over real tokens


class DualEncoder(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.config = {**config, "model_type": "pycodegen-retrieval"}
        self.query = Encoder(config["vocab_size"], config["dim"], config["encoder"])
        self.code = Encoder(config["vocab_size"], config["dim"], config["encoder"])
        if config.get("shared_embedding"):
            self.code.embed = self.query.embed

    def forward(self, query: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        q = F.normalize(self.query(query), dim=-1)  # (B, C)
        c = F.normalize(self.code(code), dim=-1)  # (B, C)
        return q @ c.T * self.config["scale"]  # (B, B): every query against every code of the batch


class RetrievalFamily(Family):
    name = "retrieval"
    views = ("docstring-to-body",)

    @classmethod
    def default_overrides(cls) -> dict[str, Any]:
        # the softmax over in-batch pairs needs many negatives, and embeddings learn slowly at 5e-4
        return {"batch_size": 64, "lr": 0.005}

    tokenizer_file = "vocab.json"

    def setup(self) -> None:
        if self.cfg.model:
            directory = Path(self.cfg.model)
            self.setup_from_checkpoint(directory, {})
            return
        check_model_args(self.name, self.cfg.model_args, list(DEFAULTS))
        opts = {**DEFAULTS, **self.cfg.model_args}
        if opts["encoder"] not in ("nbow", "bigru"):
            raise ConfigError(f"retrieval encoder {opts['encoder']!r}: use nbow or bigru")
        counts: Counter[str] = Counter()
        for row in read_split(self.data_dir, "train"):
            counts.update(subtokens(self.query_text(row)) + subtokens(self.code_text(row)))
        self.vocab = ["<pad>", "<unk>", *[w for w, _ in counts.most_common(int(opts["vocab"]) - 2)]]
        config = {
            "encoder": opts["encoder"],
            "dim": int(opts["dim"]),
            "scale": float(opts["scale"]),
            "shared_embedding": bool(opts["shared_embedding"]),
            "vocab_size": len(self.vocab),
        }
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.model = DualEncoder(config)

    def setup_from_checkpoint(self, directory: Path, card: dict[str, Any]) -> None:
        self.vocab = json.loads((directory / "vocab.json").read_text())
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.model = DualEncoder(read_model_config(directory))
        self.load_weights(self.model, directory)

    @staticmethod
    def query_text(row: dict[str, Any]) -> str:
        return row.get("docstring") or row["prompt"]

    @staticmethod
    def code_text(row: dict[str, Any]) -> str:
        return row.get("signature", "") + "\n" + row["target"]

    def ids(self, text: str) -> list[int]:
        return [self.index.get(t, 1) for t in subtokens(text)][: self.cfg.max_length] or [1]

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        return {"query": self.ids(self.query_text(row)), "code": self.ids(self.code_text(row))}

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return {"query": pad_field(examples, "query", 0), "code": pad_field(examples, "code", 0)}

    tokens_counted = "query+code"  # no target tokens: both encoders read every token

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["query"] != 0).sum() + (batch["code"] != 0).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        scores = model(batch["query"], batch["code"]).float()  # (B, B)
        return F.cross_entropy(scores, torch.arange(scores.shape[0], device=scores.device))

    @torch.no_grad()
    def embed_codes(self, model: nn.Module, texts: list[str], batch: int = 256) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            ids = self.collate([{"query": [1], "code": self.ids(t)} for t in texts[i : i + batch]])["code"]
            out.append(F.normalize(model.code(ids), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def embed_queries(self, model: nn.Module, texts: list[str]) -> torch.Tensor:
        ids = self.collate([{"query": self.ids(t), "code": [1]} for t in texts])["query"]
        return F.normalize(model.query(ids), dim=-1)

    def evaluate(self, model: nn.Module, rows: list[dict[str, Any]]) -> dict[str, float]:
        if len(rows) < 2:
            return {}
        was_training = model.training
        model.eval()
        queries = self.embed_queries(model, [self.query_text(r) for r in rows])
        codes = self.embed_codes(model, [self.code_text(r) for r in rows])
        model.train(was_training)
        distractors = min(999, len(rows) - 1)
        return {
            "valid_mrr": mean_reciprocal_rank((queries @ codes.T).numpy(), distractors),
            "valid_mrr_chance": chance_mrr(len(rows), distractors),
            "valid_mrr_distractors": distractors,
        }

    def notes(self, metrics: dict[str, Any]) -> list[str]:
        mrr, chance = metrics.get("valid_mrr"), metrics.get("valid_mrr_chance")
        if mrr is None or chance is None or mrr > AT_CHANCE * chance:
            return []
        return [
            f"validation MRR {mrr:.3f} is at chance ({chance:.3f} for random ranking among "
            f"{int(metrics.get('valid_mrr_distractors', 0)) + 1} candidates): the model has not learned "
            "to match queries to code; train longer or with a higher --lr"
        ]

    def save_files(self, model: nn.Module, directory: Path) -> None:
        save_module(model, directory)
        (directory / "vocab.json").write_text(json.dumps(self.vocab))

    def describe(self) -> dict[str, Any]:
        return {"family": self.name, **(self.model.config if self.model is not None else {})}


def search(model_dir: Path, corpus: Path, query: str, top: int = 5) -> list[dict[str, Any]]:
    """The `top` functions of a docstring-to-body dataset (all splits) that best match `query`."""
    from pycodegen.config import TrainConfig, parse_config
    from pycodegen.zoo import checkpoint_card

    card = checkpoint_card(Path(model_dir))
    if card is None:
        raise ConfigError(f"{model_dir} is not a pycodegen checkpoint (no pycodegen.json): give RUN/best")
    if card["family"] != "retrieval":
        raise ConfigError(f"{model_dir} is a {card['family']} checkpoint; search needs a retrieval one")
    # the settings it was trained with (max_length, encoder sizes), read from its card
    trained = {**(card.get("train_config") or {}), "data": str(corpus), "model": str(model_dir)}
    cfg = parse_config(TrainConfig, {**trained, "family": "retrieval"}, where=str(model_dir))
    family = RetrievalFamily(cfg, {"task": "docstring-to-body"}, corpus)
    family.setup()
    assert family.model is not None
    family.model.eval()
    read_manifest(corpus)  # a clear error when `corpus` is not a dataset directory
    rows = [row for split in SPLITS for row in read_split(corpus, split)]
    if not rows:
        raise ConfigError(f"{corpus} has no functions to search")
    codes = family.embed_codes(family.model, [family.code_text(r) for r in rows])
    scores = (family.embed_queries(family.model, [query]) @ codes.T)[0]
    best = scores.topk(min(top, len(rows)))
    return [
        {
            "score": float(s),
            "id": rows[int(i)]["id"],
            "signature": rows[int(i)].get("signature", ""),
            "path": rows[int(i)].get("path"),
            "lineno": rows[int(i)].get("lineno"),
        }
        for s, i in zip(best.values, best.indices, strict=True)
    ]
