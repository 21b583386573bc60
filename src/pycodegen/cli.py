"""The `pycodegen` command line: one table from verb to function (VERBS), each verb a thin layer that
turns flags into a typed config and calls the module that does the work."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pycodegen.errors import PycodegenError

console = Console(stderr=True)
app = typer.Typer(
    name="pycodegen",
    help="Train, evaluate and serve deep-learning models that write Python code.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def user_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Print a user-facing error as one red line and exit 2, instead of a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PycodegenError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _read_config(config: Path | None) -> dict[str, Any]:
    """The settings in a `--config` YAML file (empty without one); errors name the file."""
    import yaml

    if config is None:
        return {}
    try:
        data = yaml.safe_load(config.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise PycodegenError(f"cannot read {config}: {exc}") from None
    if not isinstance(data, dict):
        raise PycodegenError(f"{config}: expected a mapping of setting names to values")
    return data


def _given(**flags: Any) -> dict[str, Any]:
    """Only the flags the user set, so config defaults (and recipe values) stay in charge otherwise."""
    return {k: v for k, v in flags.items() if v is not None and v != []}


def prepare(
    source: Annotated[
        str | None, typer.Option(help="Source tree or dataset file (default: the stdlib).")
    ] = None,
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help="auto, python-tree, codealpaca, mbpp, codesearchnet, conala, xlcost, humaneval."
        ),
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="docstring-to-body, instruction, lm-windows, char-stream.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output dataset directory.")] = None,
    decontaminate: Annotated[
        list[Path] | None, typer.Option(help="Extra eval set (JSONL); repeatable.")
    ] = None,
    builtin_eval_sets: Annotated[
        bool | None, typer.Option(help="Decontaminate against HumanEval + MBPP test.")
    ] = None,
    ngram: Annotated[int | None, typer.Option(help="Words in a contaminating n-gram.")] = None,
    skip_bad: Annotated[bool | None, typer.Option(help="Skip and count malformed lines.")] = None,
    max_file_bytes: Annotated[int | None, typer.Option(help="Skip larger source files.")] = None,
    normalize_indent: Annotated[bool | None, typer.Option(help="4-space indentation, tabs included.")] = None,
    strip_comments: Annotated[bool | None, typer.Option(help="Drop comments (tokenize-based).")] = None,
    require_parse: Annotated[bool | None, typer.Option(help="Keep only code that parses.")] = None,
    require_function_return: Annotated[
        bool | None, typer.Option(help="Keep only a function that returns.")
    ] = None,
    dedup: Annotated[bool | None, typer.Option(help="Exact + MinHash near-dup removal.")] = None,
    split_by: Annotated[str | None, typer.Option(help="file or repo.")] = None,
    seed: Annotated[int | None, typer.Option(help="Split seed.")] = None,
    window: Annotated[int | None, typer.Option(help="lm-windows: tokens per window.")] = None,
    stride: Annotated[int | None, typer.Option(help="lm-windows: stride.")] = None,
    seq_len: Annotated[int | None, typer.Option(help="char-stream: characters per sequence.")] = None,
    template: Annotated[str | None, typer.Option(help="instruction: hust, chat or plain.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="Zoo name or local tokenizer directory.")] = None,
    train_tokenizer: Annotated[
        bool | None, typer.Option(help="Train a byte-level BPE on the train split.")
    ] = None,
    vocab_size: Annotated[int | None, typer.Option(help="BPE vocabulary size.")] = None,
    workers: Annotated[int | None, typer.Option(help="Parse processes (0 = all cores).")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML file of prepare settings; flags override it.")
    ] = None,
) -> None:
    """Build a dataset directory from a source tree or a dataset file.

    Parses, cleans, deduplicates (exact + MinHash), decontaminates against HumanEval and the MBPP test
    split, splits by file, and writes OUT/{train,valid,test}.jsonl with OUT/manifest.json.

    [bold]Example[/]: docstring→body pairs from the standard library:

        pycodegen prepare --task docstring-to-body --out runs/data/stdlib

    [bold]Example[/]: MBPP in the HUST instruction template, dropping code that does not parse:

        pycodegen prepare --source ../shared/data/mbpp.jsonl --task instruction \
            --require-parse --out runs/data/mbpp
    """

    from pycodegen.config import PrepareConfig, parse_config
    from pycodegen.data.prepare import prepare as run_prepare

    base = _read_config(config)
    flags = _given(
        source=source,
        format=format,
        task=task,
        out=out,
        decontaminate=decontaminate,
        builtin_eval_sets=builtin_eval_sets,
        ngram=ngram,
        skip_bad=skip_bad,
        max_file_bytes=max_file_bytes,
        normalize_indent=normalize_indent,
        strip_comments=strip_comments,
        require_parse=require_parse,
        require_function_return=require_function_return,
        dedup=dedup,
        split_by=split_by,
        seed=seed,
        window=window,
        stride=stride,
        seq_len=seq_len,
        template=template,
        tokenizer=tokenizer,
        train_tokenizer=train_tokenizer,
        vocab_size=vocab_size,
        workers=workers,
    )
    cfg = parse_config(PrepareConfig, {**base, **flags}, where=str(config) if config else "prepare")
    run_prepare(cfg, console)


def generate(
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", "-p", help="Prompt text; repeatable.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Zoo name, local HF directory or .gguf file.")] = None,
    prompt_mode: Annotated[str | None, typer.Option(help="auto, raw, chat or hust.")] = None,
    n: Annotated[int | None, typer.Option("-n", help="Samples per prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per sample.")] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed.")] = None,
    out: Annotated[Path | None, typer.Option(help="Write samples as JSONL here.")] = None,
    benchmark: Annotated[str | None, typer.Option(help="humaneval or mbpp: every problem.")] = None,
    problems: Annotated[Path | None, typer.Option(help="HumanEval-format JSONL of problems.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences decoded together.")] = None,
) -> None:
    """Complete prompts, or every problem of a benchmark, with a model (default: the embedded one).

    Free prompts are printed and, with --out, written as JSONL. With --benchmark or --problems, --out is
    a samples file (task_id, sample_index, completion, raw) that `pycodegen evaluate` scores; an
    interrupted run resumes with the tasks it had finished.

    [bold]Example[/]:

        pycodegen generate -p "Write a Python function that returns the factorial of n." --max-new-tokens 96

    [bold]Example[/]: 20 samples per HumanEval problem, for pass@1 and pass@10:

        pycodegen generate --benchmark humaneval -n 20 --temperature 0.8 --out samples.jsonl
    """
    from pycodegen.config import GenerateConfig, parse_config
    from pycodegen.generate.run import run_generate

    cfg = parse_config(
        GenerateConfig,
        _given(
            prompt=prompt,
            model=model,
            prompt_mode=prompt_mode,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            out=out,
            batch_size=batch_size,
        ),
        where="generate",
    )
    if benchmark is not None or problems is not None:
        from pycodegen.benchmarks import load_problems
        from pycodegen.evaluate.run import generate_samples

        if cfg.out is None:
            raise PycodegenError("--benchmark/--problems needs --out samples.jsonl")
        name, problem_list, _ = load_problems(benchmark, problems)
        generate_samples(cfg.model, problem_list, cfg.out, cfg, benchmark=name, console=console)
        console.print(f"[bold cyan]generate[/] samples for {len(problem_list)} {name} problems → {cfg.out}")
        return
    if not cfg.prompt:
        raise PycodegenError("give at least one --prompt")
    run_generate(cfg, console, echo=True)


def run(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe.")],
    force: Annotated[bool, typer.Option(help="Rerun stages that are already done.")] = False,
) -> None:
    """Run a recipe's stages in order (prepare → train → generate → evaluate), skipping finished ones.

    A stage is done when its marker under OUT/stages/ matches its settings; change a setting and only
    that stage and the ones after it run again.

    [bold]Example[/]: the quickstart (what `make quickstart` runs):

        pycodegen run recipes/quickstart.yaml
    """
    from pycodegen.config import load_recipe
    from pycodegen.recipe import run_recipe

    run_recipe(load_recipe(recipe), console, force=force)


def train(
    family: Annotated[str | None, typer.Option(help="char-rnn, hf-causal, ...")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset directory from `pycodegen prepare`.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (checkpoints, metrics.jsonl).")] = None,
    model: Annotated[
        str | None, typer.Option(help="Zoo name, local dir, checkpoint, or new:gpt2 / new:llama.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help="full, lora or qlora (CUDA only).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (default 200).")] = None,
    budget: Annotated[str | None, typer.Option(help="Stop cleanly after e.g. 10m, 90s, 1h.")] = None,
    resume: Annotated[bool | None, typer.Option(help="Continue from the last checkpoint in --out.")] = None,
    dtype: Annotated[str | None, typer.Option(help="fp32 or bf16 (autocast).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per micro-batch per process.")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per optimizer step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    schedule: Annotated[str | None, typer.Option(help="constant, linear, cosine or exponential.")] = None,
    warmup_ratio: Annotated[float | None, typer.Option(help="Share of steps for linear warm-up.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed.")] = None,
    model_arg: Annotated[
        list[str] | None, typer.Option(help="Architecture size KEY=VALUE; repeatable.")
    ] = None,
    freeze: Annotated[
        list[str] | None, typer.Option(help="Regex of parameter names to freeze; repeatable.")
    ] = None,
    unfreeze: Annotated[
        list[str] | None, typer.Option(help="Regex re-enabled after --freeze; repeatable.")
    ] = None,
    target_modules: Annotated[list[str] | None, typer.Option(help="LoRA target module; repeatable.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (default 8).")] = None,
    log_every: Annotated[int | None, typer.Option(help="Steps between metrics lines.")] = None,
    eval_every: Annotated[int | None, typer.Option(help="Steps between validation passes.")] = None,
    save_every: Annotated[int | None, typer.Option(help="Steps between checkpoints.")] = None,
    config: Annotated[Path | None, typer.Option(help="YAML of train settings; flags override it.")] = None,
) -> None:
    """Train a model family on a prepared dataset (one accelerate loop: also under torchrun/accelerate).

    Writes OUT/metrics.jsonl (step, loss, lr, tokens_per_s), TensorBoard logs, OUT/checkpoint-STEP
    (HF format + optimizer, scheduler, data position and RNG state), OUT/best and OUT/final.

    [bold]Example[/]: the char-RNN baseline on character sequences of the standard library:

        pycodegen prepare --task char-stream --out runs/data/chars
        pycodegen train --family char-rnn --data runs/data/chars --out runs/train/char-rnn \\
            --max-steps 500 --lr 0.002

    [bold]Example[/]: LoRA on the embedded model, 10 minutes, bf16, resumable:

        pycodegen train --family hf-causal --data runs/data/mbpp --out runs/train/lora --mode lora \\
            --budget 10m --dtype bf16
    """
    import yaml

    from pycodegen.config import TrainConfig, parse_config
    from pycodegen.train.loop import train as run_train

    base = _read_config(config)
    args: dict[str, Any] = dict(base.get("model_args", {}))
    for item in model_arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise PycodegenError(f"--model-arg {item!r}: use KEY=VALUE")
        args[key] = yaml.safe_load(value)
    flags = _given(
        family=family,
        data=data,
        out=out,
        model=model,
        mode=mode,
        max_steps=max_steps,
        budget=budget,
        resume=resume,
        dtype=dtype,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        schedule=schedule,
        warmup_ratio=warmup_ratio,
        seed=seed,
        freeze=freeze,
        unfreeze=unfreeze,
        target_modules=target_modules,
        lora_r=lora_r,
        log_every=log_every,
        eval_every=eval_every,
        save_every=save_every,
        model_args=args or None,
    )
    run_train(parse_config(TrainConfig, {**base, **flags}, where=str(config) if config else "train"), console)


def search(
    query: Annotated[str, typer.Argument(help="What the function should do, in words.")],
    model: Annotated[Path, typer.Option(help="A trained retrieval checkpoint (RUN/final).")],
    corpus: Annotated[Path, typer.Option(help="A docstring-to-body dataset directory to search.")],
    top: Annotated[int, typer.Option(help="How many functions to show.")] = 5,
) -> None:
    """Find the functions of a prepared corpus that best match a query (retrieval family).

    [bold]Example[/]:

        pycodegen prepare --task docstring-to-body --out runs/data/stdlib
        pycodegen train --family retrieval --data runs/data/stdlib --out runs/train/nbow --max-steps 300
        pycodegen search "parse an email address" --model runs/train/nbow/final --corpus runs/data/stdlib
    """
    from pycodegen.models.retrieval import search as run_search

    for hit in run_search(model, corpus, query, top):
        where = f"{hit['path']}:{hit['lineno']}" if hit.get("path") else hit["id"]
        print(f"{hit['score']:.3f}  {where}  {hit['signature']}")


def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint directory (RUN/final, RUN/best, ...).")],
    out: Annotated[Path, typer.Option(help="Where to write the plain HF-format model.")],
) -> None:
    """Export a training checkpoint as a plain HF-format directory, LoRA adapters merged into the weights.

    [bold]Example[/]:

        pycodegen export runs/train/lora/final --out runs/models/smollm2-mbpp
        pycodegen generate --model runs/models/smollm2-mbpp -p "Write a function that reverses a list."
    """
    from pycodegen.train.export import export as run_export

    console.print(f"[bold cyan]export[/] {checkpoint} → {run_export(checkpoint, out)}")


def evaluate(
    samples: Annotated[Path | None, typer.Argument(help="samples.jsonl to score (or use --model).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Run directory: verdicts, results.json, report.md.")
    ] = None,
    benchmark: Annotated[str | None, typer.Option(help="humaneval or mbpp (the MBPP test split).")] = None,
    problems: Annotated[Path | None, typer.Option(help="HumanEval-format JSONL of problems.")] = None,
    limit: Annotated[int | None, typer.Option(help="Only the first N problems (smoke runs).")] = None,
    model: Annotated[str | None, typer.Option(help="Generate the samples with this model first.")] = None,
    prompt_mode: Annotated[str | None, typer.Option(help="auto, raw, chat or hust (with --model).")] = None,
    n: Annotated[int | None, typer.Option("-n", help="Samples per problem (with --model).")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy (with --model).")] = None,
    top_p: Annotated[float | None, typer.Option(help="Nucleus mass (with --model).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Tokens per sample (default 384).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Sequences decoded together (with --model).")] = None,
    workers: Annotated[int | None, typer.Option(help="Parallel sandboxed workers (0 = cores).")] = None,
    timeout: Annotated[float | None, typer.Option(help="Wall-clock seconds per sample (default 10).")] = None,
    memory_mb: Annotated[int | None, typer.Option(help="Memory per sample, MiB (default 1024).")] = None,
    examples: Annotated[bool | None, typer.Option(help="Also run the prompt's >>> examples.")] = None,
    encoder: Annotated[
        str | None, typer.Option(help="CodeBERTScore encoder: 'minilm' or a local dir.")
    ] = None,
) -> None:
    """Score samples by running them (pass@k) and by text metrics; write results.json and report.md.

    Every sample runs in its own sandboxed process; verdicts go to OUT/verdicts.jsonl as they are decided,
    so an interrupted evaluation resumes where it stopped.

    [bold]Example[/]: score a samples file:

        pycodegen evaluate samples.jsonl --benchmark humaneval --out runs/eval/smollm2

    [bold]Example[/]: generate and score in one go:

        pycodegen evaluate --model smollm2-135m-instruct --benchmark humaneval --out runs/eval/smollm2
    """
    from pycodegen.config import EvaluateConfig, parse_config
    from pycodegen.evaluate.run import run_evaluation

    flags = _given(
        samples=samples,
        out=out,
        benchmark=benchmark,
        problems=problems,
        limit=limit,
        model=model,
        prompt_mode=prompt_mode,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        workers=workers,
        timeout=timeout,
        memory_mb=memory_mb,
        examples=examples,
        encoder=encoder,
    )
    run_evaluation(parse_config(EvaluateConfig, flags, where="evaluate"), console)


def report(
    runs: Annotated[list[Path], typer.Argument(help="Evaluation run directories (or results.json files).")],
    out: Annotated[Path | None, typer.Option(help="Also write the comparison here.")] = None,
    allow_mismatch: Annotated[
        bool, typer.Option(help="Compare runs whose prompt mode or decoding differ.")
    ] = False,
) -> None:
    """Put several evaluation runs side by side.

    Runs whose run cards differ in benchmark, prompt mode or decoding are refused, or with
    --allow-mismatch compared under a warning.

    [bold]Example[/]:

        pycodegen report runs/eval/smollm2 runs/eval/finetuned --out comparison.md
    """
    from pycodegen.evaluate.run import compare

    table = compare(runs, allow_mismatch)
    print(table, end="")
    if out is not None:
        out.write_text(table)


def _not_built(verb: str, capability: str, example: str) -> Callable[..., None]:
    def command(ctx: typer.Context) -> None:
        raise PycodegenError(f"`pycodegen {verb}` is not built yet: {capability}")

    command.__doc__ = (
        f"{capability.capitalize()} [not built yet].\n\n[bold]Example[/] (once built):\n\n    {example}"
    )
    return command


serve = _not_built(
    "serve",
    "serving (the OpenAI-compatible HTTP server and playground) is its own capability",
    "pycodegen serve --model smollm2-135m-instruct --port 8000",
)

# The single verb table: name → function.
VERBS: dict[str, Callable[..., Any]] = {
    "prepare": prepare,
    "train": train,
    "generate": generate,
    "evaluate": evaluate,
    "serve": serve,
    "run": run,
    "report": report,
    "search": search,
    "export": export,
}
_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}
for _name, _func in VERBS.items():
    _ctx = _PASSTHROUGH if _func is serve else None
    app.command(_name, context_settings=_ctx)(user_errors(_func))


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from pycodegen import __version__

        print(json.dumps({"pycodegen": __version__}))
        raise typer.Exit()


def main() -> None:
    app()
