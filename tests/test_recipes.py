"""Recipes: every recipe validates at every scale, runs end to end at smoke scale, does no work when run
again unchanged, reruns a stage whose input files changed, and resumes an interrupted stage."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from pycodegen.config import RecipeConfig, load_recipe, parse_config
from pycodegen.errors import ConfigError
from pycodegen.recipe import RecipeRun, run_recipe
from pycodegen.train.callbacks import TrainCallback

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
QUIET = Console(quiet=True)


def _recorded(console_file: Path) -> Console:
    return Console(file=console_file.open("w"), width=200, force_terminal=False)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
@pytest.mark.parametrize("scale", ["smoke", "tiny", "paper"])
def test_every_recipe_validates_at_every_scale(recipe: Path, scale: str) -> None:
    """Each recipe defines smoke and paper (tiny is the recipe as written) and each validates."""
    loaded = load_recipe(recipe, scale)
    assert isinstance(loaded, RecipeConfig)
    assert set(loaded.scales) >= {"smoke", "paper"}, f"{recipe.name} lacks a smoke or paper scale"


def test_a_scale_the_recipe_lacks_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: t\nscales:\n  smoke: {out: x}\n")
    with pytest.raises(ConfigError, match=r"no 'paper' scale \(it has tiny, smoke\)"):
        load_recipe(path, "paper")
    path.write_text("name: t\nscales:\n  paper:\n    train: {lr: -1}\n")
    with pytest.raises(ConfigError, match=r"scale paper"):
        load_recipe(path)  # a broken scale is an error at any scale


def test_a_row_override_is_validated_on_load(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("name: t\ntrain: {family: char-rnn}\nvariants:\n  a: {train: {lora_rr: 8}}\n")
    with pytest.raises(ConfigError, match=r"variants.a.train: unknown key 'lora_rr'"):
        load_recipe(path)


# -- a small recipe made in the test -------------------------------------------------------------------
def char_recipe(tmp_path: Path, source: Path, **train: Any) -> RecipeConfig:
    """prepare (char-stream over `source`) → train (a tiny char-RNN)."""
    return parse_config(
        RecipeConfig,
        {
            "name": "t",
            "out": str(tmp_path / "run"),
            "prepare": {
                "source": str(source),
                "task": "char-stream",
                "seq_len": 32,
                "workers": 1,
                "valid_fraction": 0.2,
                "test_fraction": 0.0,
                "dedup": False,
            },
            "train": {
                "family": "char-rnn",
                "max_steps": 4,
                "batch_size": 4,
                "save_every": 2,
                "eval_every": 2,
                "log_every": 1,
                "model_args": {"n_embd": 16, "n_layer": 1},
                **train,
            },
        },
    )


@pytest.fixture
def small_tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(6):
        (root / f"m{i}.py").write_text(
            f'def f{i}(x):\n    """Add {i}."""\n    y = x + {i}\n    return y * 2 - {i}\n' * 3
        )
    return root


def test_rerun_does_no_work_and_a_changed_input_file_reruns(tmp_path: Path, small_tree: Path) -> None:
    recipe = char_recipe(tmp_path, small_tree)
    assert run_recipe(recipe, QUIET) == ["prepare", "train", "report"]
    assert run_recipe(recipe, QUIET) == []  # unchanged: nothing runs, not even the report
    # the same settings over changed source files: prepare and everything after it run again
    (small_tree / "m0.py").write_text('def g(x):\n    """Other."""\n    return x - 1\n' * 4)
    assert run_recipe(recipe, QUIET) == ["prepare", "train", "report"]
    # a deleted output is rebuilt even though the marker matches
    (tmp_path / "run" / "report.md").unlink()
    assert run_recipe(recipe, QUIET) == ["report"]


def test_markers_of_an_older_pycodegen_stay_up_to_date(tmp_path: Path, small_tree: Path) -> None:
    """An upgrade that adds an option (at its default) must not redo finished stages: a marker written
    before the option existed (its settings lack it, its digest differs) still matches; a recorded
    setting that differs from today's does not."""
    recipe = char_recipe(tmp_path, small_tree)
    assert run_recipe(recipe, QUIET) == ["prepare", "train", "report"]
    marker = tmp_path / "run" / "stages" / "train.json"
    recorded = json.loads(marker.read_text())
    older = recorded | {"sha256": "0" * 64}
    older["settings"] = {k: v for k, v in recorded["settings"].items() if k != "drop_long"}
    marker.write_text(json.dumps(older))
    assert run_recipe(recipe, QUIET) == []
    older["settings"]["clip"] = 123.0  # a setting the older run had otherwise: that stage is stale
    marker.write_text(json.dumps(older))
    assert run_recipe(recipe, QUIET) == ["train", "report"]


