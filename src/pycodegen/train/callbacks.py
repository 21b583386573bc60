"""The hooks the training loop calls, so that code from above (dev evaluation, logging) can join a run
without `train/` importing it: the CLI or the recipe runner builds the callbacks and passes them to
`train(cfg, console, callbacks=[...])`.

Every hook has a default that does nothing, so a subclass overrides only what it needs. This module
imports nothing at run time, so the implementations above train/ (evaluate.dev.DevGeneration) subclass
it: the one import the layout test allows from a higher room into train/.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pycodegen.models.family import Family
    from pycodegen.train.loop import Trainer


class TrainCallback:
    """Base class of a training callback; each hook is called on every process unless it says otherwise."""

    def on_train_begin(self, trainer: Trainer) -> None:
        """After the model, data and optimizer are set up (and a resumed state restored)."""

    def on_validate(self, trainer: Trainer, model: torch.nn.Module, family: Family) -> dict[str, float]:
        """Extra validation metrics, merged into the validation row and usable as `best_metric`.

        Called on the main process only, with the unwrapped model in eval mode: the trainer broadcasts
        the result to every other process before the best checkpoint is chosen, so all ranks agree.
        Higher is better unless the name ends in `loss` or `perplexity`.
        """
        return {}

    def on_log(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After a metrics row (training or validation) is written, on the main process."""

    def on_save(self, trainer: Trainer, directory: Any) -> None:
        """After a checkpoint directory is complete (step, best or final checkpoint), on every process."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the final checkpoint and summary.json are written."""
