"""Decoding, free-form generation and benchmark samples, with a tiny GPT-2 built here (offline, CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pycodegen.config import GenerateConfig
from pycodegen.errors import PycodegenError
from pycodegen.jsonl import read_jsonl, write_jsonl

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "Here is the code:\n```python\nx = 1\n```\nIt sets x.\n",
    "Write a function that returns the sum of a list.",
] * 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-layer, 32-wide GPT-2 with a byte-level BPE trained on CORPUS, saved as an HF directory.

    Its tokenizer keeps transformers' defaults (padding on the right, no pad token), which is what a
    training tokenizer looks like.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = GPT2LMHeadModel(config)
    # A few steps on CORPUS, so greedy output is varied text (an untrained model repeats one token).
    ids = torch.tensor([tokenizer("".join(CORPUS[:3]) * 4, add_special_tokens=False)["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    directory = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def problems_file(path: Path, count: int) -> Path:
    """`count` short HumanEval-format problems (short prompts keep the tiny model fast)."""
    rows = [
        {
            "task_id": f"toy/{i}",
            "prompt": f"def add{i}(a, b):\n",
            "entry_point": f"add{i}",
            "test": "def check(f):\n    assert f(1, 2) == 3\n",
            "canonical_solution": "    return a + b\n",
        }
        for i in range(count)
    ]
    write_jsonl(path, rows)
    return path


def test_decoding_leaves_the_tokenizer_alone_and_batches_like_alone(tiny_model: Path) -> None:
    from pycodegen.generate.engine import DecodeParams, Engine

    engine = Engine.load(str(tiny_model))
    tokenizer = engine.tokenizer
    assert (tokenizer.padding_side, tokenizer.pad_token) == ("right", None)
    params = DecodeParams(max_new_tokens=12)
    together = engine.generate(["def add(a, b):", "Write"], params)
    # Saved checkpoints carry the tokenizer: decoding must not have switched it to left padding.
    assert (tokenizer.padding_side, tokenizer.pad_token) == ("right", None)
    alone = engine.generate(["Write"], params)
    assert alone[0][0].text == together[1][0].text and together[0][0].text  # padding changes nothing


def test_stop_strings_cut_where_the_model_wrote_them(tiny_model: Path) -> None:
    from pycodegen.generate.engine import DecodeParams, Engine

    engine = Engine.load(str(tiny_model))
    prompt = "def add(a, b):"

    def text(stop: list[str]) -> str:
        return engine.generate([prompt], DecodeParams(max_new_tokens=24, stop=stop))[0][0].text

    full = text([])
    # A stop that first appears in the middle of the greedy text: the text before it comes back.
    stop = next(full[i : i + 3] for i in range(4, len(full)) if full.find(full[i : i + 3]) >= 4)
    assert text([stop]) == full[: full.find(stop)]
    # A stop formed by the prompt's end and the first generated text is not a stop (Codex harness).
    straddling = prompt[-2:] + full[:2]
    if straddling not in full:
        assert text([straddling]) == full


def test_a_choice_ends_when_its_first_code_block_closes(tiny_model: Path) -> None:
    from pycodegen.generate.engine import DecodeParams, Engine

    engine = Engine.load(str(tiny_model))
    prompt = "Here is the code:"
    free = engine.generate([prompt], DecodeParams(max_new_tokens=40))[0][0].text
    closed = free.find("x = 1\n```\nIt sets")  # the tiny model learned CORPUS[1]: the check can fail
    assert closed > 0 and "```python" in free[:closed], free
    done = engine.generate([prompt], DecodeParams(max_new_tokens=40, stop_after_code_block=True))[0][0]
    assert (done.text, done.finish_reason) == (free[: closed + len("x = 1\n```")], "stop")


def test_prompts_from_stdin_or_a_file_and_jsonl_output(tiny_model: Path, tmp_path: Path) -> None:
    def generate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "pycodegen", "generate", "--model", str(tiny_model), *args]
        extra = ["--max-new-tokens", "4", "--prompt-mode", "raw"]
        return subprocess.run(command + extra, input=stdin, capture_output=True, text=True, timeout=120)

    piped = generate("--input", "-", "--format", "jsonl", stdin="def add(a, b):\nWrite\n")
    assert piped.returncode == 0, piped.stderr
    rows = [json.loads(line) for line in piped.stdout.splitlines()]
    assert [r["prompt"] for r in rows] == ["def add(a, b):", "Write"] and all(
        r["finish_reason"] for r in rows
    )
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Write"}) + "\n")
    plain = generate("--input", str(prompts))
    assert plain.returncode == 0 and plain.stdout == rows[1]["completion"] + "\n"  # text: just the completion
    prompts.write_text(json.dumps({"prompt": "Write"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    bad = generate("--input", str(prompts))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == (
        f'error: {prompts}:2: a JSONL prompt row needs a "prompt" string'
    )


def test_free_form_out_is_never_overwritten_silently(tiny_model: Path, tmp_path: Path) -> None:
    from pycodegen.console import make_console
    from pycodegen.generate.freeform import run_generate

    out = tmp_path / "samples.jsonl"
    out.write_text("precious\n")
    cfg = GenerateConfig(model=str(tiny_model), prompt=["Write"], max_new_tokens=4, out=out)
    with pytest.raises(PycodegenError, match=r"samples.jsonl already exists; choose another --out or pass"):
        run_generate(cfg, make_console(), echo=False)
    assert out.read_text() == "precious\n"

    rows = run_generate(cfg.model_copy(update={"overwrite": True}), make_console(), echo=False)
    assert read_jsonl(out) == rows and len(rows) == 1


def test_generate_benchmark_honours_limit_and_resumes(tiny_model: Path, tmp_path: Path) -> None:
    from pycodegen.console import make_console
    from pycodegen.generate.freeform import run_generate

    problems = problems_file(tmp_path / "p.jsonl", 6)
    out = tmp_path / "samples.jsonl"
    cfg = GenerateConfig(model=str(tiny_model), problems=problems, limit=3, max_new_tokens=6, out=out)
    run_generate(cfg, make_console())
    first = read_jsonl(out)
    assert [r["task_id"] for r in first] == ["toy/0", "toy/1", "toy/2"]
    run_generate(cfg.model_copy(update={"limit": 5}), make_console())
    rows = read_jsonl(out)
    assert rows[:3] == first and [r["task_id"] for r in rows[3:]] == ["toy/3", "toy/4"]
    meta = json.loads(out.with_name("samples.jsonl.meta.json").read_text())
    assert meta["decoding"]["max_new_tokens"] == 6 and meta["benchmark"] == "p"


def test_ctrl_c_says_what_was_kept_and_the_rerun_resumes(tiny_model: Path, tmp_path: Path) -> None:
    total = 100  # enough work that the child is still generating when the signal comes
    problems = problems_file(tmp_path / "p.jsonl", total)
    out = tmp_path / "samples.jsonl"
    command = [
        sys.executable,
        "-m",
        "pycodegen",
        "generate",
        "--problems",
        str(problems),
        "--model",
        str(tiny_model),
        "--out",
        str(out),
        "--max-new-tokens",
        "32",
        "--batch-size",
        "1",
    ]
    # A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler: give
    # the child the default disposition, as a terminal's foreground process has.
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or not out.read_text().strip()):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stderr = " ".join(stderr.split())  # the message may be wrapped at the terminal width
    kept = len(read_jsonl(out))
    assert proc.returncode != 0 and 1 <= kept < total, stderr
    assert f"interrupted: {out} keeps {kept} of {total} tasks" in stderr, stderr
    assert "rerun the same command to resume" in stderr
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    ids = [r["task_id"] for r in read_jsonl(out)]
    assert ids == [f"toy/{i}" for i in range(total)]


def test_evaluate_with_a_model_generates_then_scores_the_first_problems(
    tiny_model: Path, tmp_path: Path
) -> None:
    from pycodegen.config import EvaluateConfig
    from pycodegen.console import make_console
    from pycodegen.evaluate.score import run_evaluation

    problems = problems_file(tmp_path / "p.jsonl", 6)
    out = tmp_path / "eval"
    cfg = EvaluateConfig(
        model=str(tiny_model),
        problems=problems,
        limit=3,
        out=out,
        max_new_tokens=8,
        workers=1,
        examples=False,
    )
    results = run_evaluation(cfg, make_console())
    assert [r["task_id"] for r in read_jsonl(out / "samples.jsonl")] == ["toy/0", "toy/1", "toy/2"]
    card = results["run_card"]
    assert card["model"] == str(tiny_model) and card["prompt_mode"] == "raw"  # no chat template
    assert (card["problems"]["scored"], card["problems"]["total"], card["problems"]["limit"]) == (3, 6, 3)
    assert (
        results["metrics"]["samples"] == 3 and results["metrics"]["text_metrics"]["reference_perplexity"] > 1
    )
    assert json.loads((out / "results.json").read_text()) == json.loads(json.dumps(results, default=str))


def test_logs_get_code_and_paths_unwrapped_and_unpadded(tiny_model: Path, tmp_path: Path) -> None:
    """Not on a terminal (a log file): generated text is printed as generated, with no trailing spaces, and
    a long output path stays on one line (issue 10, C13)."""
    import io

    from rich.console import Console

    from pycodegen.console import make_console
    from pycodegen.generate.freeform import echo_sample, run_generate

    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 6) / "samples.jsonl"
    log = io.StringIO()
    console = make_console()
    console.file = log  # a StringIO is not a terminal, as a redirected stderr is not
    assert isinstance(console, Console) and not console.is_terminal
    printed = io.StringIO()
    rows = run_generate(
        GenerateConfig(model=str(tiny_model), prompt=["def f():"], max_new_tokens=12, out=deep),
        console,
        stdout=printed,
    )
    echo_sample(console, "def f(x):\n    return x\n")
    text = log.getvalue()
    assert rows and printed.getvalue() == rows[0]["completion"] + "\n" and "def f(x):\n    return x\n" in text
    assert not [line for line in text.splitlines() if line != line.rstrip()]
    assert any(str(deep) in line for line in text.splitlines())


def test_third_party_output_is_quiet_unless_verbose(tiny_model: Path, tmp_path: Path) -> None:
    """transformers' weight-loading bars and warnings stay out of pycodegen's output; --verbose shows them
    (issue 10, C13)."""

    def run(*extra: str) -> str:
        args = ["generate", "-p", "def f():", "--max-new-tokens", "2", "--model", str(tiny_model)]
        result = subprocess.run(
            [sys.executable, "-m", "pycodegen", *extra, *args, "--prompt-mode", "raw"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        )
        assert result.returncode == 0, result.stderr
        return result.stderr

    noise = ("Loading weights", "it/s]", "Warning")
    verbose = run("--verbose")
    assert any(n in verbose for n in noise), "the check is void: no third-party output even with --verbose"
    quiet = run()
    assert not [n for n in noise if n in quiet], quiet


def test_best_of_picks_the_sample_that_passes_the_prompts_examples() -> None:
    """generate --best-of N --select examples: a passing sample beats a likelier failing one; a prompt
    without examples falls back to the likeliest sample."""
    from pycodegen.generate.select import select_by_examples
    from pycodegen.sandbox.executor import Executor

    prompt = 'def add(a, b):\n    """Add.\n\n    >>> add(1, 2)\n    3\n    """\n'
    samples = [("    return a - b\n", -0.1), ("    return a + b\n", -0.9), ("    return a * b\n", -0.2)]
    plain = "Write a function that adds two numbers."
    with Executor(workers=1, timeout=5) as executor:
        picked = select_by_examples([prompt, plain], [samples, [("x", -2.0), ("y", -0.5)]], "raw", executor)
    assert picked[0].index == 1 and picked[0].passed_examples == [False, True, False]
    assert picked[0].examples == 1
    assert picked[1].index == 1 and picked[1].passed_examples == [None, None] and picked[1].examples == 0


def test_best_of_needs_sampling_and_free_prompts() -> None:
    import pytest

    from pycodegen.config import GenerateConfig

    with pytest.raises(ValueError, match="temperature > 0"):
        GenerateConfig(prompt=["x"], best_of=4)
    with pytest.raises(ValueError, match="evaluate --best-of"):
        GenerateConfig(benchmark="humaneval", out="s.jsonl", best_of=4, temperature=0.8)