class InterruptAt(TrainCallback):
    """Ctrl-C as the trainer sees it (its own flag, set by its SIGINT handler) after `step` steps."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, trainer: Any, row: dict[str, Any]) -> None:
        if row.get("step") == self.step and "loss" in row:
            trainer.interrupted = True


def test_an_interrupted_train_stage_resumes(tmp_path: Path, small_tree: Path) -> None:
    recipe = char_recipe(tmp_path, small_tree)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, QUIET, callbacks=[InterruptAt(2)])
    train = tmp_path / "run" / "train"
    assert (train / "checkpoint-2").is_dir() and not (train / "summary.json").exists()
    log = tmp_path / "log.txt"
    ran = RecipeRun(recipe, _recorded(log)).run()
    assert ran == ["train", "report"]  # prepare had finished: only the interrupted stage and after
    text = log.read_text()
    assert "starting over" not in text
    summary = json.loads((train / "summary.json").read_text())
    assert summary["steps"] == 4
    steps = [json.loads(x)["step"] for x in (train / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == sorted(s for s in steps if s)  # one run, continued, not restarted
    assert steps.count(1) == 1


def _canonical_samples(tmp_path: Path, count: int) -> Path:
    from pycodegen.benchmarks import load_problems

    _, problems, _ = load_problems("humaneval")
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n"
            for p in problems[:count]
        )
    )
    return samples


def test_an_interrupted_evaluate_stage_resumes_from_its_verdicts(tmp_path: Path) -> None:
    samples = _canonical_samples(tmp_path, 3)
    recipe = parse_config(
        RecipeConfig,
        {
            "name": "t",
            "out": str(tmp_path / "run"),
            "evaluate": {
                "samples": str(samples),
                "benchmark": "humaneval",
                "limit": 3,
                "timeout": 5,
                "workers": 1,
                "examples": False,
            },
        },
    )
    assert run_recipe(recipe, QUIET) == ["evaluate", "report"]
    # interrupted after one verdict: the marker was never written, the verdict log holds one row
    run = tmp_path / "run"
    (run / "stages" / "evaluate.json").unlink()
    verdicts = run / "eval" / "verdicts.jsonl"
    verdicts.write_text(verdicts.read_text().splitlines()[0] + "\n")
    log = tmp_path / "log.txt"
    assert RecipeRun(recipe, _recorded(log)).run()[0] == "evaluate"  # (the report only if results changed)
    assert "resuming tests: 1 verdict kept" in log.read_text()
    assert json.loads((run / "eval" / "results.json").read_text())["metrics"]["pass@1"] == 1.0


def test_rows_get_their_own_directories_and_a_paired_comparison(tmp_path: Path) -> None:
    """Two rows over samples files (one right, one wrong on a problem): report.md has both rows and the
    paired sentence; `pycodegen report` on the recipe directory finds the same runs."""
    from pycodegen.evaluate.report import expand_runs, full_report

    good = _canonical_samples(tmp_path, 3)
    bad = tmp_path / "bad.jsonl"
    rows = good.read_text().splitlines()
    bad.write_text(
        "\n".join([rows[0].replace('"completion": "', '"completion": "    return None\\n'), *rows[1:]])
    )
    recipe = parse_config(
        RecipeConfig,
        {
            "name": "pair",
            "out": str(tmp_path / "run"),
            "evaluate": {"benchmark": "humaneval", "limit": 3, "timeout": 5, "workers": 1, "examples": False},
            "variants": {
                "before": {"evaluate": {"samples": str(bad)}},
                "after": {"evaluate": {"samples": str(good)}},
            },
            "published": {"after": {"pass@1": 0.5}},
        },
    )
    assert run_recipe(recipe, QUIET) == ["evaluate-before", "evaluate-after", "report"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "| before |" in report and "| after |" in report and "| published: after |" in report
    assert "after vs before, 3 problems: 1 win, 0 losses, 2 ties" in report
    assert "inside the noise" in report
    assert expand_runs([tmp_path / "run"]) == [
        tmp_path / "run" / "eval-before",
        tmp_path / "run" / "eval-after",
    ]
    table = full_report([tmp_path / "run"])  # one row per run: recipe, row, model, mode, metrics
    assert "| pair | before | unknown (samples without samples.meta.json) | as is | 0.6667 |" in table
    assert "| pair | after | unknown (samples without samples.meta.json) | as is | 1 |" in table


# -- the shipped recipes at smoke scale ----------------------------------------------------------------
EMBEDDED = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_embedded(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-layer Llama with the embedded model's tokenizer (and chat template): what the default suite
    runs the recipes with in place of the 135M model, so each recipe takes seconds, not minutes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pycodegen.zoo import load_tokenizer

    tokenizer = load_tokenizer(EMBEDDED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    directory = tmp_path_factory.mktemp("tiny-embedded")
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


def _swap(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return new if value == old else value


def run_shipped(
    name: str, tmp_path: Path, model: str | None, chdir: pytest.MonkeyPatch
) -> tuple[RecipeRun, str]:
    """A shipped recipe at smoke scale from the repository root (its ../shared/data paths), into tmp_path;
    `model` replaces the embedded model wherever the recipe names it."""
    chdir.chdir(REPO)
    recipe = load_recipe(REPO / "recipes" / f"{name}.yaml", "smoke")
    data = recipe.model_dump(exclude_unset=True, mode="json") | {"out": str(tmp_path / name)}
    recipe = parse_config(RecipeConfig, _swap(data, EMBEDDED, model) if model else data)
    log = tmp_path / f"{name}.log"
    runner = RecipeRun(recipe, _recorded(log))
    runner.run()
    assert RecipeRun(recipe, QUIET).run() == [], "a rerun of the unchanged recipe did work"
    return runner, log.read_text()


def quickstart_checks(runner: RecipeRun, log: str, out: Path) -> None:
    assert runner.ran == [
        "evaluate-base",
        "prepare",
        "train-lora",
        "generate-lora",
        "evaluate-lora",
        "report",
    ]
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| lora |" in report
    assert "lora vs base, 2 problems:" in report
    assert "use the trained model: pycodegen generate --model" in log
    assert "## Time it took here" in report and "| train-lora |" in report
    base = json.loads((out / "eval-base" / "results.json").read_text())["run_card"]
    lora = json.loads((out / "eval-lora" / "results.json").read_text())["run_card"]
    assert base["prompt_mode"] == lora["prompt_mode"] == "chat"  # the same prompts before and after
    assert base["problems"]["task_ids_sha256"] == lora["problems"]["task_ids_sha256"]
    if importlib.util.find_spec("matplotlib"):
        assert (out / "plots" / "loss.png").stat().st_size > 1000 and "plots/loss.png" in report
    else:  # the report says why there are no plots
        assert "plots skipped: matplotlib is not installed" in report


def test_quickstart_smoke_end_to_end(
    tmp_path: Path, tiny_embedded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart at smoke scale (a tiny model in the embedded one's place): base and LoRA rows scored
    on the same problems in the same prompt format, the before/after table with a paired comparison, the
    loss curve, a sample and the command; a rerun does no work."""
    runner, log = run_shipped("quickstart", tmp_path, tiny_embedded, monkeypatch)
    quickstart_checks(runner, log, tmp_path / "quickstart")


