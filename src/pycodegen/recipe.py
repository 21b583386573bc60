"""`pycodegen run`: execute a recipe's stages in order, resumably, handing each stage's output directory
to the next (prepare.out → train.data; train.out/best → the model of generate and evaluate), for every row
of the recipe's table (`variants`: a base model as it is, full fine-tuning, LoRA...), then write report.md.

Each finished stage leaves OUT/stages/NAME.json with the hash of its settings and of its inputs' contents
(the source file or tree, the prepared data's manifest and files, the trained checkpoint's card and
weights): a rerun skips a stage whose marker matches and whose outputs exist, so an unchanged recipe does
no work and an interrupted recipe picks up at the stage that did not finish. Stages resume through their
own outputs: train from its last checkpoint, generate from the tasks it finished, evaluate from its
verdict log.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from rich.console import Console

from pycodegen.benchmarks import packaged_source
from pycodegen.config import (
    EvaluateConfig,
    GenerateConfig,
    PrepareConfig,
    RecipeConfig,
    RecipeVariant,
    TrainConfig,
    parse_config,
)
from pycodegen.errors import ConfigError
from pycodegen.jsonl import write_json
from pycodegen.zoo import file_sha256

NON_GENERATING = {"retrieval"}  # scored by MRR on its own validation split; it writes no code
WAITS_FOR_ENGINE = "is skipped: a {family} checkpoint ranks code, it does not write it (see its valid_mrr)"


def _sha256(payload: object) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def same_settings(recorded: Any, settings: dict[str, Any], chosen: dict[str, Any]) -> bool:
    """Whether a stage marker's full settings (as an earlier pycodegen wrote them, digest and all) are
    today's: every option either has the recorded value, or did not exist then and is at its default.

    >>> same_settings({"a": 1}, {"a": 1, "new": None}, {"a": 1})
    True
    >>> same_settings({"a": 1}, {"a": 1, "new": 5}, {"a": 1, "new": 5})
    False
    >>> same_settings({"a": 2}, {"a": 1}, {})
    False
    """
    if not isinstance(recorded, dict):
        return False
    return all(
        recorded[key] == value if key in recorded else key not in chosen for key, value in settings.items()
    )


def fingerprint(path: Path, exclude: Iterable[str] = ()) -> str:
    """What an input holds: a file's content hash; for a directory (a source tree, prepared data, a
    checkpoint), the content of its JSON files (manifest, card, configs) and every other file's relative
    path, size and modification time (reading every weight file on each rerun would cost more than the
    check saves). A missing path fingerprints as 'missing'.

    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.py").write_text("x = 1")
    >>> before = fingerprint(d); _ = (d / "a.py").write_text("x = 22"); before == fingerprint(d)
    False
    """
    if path.is_file():
        return file_sha256(path)
    if not path.is_dir():
        return "missing"
    skip = set(exclude)
    entries = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(files):
            file = Path(root) / name
            rel = str(file.relative_to(path))
            stat = file.stat()
            if name.endswith(".json") and stat.st_size < 1 << 20:
                entries.append((rel, hashlib.sha256(file.read_bytes()).hexdigest()))
            else:
                entries.append((rel, stat.st_size, stat.st_mtime_ns))
    return _sha256(entries)


def defaults(cfg: BaseModel, **values: Any) -> Any:
    """`cfg` with `values` for the fields the recipe left unset (what a stage inherits from another)."""
    return cfg.model_copy(update={k: v for k, v in values.items() if k not in cfg.model_fields_set})


def _merged(cls: type[BaseModel], base: BaseModel | None, override: dict[str, Any], where: str) -> Any:
    """A stage's settings for one row: the recipe's settings with the row's overrides (unset fields stay
    unset, so that `defaults` can still fill them in)."""
    data = (base.model_dump(exclude_unset=True) if base is not None else {}) | override
    return parse_config(cls, data, where=where)


def peak_rss_reset() -> bool:
    """Reset this process's peak-RSS mark (Linux: /proc/self/clear_refs), so the next reading is the peak
    of one stage alone; False where that is not possible (the reading is then the process's peak)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The peak resident memory of this process since the last reset, MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class Row:
    """One row of the recipe's table, and where its stages write."""

    name: str
    model: str | None = None  # the model evaluated: a zoo name/dir as given, or the trained checkpoint
    train: Path | None = None
    data: Path | None = None  # the prepared data it was trained on
    source: str | None = None  # the source that data was prepared from
    samples: Path | None = None
    evaluations: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "train": str(self.train) if self.train else None,
            "samples": str(self.samples) if self.samples else None,
            "evaluations": {k: str(v) for k, v in self.evaluations.items()},
            "notes": self.notes,
        }


