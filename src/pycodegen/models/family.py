"""The model-family protocol the trainer drives, and the registry from family name to implementation.

A family knows how to build or load its model from a prepared dataset directory, how a dataset row
becomes token ids, how a batch becomes a loss, and how to save an HF-format checkpoint directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pycodegen.errors import ConfigError, unknown_name

if TYPE_CHECKING:
    from pycodegen.config import TrainConfig


class Family:
    """Base class: every hook has a default or raises with a clear message."""

    name: ClassVar[str] = ""
    views: ClassVar[tuple[str, ...]] = ()  # task views this family trains on
    lora_targets: ClassVar[list[str]] = []  # default LoRA target modules
    generates: ClassVar[bool] = False  # whether prompts → text (for generation metrics during training)

    def __init__(self, cfg: TrainConfig, manifest: dict[str, Any], data_dir: Path) -> None:
        self.cfg = cfg
        self.manifest = manifest
        self.data_dir = data_dir
        self.model: torch.nn.Module | None = None
        if manifest.get("task") not in self.views:
            raise ConfigError(
                f"family {self.name!r} trains on {', '.join(self.views)} datasets, but {data_dir} is "
                f"{manifest.get('task')!r}; prepare one with `pycodegen prepare --task {self.views[0]}`"
            )

    def setup(self) -> None:
        """Load the tokenizer/vocabulary and build or load the model into `self.model`."""
        raise NotImplementedError

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]]:
        """One dataset row → `input_ids` and `labels` (-100 where no loss is taken)."""
        raise NotImplementedError

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad a list of encoded examples into tensors."""
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        ids = pad_field(examples, "input_ids", self.pad_id)
        mask = (
            torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        ).long()  # not ids != pad: pad may be EOS
        return {"input_ids": ids, "labels": pad_field(examples, "labels", -100), "attention_mask": mask}

    @property
    def pad_id(self) -> int:
        return 0

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the label tokens of the batch."""
        raise NotImplementedError

    def pack(self, examples: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
        """Training examples as batched (default: unchanged)."""
        return examples

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the batch trains on (for tokens/s and loss weighting)."""
        return int((batch["labels"] != -100).sum())

    def evaluate(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Family-specific validation metrics beyond loss (e.g. MRR for retrieval)."""
        return {}

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write an HF-format directory (config + safetensors, tokenizer or vocabulary)."""
        raise NotImplementedError

    def load_weights(self, model: torch.nn.Module, directory: Path) -> None:
        from safetensors.torch import load_file

        state = load_file(str(directory / "model.safetensors"))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise ConfigError(
                f"{directory}: checkpoint does not fit the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )

    def generate(self, model: torch.nn.Module, prompts: list[str], max_new_tokens: int) -> list[str]:
        raise NotImplementedError(f"family {self.name!r} has no text generation")

    def describe(self) -> dict[str, Any]:
        return {"family": self.name}


def pad_field(examples: list[dict[str, list[int]]], key: str, value: int) -> torch.Tensor:
    """The `key` lists of a batch, right-padded with `value` to the longest: (B, T).

    >>> pad_field([{"x": [1, 2]}, {"x": [3]}], "x", 0).tolist()
    [[1, 2], [3, 0]]
    """
    width = max(len(e[key]) for e in examples)
    return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])


def save_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def save_module(model: torch.nn.Module, directory: Path) -> None:
    """A pycodegen-native model as an HF-style directory: model.safetensors + config.json (its `config`)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    save_json(directory / "config.json", model.config)  # type: ignore[arg-type]


FAMILIES: dict[str, type[Family]] = {}


def register(cls: type[Family]) -> type[Family]:
    FAMILIES[cls.name] = cls
    return cls


def get_family(name: str) -> type[Family]:
    # Importing the modules fills the registry; each is imported only when asked for.
    from pycodegen.models import char_rnn, hf, retrieval, seq2seq  # noqa: F401

    if name not in FAMILIES:
        raise unknown_name("model family", name, list(FAMILIES))
    return FAMILIES[name]