@pytest.mark.slow
def test_quickstart_smoke_with_the_embedded_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, log = run_shipped("quickstart", tmp_path, None, monkeypatch)
    quickstart_checks(runner, log, tmp_path / "quickstart")


def test_autocoder_smoke_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _ = run_shipped("autocoder-completion", tmp_path, None, monkeypatch)
    assert runner.ran == ["prepare", "train", "generate", "report"]
    report = (tmp_path / "autocoder-completion" / "report.md").read_text()
    assert "valid_perplexity" in report
    assert "## Memorisation" in report and "`def factorial(m)`" in report and "`def sum`" in report
    manifest = json.loads((tmp_path / "autocoder-completion" / "data" / "manifest.json").read_text())
    assert manifest["task"] == "lm-windows" and manifest["options"]["window"] == 256


def test_hust_smoke_end_to_end(tmp_path: Path, tiny_embedded: str, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _ = run_shipped("hust-lora-vs-full", tmp_path, tiny_embedded, monkeypatch)
    assert [n for n in runner.ran if n.startswith("train")] == ["train-lora", "train-full"]
    report = (tmp_path / "hust-lora-vs-full" / "report.md").read_text()
    for row in ("base", "lora", "full"):
        assert f"| {row} |" in report
    assert "mbpp bleu" in report and "humaneval pass@1" in report and "trainable params" in report
    assert "lora vs base" in report and "full vs base" in report
    cost = json.loads((tmp_path / "hust-lora-vs-full" / "train-lora" / "cost.json").read_text())
    full = json.loads((tmp_path / "hust-lora-vs-full" / "train-full" / "cost.json").read_text())
    assert cost["trainable_parameters"] < full["trainable_parameters"] == full["total_parameters"]


def test_stanford_smoke_end_to_end(
    tmp_path: Path, tiny_embedded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, _ = run_shipped("stanford-docstring-to-body", tmp_path, tiny_embedded, monkeypatch)
    assert {"train-decoder", "train-char-rnn", "train-nbow", "train-bigru", "evaluate-decoder"} <= set(
        runner.ran
    )
    report = (tmp_path / "stanford-docstring-to-body" / "report.md").read_text()
    assert "valid_mrr" in report and "dev_bleu" in report and "## Novelty" in report
    assert "evaluate-char-rnn" in runner.ran  # every generating family goes through the engine


def test_nazarbayev_smoke_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runner, _ = run_shipped("nazarbayev-seq2seq", tmp_path, None, monkeypatch)
    assert runner.ran[:2] == ["prepare", "train"] and runner.ran[-1] == "report"
    assert any(n.startswith("evaluate") for n in runner.ran)  # the seq2seq checkpoint through the engine
    report = (tmp_path / "nazarbayev-seq2seq" / "report.md").read_text()
    assert "dev_bleu" in report and "pass@1" in report


def test_zoo_model_recipe_smoke_end_to_end(
    tmp_path: Path, tiny_embedded: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recipe behind the shipped zoo model: eval-format chat data, LoRA on every projection, base
    and tuned rows scored on the same problems of each evaluation with paired comparisons."""
    runner, _ = run_shipped("smollm2-pycodegen", tmp_path, tiny_embedded, monkeypatch)
    assert "train-tuned" in runner.ran and runner.ran[-1] == "report"
    out = tmp_path / "smollm2-pycodegen"
    row = json.loads((out / "data" / "train.jsonl").read_text().splitlines()[0])
    assert row["target"].startswith("```python\n") and "Your code should pass these tests" in row["prompt"]
    adapter = json.loads((out / "train-tuned" / "final" / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) >= {"q_proj", "down_proj", "gate_proj"}
    report = (out / "report.md").read_text()
    assert "| base |" in report and "| tuned |" in report
    assert "tuned vs base" in report and "humaneval pass@1" in report and "mbpp pass@1" in report


def test_run_options_replace_the_source_budget_and_out(tmp_path: Path, small_tree: Path) -> None:
    from pycodegen.recipe import with_run_options

    recipe = char_recipe(tmp_path, Path("elsewhere"), budget="1h")
    changed = with_run_options(recipe, out=tmp_path / "o", source=str(small_tree), budget="90s")
    assert changed.out == tmp_path / "o" and changed.prepare is not None and changed.train is not None
    assert changed.prepare.source == str(small_tree) and changed.train.budget == "90s"
    assert changed.train.max_steps == 4  # the rest of the stage is kept
    with pytest.raises(ConfigError, match="has no prepare stage"):
        with_run_options(parse_config(RecipeConfig, {"name": "x"}), source="src")
    with pytest.raises(ConfigError, match="--budget"):
        with_run_options(recipe, budget="soon")
