"""`pycodegen export`: a training checkpoint → a plain HF-format directory, LoRA adapters merged in.

The checkpoint is rebuilt from its own directory (its pycodegen.json card), so a checkpoint copied to
another place, without the dataset it was trained on, still exports.
"""

from __future__ import annotations

from pathlib import Path

from pycodegen.models.checkpoint import load_checkpoint
from pycodegen.models.family import is_adapter


def export(checkpoint: Path, out: Path) -> Path:
    """Load the checkpoint (base + adapter for LoRA), merge any adapter, and save the model to `out`."""
    family, model = load_checkpoint(Path(checkpoint))
    if is_adapter(model):
        model = model.merge_and_unload()  # type: ignore[operator]
    family.save(model, Path(out))  # with its card: an exported directory still says what it is
    return Path(out)
