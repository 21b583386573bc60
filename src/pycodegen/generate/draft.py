"""Draft heads: speculative decoding for a lone greedy stream where the prompt offers nothing to look up.

Medusa (Cai et al. 2024, "Medusa: Simple LLM Inference Acceleration Framework with Multiple Decoding
Heads"): K small residual blocks read the model's last hidden state at a position and guess the tokens
2 … K+1 ahead through the model's own output layer (frozen, shared). The engine feeds the model's next
token plus these guesses in one pass and keeps the guesses equal to the model's own argmax (the same
verification as prompt lookup, `Engine._speculate`), so the greedy text is the model's whatever the heads
guess: the heads decide the speed, never the text.

The heads learn what this model says (self-distillation, Medusa-2's recipe when the training data's own
answers are not the model's): `pycodegen draft-heads` (`generate.draft_run`) has the model answer
instructions greedily, and `train_draft_heads` runs the frozen model over prompt + answer once for the
hidden states and fits the heads to the answer's later tokens. A directory holds
`draft_heads.safetensors` and `draft_heads.json` (its card: the model, a fingerprint of its output layer,
the data, the held-out acceptance); loading refuses heads made for another model.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pycodegen.errors import PycodegenError

WEIGHTS = "draft_heads.safetensors"
CARD = "draft_heads.json"


class DraftHeadsError(PycodegenError):
    """Draft heads that cannot be used with this model."""


class DraftHeads(nn.Module):
    """K residual blocks `h + SiLU(W h + b)` (Medusa's), zero-initialised (each starts as the identity)."""

    def __init__(self, hidden: int, count: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(count))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, C) final-norm hidden states → (N, K, C), head k's input to the output layer."""
        return torch.stack([hidden + F.silu(block(hidden)) for block in self.blocks], dim=-2)


def fingerprint(model: Any) -> str:
    """A short hash of the model's output-layer weight (every 997th value, as fp32): heads are tied to
    the hidden states and output layer of one model."""
    weight = model.get_output_embeddings().weight.detach().float().flatten()[::997].contiguous()
    return hashlib.sha256(weight.numpy().tobytes()).hexdigest()[:16]


def save_heads(heads: DraftHeads, out: Path, card: dict[str, Any]) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in heads.state_dict().items()}, str(out / WEIGHTS))
    (out / CARD).write_text(json.dumps(card, indent=2) + "\n")


def load_heads(path: Path, model: Any) -> tuple[DraftHeads, dict[str, Any]]:
    """The heads in directory `path`, checked against `model` (DraftHeadsError if made for another)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / CARD).is_file() or not (path / WEIGHTS).is_file():
        raise DraftHeadsError(f"{path} holds no draft heads (expected {CARD} and {WEIGHTS})")
    card = json.loads((path / CARD).read_text())
    mine = fingerprint(model)
    if card.get("fingerprint") != mine:
        raise DraftHeadsError(
            f"draft heads in {path} were trained for {card.get('model')!r} (output layer "
            f"{card.get('fingerprint')}), not this model (output layer {mine})"
        )
    heads = DraftHeads(int(card["hidden"]), int(card["heads"]))
    heads.load_state_dict(load_file(str(path / WEIGHTS)))
    return heads.eval(), card


def resolve_heads(heads: str | Path | None) -> Path | None:
    """The heads directory `heads` names: a directory, or the name of heads pycodegen ships
    (zoo_models/MODEL-draft); None or "none": no heads.

    Not on by default, even for the model whose heads pycodegen ships: on the engine bench's chat
    instruction they gave 1.30-1.36x the engine without, but through the server on code-completion
    prompts, where prompt lookup already drafts, one client measured 38.0-38.8 tok/s with them against
    37.0-41.0 without in separate runs (README "Measured · Engine"): no gain shown there."""
    from pycodegen.zoo import zoo_dir

    if heads is None or str(heads) == "none":
        return None
    path = Path(heads)
    if not path.exists() and (zoo_dir() / str(heads) / CARD).is_file():
        return zoo_dir() / str(heads)
    return path


class Drafter:
    """The heads at decode time: `draft(hidden)` → the K tokens they guess after the model's next token.
    Their output layer is an int8 copy of the model's: a guess need not be exact (verification decides),
    and 49,152 × 576 in int8 costs a fifth of fp32's time here."""

    def __init__(self, heads: DraftHeads, model: Any) -> None:
        head = model.get_output_embeddings()
        linear = nn.Linear(head.weight.shape[1], head.weight.shape[0], bias=False)
        linear.weight.data = head.weight.detach().float().clone()
        self.heads = heads.float()
        self.output = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(linear), {nn.Linear}, dtype=torch.qint8
        )
        self.count = len(heads.blocks)

    @torch.no_grad()
    def draft(self, hidden: torch.Tensor) -> list[int]:
        """The heads' guesses (K tokens) from one position's hidden state (C,)."""
        x = self.heads(hidden.float()[None])[0]  # (K, C)
        return self.output(x).argmax(-1).tolist()


