"""The CLI as a user runs it: a real subprocess for each verb."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pycodegen.cli import VERBS


def pycodegen(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pycodegen", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )


def _flag_names(cls: type) -> list[str]:
    return ["--" + name.replace("_", "-") for name, f in cls.model_fields.items() if not _positional(f)]


def _positional(field) -> bool:  # type: ignore[no-untyped-def]
    extra = field.json_schema_extra
    return isinstance(extra, dict) and extra.get("cli") == "argument"


@pytest.mark.parametrize("verb", [v for v, spec in VERBS.items() if spec.config])
def test_every_config_field_is_a_flag_shown_whole_at_80_columns(verb: str) -> None:
    """Each setting is declared once (a config field) and reachable as a flag of the same name, whose
    name --help prints whole on a narrow terminal, with a worked example that is not re-wrapped."""
    from pycodegen import config

    cls = getattr(config, VERBS[verb].config)
    result = subprocess.run(
        [sys.executable, "-m", "pycodegen", verb, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "80", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
    )
    assert result.returncode == 0, result.stderr
    shown = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.stdout))
    missing = [f for f in [*_flag_names(cls), "--config"] if f not in shown]
    assert not missing, f"flags missing or cut in `{verb} --help`: {missing}"
    assert "Example" in result.stdout
    examples = [line for line in result.stdout.splitlines() if line.strip().startswith("pycodegen ")]
    assert examples and all(f"pycodegen {verb}" in e or "pycodegen " in e for e in examples)


def test_flags_and_yaml_share_names_and_flags_override(tmp_path: Path) -> None:
    """A --config YAML and flags set the same fields; flags win; model_args merge key by key."""
    from pycodegen.cli import flags_to_settings
    from pycodegen.config import TrainConfig

    settings = flags_to_settings(
        TrainConfig, {"lr": 0.1, "model_args": ["n_layer=4", "cell=gru"], "freeze": []}
    )
    assert settings == {"lr": 0.1, "model_args": {"n_layer": 4, "cell": "gru"}}


def test_version_and_serve_help() -> None:
    version = pycodegen("--version")
    assert version.returncode == 0 and version.stdout.startswith("pycodegen ")
    serve = pycodegen("serve", "--help")
    assert serve.returncode == 0 and "--api-key" in serve.stdout and "--max-batch" in serve.stdout
    result = pycodegen("serve", "--anything", "x")
    assert result.returncode == 2 and "--anything" in result.stderr


def test_cross_field_rules_are_one_line_errors(tmp_path: Path) -> None:
    result = pycodegen("train", "--family", "char-rnn", "--unfreeze", "x", "--out", str(tmp_path / "t"))
    assert result.returncode == 2 and "--unfreeze re-enables" in result.stderr
    assert "Traceback" not in result.stderr
    result = pycodegen("generate", "--benchmark", "humaneval")
    assert result.returncode == 2 and "needs --out samples.jsonl" in result.stderr


def test_prepare_end_to_end(tmp_path: Path, messy_tree: Path) -> None:
    out = tmp_path / "ds"
    result = pycodegen(
        "prepare", "--source", str(messy_tree), "--task", "instruction", "--out", str(out), "--workers", "1"
    )
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "instruction" and manifest["skipped_files"]["counts"]["not-utf8"] == 1
    row = json.loads((out / "train.jsonl").read_text().splitlines()[0])
    assert row["prompt"].startswith("### Instruction:") and row["target"].lstrip().startswith("def ")


def test_prepare_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "code": "b", "test_list": []}\n{oops\n')
    result = pycodegen("prepare", "--source", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert f"error: {bad}:2: invalid JSON" in result.stderr and "Traceback" not in result.stderr
    result = pycodegen("prepare", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_prepare_config_file_with_flag_override(tmp_path: Path, messy_tree: Path) -> None:
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(f"source: {messy_tree}\ntask: char-stream\nseq_len: 40\nworkers: 1\n")
    out = tmp_path / "o"
    result = pycodegen("prepare", "--config", str(cfg), "--seq-len", "20", "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["seq_len"] == 20 and manifest["task"] == "char-stream"


def test_hub_ids_are_refused_without_network() -> None:
    result = pycodegen("generate", "-p", "hi", "--model", "bigcode/starcoder")
    assert result.returncode == 2 and "never downloads from a hub" in result.stderr


def test_run_resumes_finished_stages(tmp_path: Path, messy_tree: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nout: {tmp_path / 'run'}\nprepare:\n  source: {messy_tree}\n  workers: 1\n")
    first = pycodegen("run", str(recipe))
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "run" / "data" / "manifest.json").is_file()
    second = pycodegen("run", str(recipe))
    assert second.returncode == 0 and "prepare is up to date" in second.stderr
    recipe.write_text(recipe.read_text() + "  seed: 3\n")  # a changed setting reruns the stage
    third = pycodegen("run", str(recipe))
    assert third.returncode == 0 and "up to date" not in third.stderr
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert manifest["options"]["seed"] == 3


def test_a_bad_serve_section_fails_before_any_stage(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: t\nout: {tmp_path / 'run'}\nprepare: {{source: x}}\nserve: {{port: 99999}}\n")
    result = pycodegen("run", str(recipe))
    assert result.returncode == 2 and "serve:" in result.stderr and "65535" in result.stderr, result.stderr
    assert not (tmp_path / "run" / "stages").exists()


def test_run_evaluate_stage_with_limit(tmp_path: Path) -> None:
    from pycodegen.benchmarks import load_problems

    _, problems, _ = load_problems("humaneval")
    samples = tmp_path / "s.jsonl"
    samples.write_text(
        "".join(
            json.dumps({"task_id": p.task_id, "completion": p.canonical_solution}) + "\n"
            for p in problems[:5]
        )
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\nout: {tmp_path / 'run'}\nevaluate:\n  samples: {samples}\n"
        "  benchmark: humaneval\n  limit: 3\n  timeout: 5\n"
    )
    first = pycodegen("run", str(recipe))
    assert first.returncode == 0, first.stderr
    assert "2 samples of other tasks ignored" in first.stderr
    results = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    assert results["metrics"]["samples"] == 3 and results["metrics"]["pass@1"] == 1.0
    second = pycodegen("run", str(recipe))
    assert second.returncode == 0 and "evaluate is up to date" in second.stderr


def test_run_prepare_then_train(tmp_path: Path, messy_tree: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\nout: {tmp_path / 'run'}\nprepare:\n  source: {messy_tree}\n  task: char-stream\n"
        "  workers: 1\n"
        "  valid_fraction: 0.2\ntrain:\n  family: char-rnn\n  max_steps: 3\n  batch_size: 4\n"
        "  model_args: {n_embd: 16, n_layer: 1}\n"
    )
    first = pycodegen("run", str(recipe))
    assert first.returncode == 0, first.stderr
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["family"] == "char-rnn"
    second = pycodegen("run", str(recipe))
    assert second.returncode == 0 and "train is up to date" in second.stderr
    # a changed setting trains again from scratch, not from the other settings' checkpoints
    recipe.write_text(recipe.read_text() + "  lr: 0.001\n")
    third = pycodegen("run", str(recipe))
    assert third.returncode == 0, third.stderr
    assert "starting over" in third.stderr and "resuming" not in third.stderr
    summary = json.loads((tmp_path / "run" / "train" / "summary.json").read_text())
    assert summary["steps"] == 3


def test_run_evaluates_the_model_it_trained(tmp_path: Path, shared_data: Path) -> None:
    """prepare → train → evaluate: the evaluate stage scores the trained checkpoint (train.out/best), not an
    error about a missing --model (issue 10, C16)."""
    rows = (shared_data / "mbpp.jsonl").read_text().splitlines()[:60]
    (tmp_path / "mbpp.jsonl").write_text("\n".join(rows) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"name: t\nout: {tmp_path / 'run'}\n"
        f"prepare:\n  source: {tmp_path / 'mbpp.jsonl'}\n  task: instruction\n  train_tokenizer: true\n"
        "  vocab_size: 400\n  builtin_eval_sets: false\n  valid_fraction: 0.1\n  test_fraction: 0.1\n"
        "train:\n  family: hf-causal\n  model: new:gpt2\n  max_steps: 2\n  batch_size: 4\n  eval_samples: 0\n"
        "  model_args: {n_layer: 1, n_embd: 32, n_head: 2}\n"
        "evaluate:\n  benchmark: humaneval\n  limit: 2\n  max_new_tokens: 8\n  timeout: 5\n  workers: 1\n"
    )
    result = pycodegen("run", str(recipe))
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())["run_card"]
    assert card["model"] == str(tmp_path / "run" / "train" / "best")
    assert card["prompt_mode"] == "hust"  # what the checkpoint was trained with


def readme_commands() -> list[str]:
    """Every `pycodegen VERB ...` command in README's shell blocks, continuation lines joined."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("pycodegen "):
                commands.append(line)
    return commands


def test_readme_commands_parse_with_the_cli_as_it_is() -> None:
    """Each README command names a real verb and only flags that verb has, with values of the right type
    (parsed by the real CLI, not run): README cannot drift from the flags."""
    import shlex

    import typer

    from pycodegen.cli import app

    group = typer.main.get_command(app)
    commands = readme_commands()
    assert len(commands) > 20
    root = group.context_class(group, info_name="pycodegen")  # typer ships its own copy of click
    for line in commands:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
        # The command ends where the shell takes over: a redirection, a pipe, a `&&`.
        cut = next((i for i, w in enumerate(words) if w and set(w) <= set("<>|&;")), len(words))
        args = [a for a in words[1:cut] if a != "--verbose"]
        command = group.get_command(root, args[0])
        assert command is not None, f"README names no verb: {line}"
        try:
            command.make_context(args[0], args[1:], parent=root)
        except Exception as exc:  # click's UsageError (typer's vendored click): unknown flag, bad value
            raise AssertionError(f"README command does not parse: {line}\n  {exc}") from None
