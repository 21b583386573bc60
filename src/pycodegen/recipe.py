"""`pycodegen run`: execute a recipe's stages in order, resumably, handing each stage's output directory
to the next (prepare.out → train.data; train.out/best → the model of generate and evaluate).

Each finished stage leaves OUT/stages/NAME.json with the hash of its settings (and of every stage before
it); a rerun skips a stage whose marker matches, so an interrupted recipe picks up at the stage that did
not finish, and an interrupted train stage resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console

from pycodegen.config import RecipeConfig
from pycodegen.errors import ConfigError
from pycodegen.jsonl import write_json

NOT_BUILT = {"serve": "serving"}


def _settings_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def defaults(cfg: BaseModel, **values: Any) -> Any:
    """`cfg` with `values` for the fields the recipe left unset (what a stage inherits from another)."""
    return cfg.model_copy(update={k: v for k, v in values.items() if k not in cfg.model_fields_set})


class RecipeRun:
    """One execution of a recipe: the stages in order, each skipped when its marker is up to date."""

    def __init__(self, recipe: RecipeConfig, console: Console, force: bool = False) -> None:
        self.recipe, self.console, self.force = recipe, console, force
        self.out = Path(recipe.out)
        self.markers = self.out / "stages"
        self.ran: list[str] = []
        self.upstream = ""  # the digest of the stages so far: a changed earlier stage reruns the later ones
        self.digest = ""  # the digest of the stage running now

    def stage(self, name: str, cfg: BaseModel, action: Callable[[Any], object]) -> None:
        """Run one stage unless its marker matches its settings and every earlier stage's."""
        settings = json.loads(cfg.model_dump_json())
        digest = _settings_hash({"settings": settings, "upstream": self.upstream})
        marker = self.markers / f"{name}.json"
        up_to_date = marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest
        if up_to_date and not self.force:
            self.console.print(f"[bold cyan]run[/] {name} is up to date ({getattr(cfg, 'out', '')})")
        else:
            self.console.rule(f"[bold]{self.recipe.name}: {name}")
            self.digest = digest
            action(cfg)
            write_json(marker, {"sha256": digest, "settings": settings})
            self.ran.append(name)
        self.upstream = digest

    # -- the stages -----------------------------------------------------------------------------------
    def prepare(self, cfg: Any) -> None:
        from pycodegen.data.prepare import prepare

        prepare(cfg, self.console)

    def train(self, cfg: Any) -> None:
        from pycodegen.evaluate.dev import dev_callbacks
        from pycodegen.train.loop import Trainer, train

        # A run of these very settings that was interrupted left checkpoints: continue it. Checkpoints of
        # other settings (the stage runs again because a setting changed) are not resumed but replaced.
        running = self.markers / "train.running"
        same = running.is_file() and running.read_text() == self.digest
        if Path(cfg.out).exists() and (self.force or not same):
            self.console.print(f"[bold cyan]run[/] train: settings changed, starting over in {cfg.out}")
            shutil.rmtree(cfg.out)
        running.write_text(self.digest)
        resume = cfg.model_copy(update={"resume": bool(Trainer(cfg).checkpoints())})
        train(resume, self.console, callbacks=dev_callbacks(cfg))
        running.unlink()

    def generate(self, cfg: Any) -> None:
        from pycodegen.generate.freeform import run_generate

        if not cfg.prompt and cfg.benchmark is None and cfg.problems is None:
            raise ConfigError(f"recipe {self.recipe.name!r}: generate needs prompts, a benchmark or problems")
        # A stage that runs again (its settings changed) replaces its own free-prompt output; benchmark
        # samples resume instead (generate refuses other settings, so nothing stale is kept).
        run_generate(cfg.model_copy(update={"overwrite": True}), self.console, echo=True)

    def evaluate(self, cfg: Any) -> None:
        from pycodegen.evaluate.score import run_evaluation

        run_evaluation(cfg, self.console)

    def run(self) -> list[str]:
        """Every stage the recipe has, in flow order; returns the names of those that ran."""
        recipe, out = self.recipe, self.out
        for name, capability in NOT_BUILT.items():
            if getattr(recipe, name) is not None:
                raise ConfigError(
                    f"recipe {recipe.name!r} has a {name!r} stage, but {capability} is not built yet"
                )
        self.markers.mkdir(parents=True, exist_ok=True)
        prepared = defaults(recipe.prepare, out=out / "data") if recipe.prepare is not None else None
        if prepared is not None:
            self.stage("prepare", prepared, self.prepare)
        trained: dict[str, Any] = {}
        if recipe.train is not None:
            data = {"data": prepared.out} if prepared is not None else {}
            train_cfg = defaults(recipe.train, out=out / "train", **data)
            self.stage("train", train_cfg, self.train)
            trained = {"model": str(Path(train_cfg.out) / "best")}
        if recipe.generate is not None:
            self.stage(
                "generate", defaults(recipe.generate, out=out / "samples.jsonl", **trained), self.generate
            )
        if recipe.evaluate is not None:
            model = trained if recipe.evaluate.samples is None else {}
            self.stage("evaluate", defaults(recipe.evaluate, out=out / "eval", **model), self.evaluate)
        if not self.ran:
            self.console.print(
                f"[bold cyan]run[/] {recipe.name}: every stage is up to date (use --force to rerun)"
            )
        return self.ran


def run_recipe(recipe: RecipeConfig, console: Console, force: bool = False) -> list[str]:
    """Run the stages of a recipe; returns the names of the stages that ran (not skipped)."""
    return RecipeRun(recipe, console, force).run()
