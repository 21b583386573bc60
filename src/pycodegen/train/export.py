"""`pycodegen export`: a training checkpoint → a plain HF-format directory, LoRA adapters merged in."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from pycodegen.config import TrainConfig, parse_config
from pycodegen.data.prepare import read_manifest
from pycodegen.errors import ConfigError
from pycodegen.models.family import get_family
from pycodegen.train.loop import STATE_FILE


def export(checkpoint: Path, out: Path) -> Path:
    """Rebuild the run's base model, apply the checkpoint (merging LoRA), and save it to `out`."""
    if not (checkpoint / STATE_FILE).is_file():
        raise ConfigError(f"{checkpoint} is not a pycodegen training checkpoint (no {STATE_FILE})")
    state = torch.load(checkpoint / STATE_FILE, weights_only=False)
    cfg = parse_config(TrainConfig, state["config"], where=str(checkpoint / STATE_FILE))
    # The same seeds as the run, so that a model built from a config starts from the same base weights.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    family = get_family(cfg.family)(cfg, read_manifest(cfg.data), Path(cfg.data))
    family.setup()
    model = family.model
    assert model is not None
    if (checkpoint / "adapter_model.safetensors").is_file():
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    else:
        family.load_weights(model, checkpoint)
    family.save(model, out)
    return out
