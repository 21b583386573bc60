"""`pycodegen run`: execute a recipe's stages in order, resumably.

Each finished stage leaves OUT/stages/NAME.json with the hash of its settings; a rerun skips a stage
whose marker matches, so an interrupted recipe picks up at the stage that did not finish.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from pycodegen.config import RecipeConfig
from pycodegen.errors import ConfigError

NOT_BUILT = {"serve": "serving"}


def _settings_hash(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def run_recipe(recipe: RecipeConfig, console: Console, force: bool = False) -> list[str]:
    """Run the stages of a recipe; returns the names of the stages that ran (not skipped)."""
    for stage, capability in NOT_BUILT.items():
        if getattr(recipe, stage) is not None:
            raise ConfigError(
                f"recipe {recipe.name!r} has a {stage!r} stage, but {capability} is not built yet"
            )
    out = Path(recipe.out)
    markers = out / "stages"
    markers.mkdir(parents=True, exist_ok=True)
    ran: list[str] = []
    upstream = ""  # a changed earlier stage invalidates the later ones

    def stage(name: str, cfg: Any, action: Callable[[Any], object]) -> None:
        """Run one stage unless its marker matches its settings and every earlier stage's."""
        nonlocal upstream
        settings = json.loads(cfg.model_dump_json())
        digest = _settings_hash({"settings": settings, "upstream": upstream})
        marker = markers / f"{name}.json"
        if not force and marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest:
            console.print(f"[bold cyan]run[/] {name} is up to date ({cfg.out})")
        else:
            console.rule(f"[bold]{recipe.name}: {name}")
            action(cfg)
            marker.write_text(
                json.dumps({"sha256": digest, "settings": settings}, indent=2, default=str) + "\n"
            )
            ran.append(name)
        upstream = digest

    def defaults(cfg: Any, **values: Any) -> Any:
        """`cfg` with `values` for the fields the recipe left unset."""
        return cfg.model_copy(update={k: v for k, v in values.items() if k not in cfg.model_fields_set})

    def run_prepare(cfg: Any) -> None:
        from pycodegen.data.prepare import prepare

        prepare(cfg, console)

    def run_train(cfg: Any) -> None:
        import shutil

        from pycodegen.evaluate.dev import dev_callbacks
        from pycodegen.train.loop import Trainer, train

        if force:
            shutil.rmtree(cfg.out, ignore_errors=True)
        # A run that was interrupted left checkpoints: continue it rather than start over.
        resume = cfg.model_copy(update={"resume": bool(Trainer(cfg).checkpoints())})
        train(resume, console, callbacks=dev_callbacks(cfg))

    def run_generate(cfg: Any) -> None:
        from pycodegen.generate.freeform import run_generate as generate

        if not cfg.prompt and cfg.benchmark is None and cfg.problems is None:
            raise ConfigError(f"recipe {recipe.name!r}: generate needs prompts, a benchmark or problems")
        # A stage that runs again (its settings changed) replaces its own free-prompt output; benchmark
        # samples resume instead (generate refuses other settings, so nothing stale is kept).
        generate(cfg.model_copy(update={"overwrite": True}), console, echo=True)

    def run_evaluate(cfg: Any) -> None:
        from pycodegen.evaluate.score import run_evaluation

        run_evaluation(cfg, console)

    # Stages hand off through their output directories: prepare.out → train.data, and the trained
    # checkpoint (train.out/best) is the model of a later generate or evaluate stage that names none.
    prepared = defaults(recipe.prepare, out=out / "data") if recipe.prepare is not None else None
    if prepared is not None:
        stage("prepare", prepared, run_prepare)
    trained: dict[str, Any] = {}
    if recipe.train is not None:
        data = {"data": prepared.out} if prepared is not None else {}
        train_cfg = defaults(recipe.train, out=out / "train", **data)
        stage("train", train_cfg, run_train)
        trained = {"model": str(Path(train_cfg.out) / "best")}
    if recipe.generate is not None:
        stage("generate", defaults(recipe.generate, out=out / "samples.jsonl", **trained), run_generate)
    if recipe.evaluate is not None:
        evaluate_cfg = recipe.evaluate
        model = trained if evaluate_cfg.samples is None else {}
        stage("evaluate", defaults(evaluate_cfg, out=out / "eval", **model), run_evaluate)
    if not ran:
        console.print(f"[bold cyan]run[/] {recipe.name}: every stage is up to date (use --force to rerun)")
    return ran
