"""`pycodegen run`: execute a recipe's stages in order, resumably.

Each finished stage leaves OUT/stages/NAME.json with the hash of its settings; a rerun skips a stage
whose marker matches, so an interrupted recipe picks up at the stage that did not finish.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

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

    def needed(name: str, settings: dict) -> tuple[bool, str]:
        digest = _settings_hash({"settings": settings, "upstream": upstream})
        marker = markers / f"{name}.json"
        done = marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest
        return force or not done, digest

    def finish(name: str, digest: str, settings: dict) -> None:
        (markers / f"{name}.json").write_text(
            json.dumps({"sha256": digest, "settings": settings}, indent=2, default=str) + "\n"
        )
        ran.append(name)

    if recipe.prepare is not None:
        cfg = recipe.prepare
        if "out" not in cfg.model_fields_set:
            cfg = cfg.model_copy(update={"out": out / "data"})
        settings = json.loads(cfg.model_dump_json())
        todo, digest = needed("prepare", settings)
        if todo:
            from pycodegen.data.prepare import prepare

            console.rule(f"[bold]{recipe.name}: prepare")
            prepare(cfg, console)
            finish("prepare", digest, settings)
        else:
            console.print(f"[bold cyan]run[/] prepare is up to date ({cfg.out})")
        upstream = digest

    if recipe.train is not None:
        tr = recipe.train
        updates: dict = {}
        if "out" not in tr.model_fields_set:
            updates["out"] = out / "train"
        if "data" not in tr.model_fields_set and recipe.prepare is not None:
            updates["data"] = recipe.prepare.out if "out" in recipe.prepare.model_fields_set else out / "data"
        tr = tr.model_copy(update=updates)
        settings = json.loads(tr.model_dump_json())
        todo, digest = needed("train", settings)
        if todo:
            from pycodegen.train.loop import Trainer, train

            console.rule(f"[bold]{recipe.name}: train")
            # A run that was interrupted left checkpoints: continue it rather than start over.
            resume = bool(Trainer(tr).checkpoints()) and not force
            if force:
                import shutil

                shutil.rmtree(tr.out, ignore_errors=True)
            train(tr.model_copy(update={"resume": resume}), console)
            finish("train", digest, settings)
        else:
            console.print(f"[bold cyan]run[/] train is up to date ({tr.out})")
        upstream = digest

    if recipe.generate is not None:
        gen = recipe.generate
        if "out" not in gen.model_fields_set:
            gen = gen.model_copy(update={"out": out / "samples.jsonl"})
        settings = json.loads(gen.model_dump_json())
        todo, digest = needed("generate", settings)
        if todo:
            from pycodegen.generate.run import run_generate

            console.rule(f"[bold]{recipe.name}: generate")
            if not gen.prompt:
                raise ConfigError(f"recipe {recipe.name!r}: generate needs at least one prompt")
            run_generate(gen, console, echo=True)
            finish("generate", digest, settings)
        else:
            console.print(f"[bold cyan]run[/] generate is up to date ({gen.out})")
        upstream = digest

    if recipe.evaluate is not None:
        ev = recipe.evaluate
        if "out" not in ev.model_fields_set:
            ev = ev.model_copy(update={"out": out / "eval"})
        settings = json.loads(ev.model_dump_json())
        todo, digest = needed("evaluate", settings)
        if todo:
            from pycodegen.evaluate.run import run_evaluation

            console.rule(f"[bold]{recipe.name}: evaluate")
            run_evaluation(ev, console)
            finish("evaluate", digest, settings)
        else:
            console.print(f"[bold cyan]run[/] evaluate is up to date ({ev.out})")
        upstream = digest
    if not ran:
        console.print(f"[bold cyan]run[/] {recipe.name}: every stage is up to date (use --force to rerun)")
    return ran