# -- training ---------------------------------------------------------------------------------------------
@torch.no_grad()
def hidden_states(model: Any, pairs: Sequence[tuple[list[int], list[int]]], count: int) -> list[Any]:
    """Per sequence: the final-norm hidden states (N, C) of the positions whose next K+1 tokens are all
    answer tokens, and those tokens 2 … K+1 ahead (N, K): head k's targets."""
    decoder = model.get_decoder()
    out = []
    for prompt, ans in pairs:
        ids = torch.tensor([prompt + ans])
        total = ids.shape[1]
        first = len(prompt) - 1  # the position that predicts the first answer token
        last = total - 1 - count  # positions with count + 1 tokens after them
        if last <= first:
            continue
        hidden = decoder(input_ids=ids).last_hidden_state[0, first:last]
        targets = torch.stack([ids[0, first + 1 + k : last + 1 + k] for k in range(1, count + 1)], dim=-1)
        out.append((hidden.float(), targets))
    return out


def train_draft_heads(
    model: Any,
    pairs: Sequence[tuple[list[int], list[int]]],
    *,
    count: int = 2,
    epochs: int = 2,
    lr: float = 1e-3,
    batch: int = 256,
    held_out: float = 0.1,
    seed: int = 0,
    report: Callable[[str], None] | None = None,
) -> tuple[DraftHeads, dict[str, Any]]:
    """Heads fitted to `pairs` (prompt ids, the model's own greedy answer ids); held-out top-1 accuracy
    of each head and of the first `k` heads all right at once (what a k-token draft needs)."""
    generator = torch.Generator().manual_seed(seed)
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    cut = max(1, int(len(order) * held_out)) if len(order) > 1 else 0
    sequences = hidden_states(model, [pairs[i] for i in order], count)
    test, train = sequences[:cut], sequences[cut:]
    if not train:
        raise DraftHeadsError("no answer was long enough to train draft heads on")
    h_train = torch.cat([h for h, _ in train])
    y_train = torch.cat([y for _, y in train])
    weight = model.get_output_embeddings().weight.detach().float()
    heads = DraftHeads(h_train.shape[1], count)
    optimizer = torch.optim.AdamW(heads.parameters(), lr=lr, weight_decay=0.0)
    for epoch in range(epochs):
        started, total, steps = time.perf_counter(), 0.0, 0
        perm = torch.randperm(len(h_train), generator=generator)
        for i in range(0, len(perm), batch):
            rows = perm[i : i + batch]
            logits = F.linear(heads(h_train[rows]), weight)  # (B, K, V)
            # later heads guess further ahead and are right less often: weighted down (Medusa's 0.8^k)
            loss = sum(F.cross_entropy(logits[:, k], y_train[rows, k]) * 0.8**k for k in range(count))
            optimizer.zero_grad()
            loss.backward()  # type: ignore[union-attr]
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1  # type: ignore[union-attr]
        if report:
            seconds = time.perf_counter() - started
            report(f"epoch {epoch + 1}/{epochs}: loss {total / max(steps, 1):.3f}, {seconds:.0f} s")
    heads.eval()
    metrics: dict[str, Any] = {
        "train_positions": len(h_train),
        "held_out_positions": sum(len(h) for h, _ in test),
    }
    if test:
        h_test = torch.cat([h for h, _ in test])
        y_test = torch.cat([y for _, y in test])
        with torch.no_grad():
            guess = F.linear(heads(h_test), weight).argmax(-1)  # (N, K)
        right = guess == y_test
        metrics["head_accuracy"] = [round(float(right[:, k].float().mean()), 4) for k in range(count)]
        metrics["first_k_all_right"] = [
            round(float(right[:, : k + 1].all(-1).float().mean()), 4) for k in range(count)
        ]
    return heads, metrics