class RecipeRun:
    """One execution of a recipe: for each row, its stages in order, each skipped when up to date."""

    def __init__(
        self,
        recipe: RecipeConfig,
        console: Console,
        force: bool = False,
        callbacks: Sequence[Any] = (),
    ) -> None:
        self.recipe, self.console, self.force = recipe, console, force
        self.callbacks = list(callbacks)  # extra training callbacks (tests interrupt a run with one)
        self.out = Path(recipe.out)
        self.markers = self.out / "stages"
        self.ran: list[str] = []
        self.digest = ""  # the digest of the stage running now

    def stage(
        self,
        name: str,
        cfg: BaseModel,
        action: Callable[[Any], object],
        inputs: dict[str, Path | str] | None = None,
        outputs: Sequence[Path] = (),
        exclude: Iterable[str] = (),
    ) -> bool:
        """Run one stage unless its marker matches its settings and inputs and its outputs exist;
        returns whether it ran."""
        settings = json.loads(cfg.model_dump_json())
        # The digest covers the settings that differ from their defaults: a pycodegen upgrade that adds
        # an option (with a default that keeps today's behaviour) leaves finished stages up to date.
        chosen = json.loads(cfg.model_dump_json(exclude_defaults=True))
        seen = {
            key: fingerprint(value, exclude) if isinstance(value, Path) else value
            for key, value in (inputs or {}).items()
        }
        digest = _sha256({"settings": chosen, "inputs": seen})
        marker = self.markers / f"{name}.json"
        recorded = json.loads(marker.read_text()) if marker.is_file() else {}
        same = recorded.get("inputs") == seen and same_settings(recorded.get("settings"), settings, chosen)
        up_to_date = (
            bool(recorded)
            and (recorded.get("sha256") == digest or same)
            and all(Path(o).exists() for o in outputs)
        )
        if up_to_date and not self.force:
            self.console.print(f"[bold cyan]run[/] {name} is up to date ({getattr(cfg, 'out', '')})")
            return False
        self.console.rule(f"[bold]{self.recipe.name}: {name}")
        self.digest = digest
        started = time.perf_counter()
        action(cfg)
        seconds = round(time.perf_counter() - started, 2)
        write_json(marker, {"sha256": digest, "settings": settings, "inputs": seen, "seconds": seconds})
        self.ran.append(name)
        return True

    # -- the stages -----------------------------------------------------------------------------------
    def prepare(self, cfg: Any) -> None:
        from pycodegen.data.prepare import prepare

        prepare(cfg, self.console)

    def train(self, cfg: Any) -> None:
        from pycodegen.evaluate.dev import dev_callbacks
        from pycodegen.train.loop import Trainer, train

        # A run of these very settings that was interrupted left checkpoints: continue it. Checkpoints of
        # other settings (the stage runs again because a setting changed) are not resumed but replaced.
        out = Path(cfg.out)
        running = out.parent / f".{out.name}.running"
        same = running.is_file() and running.read_text() == self.digest
        if out.exists() and (self.force or not same):
            self.console.print(f"[bold cyan]run[/] train: settings changed, starting over in {cfg.out}")
            shutil.rmtree(out)
        running.parent.mkdir(parents=True, exist_ok=True)
        running.write_text(self.digest)
        resume = cfg.model_copy(update={"resume": bool(Trainer(cfg).checkpoints())})
        reset = peak_rss_reset()
        started = time.perf_counter()
        summary = train(resume, self.console, callbacks=[*dev_callbacks(cfg), *self.callbacks])
        cost = {
            "stage_wall_s": round(time.perf_counter() - started, 2),
            "peak_rss_mb": peak_rss_mb(),
            "peak_rss_scope": "this stage" if reset else "the process so far",
            "trainable_parameters": summary.get("parameters", {}).get("trainable"),
            "total_parameters": summary.get("parameters", {}).get("total"),
        }
        if "torch" in sys.modules:
            import torch

            if torch.cuda.is_available():
                cost["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        write_json(out / "cost.json", cost)
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

    def report(self, rows: list[Row]) -> None:
        from pycodegen.evaluate.report import recipe_report

        write_json(self.out / "rows.json", {"recipe": self.recipe.name, "rows": [r.to_dict() for r in rows]})
        text = recipe_report(self.recipe, [r.to_dict() for r in rows], self.out)
        text += "".join(f"\n{section}" for section in analyses(self.recipe.analyses, rows))
        text += "\n" + self.stage_times()
        (self.out / "report.md").write_text(text, encoding="utf-8")

    def stage_times(self) -> str:
        """A markdown table of how long each finished stage took when it last ran (from its marker)."""
        lines = ["## Time it took here", "", "| stage | seconds |", "|---|---|"]
        total = 0.0
        for marker in sorted(self.markers.glob("*.json"), key=lambda m: m.stat().st_mtime):
            seconds = json.loads(marker.read_text()).get("seconds")
            if marker.stem != "report" and isinstance(seconds, int | float):
                lines.append(f"| {marker.stem} | {seconds:.1f} |")
                total += seconds
        lines += [
            f"| total | {total:.1f} |",
            "",
            f"On {os.cpu_count()} CPU cores; each stage when it last ran.",
        ]
        return "\n".join(lines) + "\n"

    # -- the rows -------------------------------------------------------------------------------------
    def rows(self) -> dict[str, RecipeVariant]:
        """The recipe's rows; without `variants`, one row that is the recipe's own stages."""
        return self.recipe.variants or {"": RecipeVariant()}

    def run_row(self, name: str, variant: RecipeVariant, prepared: dict[str, PrepareConfig]) -> Row:
        """prepare (shared unless the row changes it) → train → generate → evaluations, for one row."""
        recipe, out = self.recipe, self.out
        suffix = f"-{name}" if name else ""
        row = Row(name or ("trained" if recipe.train is not None else "model"), model=variant.model)
        data: dict[str, Any] = {}
        if variant.model is None and (recipe.prepare is not None or variant.prepare):
            key = "prepare" + (suffix if variant.prepare else "")
            if key not in prepared:
                cfg = _merged(PrepareConfig, recipe.prepare, variant.prepare, f"variants.{name}.prepare")
                cfg = defaults(cfg, out=out / ("data" + (suffix if variant.prepare else "")))
                added = [str(packaged_source(s)) for s in cfg.add_source]
                cfg = cfg.model_copy(update={"source": packaged_source(cfg.source), "add_source": added})
                source = Path(cfg.source) if cfg.source else Path(os.__file__).parent  # default: stdlib
                inputs = {"source": source} | {f"add_source {i}": Path(s) for i, s in enumerate(added)}
                self.stage(
                    key,
                    cfg,
                    self.prepare,
                    inputs,
                    [Path(cfg.out) / "manifest.json"],
                    exclude=cfg.exclude,
                )
                prepared[key] = cfg
            data = {"data": prepared[key].out}
            row.data, row.source = Path(prepared[key].out), prepared[key].source
        if variant.model is None and (recipe.train is not None or variant.train):
            cfg = _merged(TrainConfig, recipe.train, variant.train, f"variants.{name}.train")
            cfg = defaults(cfg, out=out / f"train{suffix}", **data)
            self.stage(
                f"train{suffix}",
                cfg,
                self.train,
                {"data": Path(cfg.data)},
                [Path(cfg.out) / "summary.json", Path(cfg.out) / "best"],
            )
            row.train, row.model = Path(cfg.out), str(Path(cfg.out) / "best")
        model = {"model": row.model} if row.model else {}
        waits = self.waits_for_engine(row.model)
        if recipe.generate is not None:
            cfg = _merged(GenerateConfig, recipe.generate, variant.generate, f"variants.{name}.generate")
            cfg = defaults(cfg, out=out / f"samples{suffix}.jsonl", **model)
            if variant.generate and not cfg.prompt and cfg.benchmark is None and cfg.problems is None:
                pass  # this row overrides the prompts away (`generate: {prompt: []}`): nothing to show
            elif waits:
                row.notes.append(f"generate {waits}")
            else:
                self.stage(f"generate{suffix}", cfg, self.generate, self.model_input(cfg.model), [cfg.out])
                row.samples = Path(cfg.out)
        wanted = variant.evaluations
        for ev_name, base in recipe.evaluation_configs().items():
            if wanted is not None and ev_name not in wanted:
                continue
            tail = "" if ev_name == "evaluate" else f"-{ev_name}"
            cfg = _merged(EvaluateConfig, base, variant.evaluate, f"variants.{name}.evaluate")
            ev_model = model if cfg.samples is None else {}
            cfg = defaults(cfg, out=out / f"eval{suffix}{tail}", **ev_model)
            if waits and cfg.samples is None:
                row.notes.append(f"{ev_name} {waits}")
                continue
            inputs = {"samples": cfg.samples} if cfg.samples else self.model_input(cfg.model)
            results = [Path(cfg.out) / "results.json"]
            self.stage(f"evaluate{suffix}{tail}", cfg, self.evaluate, inputs, results)
            row.evaluations[ev_name] = Path(cfg.out)
        return row

    @staticmethod
    def model_input(model: str | None) -> dict[str, Path | str]:
        """A model as a stage input: a local directory or file by its fingerprint, a zoo name as itself (a
        shipped fine-tune by its directory, like the checkpoint it is)."""
        from pycodegen.zoo import model_path

        if model is None:
            return {}
        path = model_path(model)
        return {"model": path} if path.exists() else {"model": model}

    @staticmethod
    def waits_for_engine(model: str | None) -> str | None:
        """Why a model cannot be generated from (a retrieval checkpoint), or None when the engine loads it."""
        from pycodegen.zoo import checkpoint_card

        if model is None or not Path(model).is_dir():
            return None
        card = checkpoint_card(Path(model)) or {}
        family = card.get("family")
        return WAITS_FOR_ENGINE.format(family=family) if family in NON_GENERATING else None

    def run(self) -> list[str]:
        """Every row's stages in flow order, then the report; returns the names of the stages that ran."""
        recipe = self.recipe
        serve_cfg = self.serve_config(None)  # a bad serve: section fails before any work, not after
        self.markers.mkdir(parents=True, exist_ok=True)
        prepared: dict[str, PrepareConfig] = {}
        rows = [self.run_row(name, variant, prepared) for name, variant in self.rows().items()]
        if any(r.evaluations or r.train for r in rows):
            inputs: dict[str, Path | str] = {}
            for r in rows:
                inputs |= {f"{r.name}/{k}": v / "results.json" for k, v in r.evaluations.items()}
                if r.train is not None:
                    inputs[f"{r.name}/train"] = r.train / "metrics.jsonl"
            report_cfg = recipe.model_copy(update={"scales": {}})  # the settings that shape the report
            self.stage("report", report_cfg, lambda _: self.report(rows), inputs, [self.out / "report.md"])
        if not [n for n in self.ran if n != "report"]:
            self.console.print(
                f"[bold cyan]run[/] {recipe.name}: every stage is up to date (use --force to rerun)"
            )
        self.summarise(rows)
        if serve_cfg is not None:
            from pycodegen.serve.app import serve

            serve(self.serve_config(self.last_trained(rows)), self.console)  # until Ctrl-C / SIGTERM
        return self.ran

    def serve_config(self, trained: str | None) -> Any:
        """The recipe's `serve:` section as a ServeConfig; its model defaults to the last trained one."""
        from pycodegen.config import ServeConfig

        if self.recipe.serve is None:
            return None
        settings = dict(self.recipe.serve)
        if trained is not None:
            settings.setdefault("model", trained)
        try:
            return ServeConfig(**settings)
        except ValidationError as exc:
            raise ConfigError(f"recipe {self.recipe.name!r}: serve: {exc.errors()[0]['msg']}") from None

    def last_trained(self, rows: list[Row]) -> str | None:
        trained = [r for r in rows if r.train is not None and r.model and not self.waits_for_engine(r.model)]
        return trained[-1].model if trained else None

    def summarise(self, rows: list[Row]) -> None:
        """The end of a run on the console: the table and paired comparisons of report.md, a sample
        completion of the last trained row, and the command that uses its model."""
        report = self.out / "report.md"
        if report.is_file():
            text = report.read_text(encoding="utf-8")
            shown = [line for line in text.splitlines() if line.startswith(("|", "- "))]
            self.console.print("\n".join(shown), markup=False, highlight=False, soft_wrap=True)
        trained = [r for r in rows if r.train is not None and r.model and not self.waits_for_engine(r.model)]
        if not trained:
            return
        row = trained[-1]
        if row.samples is not None and row.samples.is_file():
            from pycodegen.jsonl import read_jsonl

            first = next(iter(read_jsonl(row.samples)), None)
            if first is not None:
                self.console.rule(f"{row.name}: {first.get('prompt', first.get('task_id'))}")
                self.console.print(first["completion"], markup=False, highlight=False)
        self.console.print(
            f"[bold cyan]run[/] report: {report}\n"
            f"use the trained model: pycodegen generate --model {row.model} -p "
            '"Write a Python function that reverses a string."\n'
            f"serve it: pycodegen serve {row.model}",
            highlight=False,
            soft_wrap=True,
        )


# -- the report's analyses ------------------------------------------------------------------------------
def _first_samples(row: Row) -> list[dict[str, Any]]:
    """The row's generated texts: its free-prompt samples, else its first evaluation's samples."""
    from pycodegen.jsonl import read_jsonl

    candidates = [row.samples] if row.samples else []
    candidates += [d / "samples.jsonl" for d in row.evaluations.values()]
    for path in candidates:
        if path is not None and path.is_file():
            return list(read_jsonl(path))
    return []


def training_files(row: Row) -> dict[str, str]:
    """{path: text} of the source files behind a row's training split (rows that carry a `path`)."""
    from pycodegen.data.dataset_dir import read_split

    if row.data is None:
        return {}
    texts = {}
    root = Path(row.source) if row.source else Path(os.__file__).parent
    for item in read_split(row.data, "train"):
        name = item.get("path")
        if not name or name in texts:
            continue
        path = Path(name) if Path(name).is_absolute() else root / name
        if path.is_file():
            texts[name] = path.read_text(encoding="utf-8", errors="replace")
    return texts


def analyses(wanted: Sequence[str], rows: list[Row]) -> list[str]:
    """The markdown sections of the analyses a recipe asks for, over the rows that have what they need."""
    from pycodegen import metrics
    from pycodegen.data.dataset_dir import read_split

    sections = []
    if "novelty" in wanted:
        lines = [
            "## Novelty of generated bodies",
            "",
            "| row | samples | novel word 4-grams | verbatim copies |",
            "|---|---|---|---|",
        ]
        for row in rows:
            samples = _first_samples(row)
            if not samples or row.data is None:
                continue
            bodies = [str(r.get("target", "")) for r in read_split(row.data, "train")]
            result = metrics.ngram_novelty([s["completion"] for s in samples], bodies, n=4)
            lines.append(
                f"| {row.name} | {len(samples)} | {result['novel_ngram_share']:.1%} | "
                f"{result['verbatim_share']:.1%} |"
            )
        lines += [
            "",
            "Share of the generated 4-grams never seen in a training body, and of samples found "
            "verbatim in the training bodies (Perez et al. 2021's check that the model does not copy).",
        ]
        sections.append("\n".join(lines) + "\n")
    if "memorisation" in wanted:
        lines = [
            "## Memorisation",
            "",
            "| row | prompt | longest copied (chars) | training file | copied |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            files = training_files(row)
            if not files:
                continue
            names = list(files)
            for sample in _first_samples(row):
                text = str(sample.get("prompt", "")) + sample["completion"]
                found = metrics.longest_common_substring(text, list(files.values()))
                where = names[found["source"]] if found["source"] is not None else ""
                excerpt = found["match"][:60].replace("\n", "⏎").replace("|", "\\|")
                prompt = sample.get("prompt", "")
                lines.append(f"| {row.name} | `{prompt}` | {found['length']} | {where} | `{excerpt}` |")
        lines += ["", "The longest piece of prompt + completion found verbatim in one training file."]
        sections.append("\n".join(lines) + "\n")
    return sections


def with_run_options(
    recipe: RecipeConfig, out: Path | None = None, source: str | None = None, budget: str | None = None
) -> RecipeConfig:
    """The recipe with `pycodegen run`'s overrides: another run directory, another prepare source (e.g.
    the user's own repository), another training budget."""
    update: dict[str, Any] = {}
    if out is not None:
        update["out"] = out
    if source is not None:
        if recipe.prepare is None:
            raise ConfigError(f"recipe {recipe.name!r} has no prepare stage: --source has nothing to change")
        update["prepare"] = recipe.prepare.model_copy(update={"source": source})
    if budget is not None:
        if recipe.train is None:
            raise ConfigError(f"recipe {recipe.name!r} has no train stage: --budget has nothing to change")
        update["train"] = parse_config(
            TrainConfig, recipe.train.model_dump(exclude_unset=True) | {"budget": budget}, where="--budget"
        )
    return recipe.model_copy(update=update)


def run_recipe(
    recipe: RecipeConfig, console: Console, force: bool = False, callbacks: Sequence[Any] = ()
) -> list[str]:
    """Run the stages of a recipe; returns the names of the stages that ran (not skipped)."""
    return RecipeRun(recipe, console, force, callbacks).run()
