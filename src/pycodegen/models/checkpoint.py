"""Checkpoint directories that describe themselves: read a checkpoint's pycodegen.json card, and rebuild
its family and model from the directory alone (no dataset directory, no manifest from elsewhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pycodegen.config import TrainConfig, parse_config
from pycodegen.errors import ConfigError
from pycodegen.models.family import Family
from pycodegen.models.registry import get_family
from pycodegen.zoo import CARD_FILE, checkpoint_card, model_path


def read_card(directory: Path) -> dict[str, Any]:
    """The card of a pycodegen checkpoint directory (family, architecture, tokenizer, adapter and base,
    dataset task and template, prompt mode, training config, pycodegen version)."""
    card = checkpoint_card(Path(directory)) if Path(directory).is_dir() else None
    if card is None:
        raise ConfigError(
            f"{directory} is not a pycodegen training checkpoint (no {CARD_FILE}); give a checkpoint "
            "directory such as RUN/final, RUN/best or RUN/checkpoint-STEP"
        )
    return card


def load_checkpoint(directory: Path) -> tuple[Family, torch.nn.Module]:
    """(family, model) of a checkpoint, from the directory alone; a LoRA checkpoint's model is its base
    with the adapter applied (a PeftModel, not merged). The model is in eval mode."""
    directory = model_path(str(directory))  # a shipped zoo checkpoint by name, too
    card = read_card(directory)
    where = str(directory / CARD_FILE)
    cfg = parse_config(TrainConfig, card.get("train_config") or {}, where=where)
    if cfg.family != card["family"]:
        raise ConfigError(f"{where}: family {card['family']!r} but train_config says {cfg.family!r}")
    family = get_family(card["family"])(cfg, dict(card.get("dataset") or {}), directory)
    family.setup_from_checkpoint(directory, card)
    model = family.model
    assert model is not None
    model.eval()
    return family, model
