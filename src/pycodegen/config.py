"""Typed configs shared by CLI flags and YAML recipes (the same field names in both).

Every model forbids unknown keys; `parse_config` turns pydantic's errors into one message that names the
bad key and lists the valid ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pycodegen.errors import ConfigError

TASKS = ("docstring-to-body", "instruction", "lm-windows", "char-stream")
FORMATS = ("auto", "python-tree", "codealpaca", "mbpp", "codesearchnet", "conala", "xlcost", "humaneval")
TEMPLATES = ("hust", "chat", "plain")

Task = Literal["docstring-to-body", "instruction", "lm-windows", "char-stream"]
Format = Literal[
    "auto", "python-tree", "codealpaca", "mbpp", "codesearchnet", "conala", "xlcost", "humaneval"
]
Template = Literal["hust", "chat", "plain"]


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PrepareConfig(StrictModel):
    """`pycodegen prepare`: source → cleaned, deduplicated, decontaminated, split task view."""

    source: str | None = Field(None, description="Source tree or dataset file; default: the running stdlib.")
    format: Format = Field("auto", description="Dataset format; 'auto' detects it from the fields.")
    task: Task = Field("docstring-to-body", description="Task view to build.")
    out: Path = Field(Path("runs/data"), description="Output dataset directory.")
    decontaminate: list[Path] = Field(default_factory=list, description="Extra HumanEval-style JSONL files.")
    builtin_eval_sets: bool = Field(
        True, description="Decontaminate against HumanEval and the MBPP test split."
    )
    ngram: int = Field(10, ge=3, description="Tokens in the n-gram that marks a record as contaminated.")
    skip_bad: bool = Field(False, description="Skip and count malformed dataset lines instead of failing.")
    max_file_bytes: int = Field(1_000_000, gt=0, description="Skip source files larger than this.")
    exclude: list[str] = Field(
        default_factory=lambda: [
            "site-packages",
            "dist-packages",
            "__pycache__",
            ".git",
            ".venv",
            "node_modules",
        ],
        description="Directory names never descended into.",
    )
    normalize_indent: bool = Field(False, description="Re-indent code to 4 spaces per level (tabs too).")
    strip_comments: bool = Field(False, description="Remove comments, keeping strings and docstrings.")
    require_parse: bool = Field(False, description="Keep only code that parses as Python.")
    require_function_return: bool = Field(
        False, description="Keep only code defining a function that returns."
    )
    dedup: bool = Field(True, description="Drop exact and near duplicates.")
    near_dup_threshold: float = Field(
        0.85, gt=0, le=1, description="MinHash Jaccard above which two are near-dups."
    )
    num_perm: int = Field(64, ge=16, description="MinHash permutations.")
    shingle: int = Field(5, ge=1, description="Tokens per shingle for near-dup detection.")
    split_by: Literal["file", "repo"] = Field("file", description="Unit that never straddles two splits.")
    valid_fraction: float = Field(0.05, ge=0, lt=1, description="Share of files (or repos) for validation.")
    test_fraction: float = Field(0.05, ge=0, lt=1, description="Share of files (or repos) for test.")
    seed: int = Field(0, description="Seed of the split.")
    window: int = Field(256, ge=8, description="lm-windows: tokens per window (Autocoder: 256).")
    stride: int = Field(128, ge=1, description="lm-windows: tokens between window starts.")
    seq_len: int = Field(128, ge=2, description="char-stream: characters per sequence.")
    template: Template = Field(
        "hust", description="instruction: HUST template, the model's chat template, or plain."
    )
    tokenizer: str | None = Field(None, description="Zoo name or local tokenizer dir (lm-windows, chat).")
    train_tokenizer: bool = Field(False, description="Train a byte-level BPE on the train split.")
    vocab_size: int = Field(8192, ge=300, description="Vocabulary size of the trained BPE.")
    workers: int = Field(0, ge=0, description="Parse processes; 0 = number of cores.")


class SamplingConfig(StrictModel):
    """How a model samples: shared by `generate` and `evaluate` (one definition, one meaning)."""

    prompt_mode: Literal["auto", "raw", "chat", "hust"] = Field(
        "auto", description="How prompts are wrapped."
    )
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per sample.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = Field(1, ge=1, description="Samples per prompt.")
    seed: int = Field(0, description="Sampling seed.")
    batch_size: int = Field(8, ge=1, description="Sequences decoded together.")


class GenerateConfig(SamplingConfig):
    """`pycodegen generate`: a model completes prompts."""

    model: str = Field("smollm2-135m-instruct", description="Zoo name, local HF directory or .gguf file.")
    prompt: list[str] = Field(default_factory=list, description="Prompts to complete.")
    out: Path | None = Field(None, description="JSONL file for the samples (default: print only).")


class EvaluateConfig(SamplingConfig):
    """`pycodegen evaluate`: run samples (or a model's generations) against a benchmark's tests."""

    model: str | None = Field(None, description="Generate the samples with this model first.")
    samples: Path | None = Field(None, description="A samples.jsonl to score instead of generating.")
    benchmark: Literal["humaneval", "mbpp"] | None = Field(None, description="Built-in benchmark.")
    problems: Path | None = Field(None, description="HumanEval-format JSONL of problems.")
    limit: int | None = Field(None, ge=1, description="Only the first N problems (smoke runs).")
    out: Path = Field(Path("runs/eval"), description="Run directory.")
    max_new_tokens: int = Field(384, ge=1, description="Tokens per sample.")
    workers: int = Field(0, ge=0, description="Sandboxed workers; 0 = number of cores.")
    timeout: float = Field(10.0, gt=0, description="Wall-clock seconds per sample.")
    memory_mb: int = Field(1024, ge=64, description="Memory per sample, MiB.")
    examples: bool = Field(True, description="Also run the prompt's >>> examples (filtered pass@1).")
    encoder: str | None = Field(None, description="CodeBERTScore encoder: 'minilm' or a local directory.")


class TrainConfig(StrictModel):
    """`pycodegen train`: one accelerate-based loop for every model family."""

    family: str = Field(..., description="Model family: char-rnn, hf-causal, ...")
    data: Path = Field(Path("runs/data"), description="A dataset directory from `pycodegen prepare`.")
    out: Path = Field(Path("runs/train"), description="Run directory: checkpoints, metrics.jsonl.")
    model: str | None = Field(None, description="Zoo name, local dir, a checkpoint, or new:gpt2 / new:llama.")
    model_args: dict[str, Any] = Field(default_factory=dict, description="Family/architecture sizes.")
    mode: Literal["full", "lora", "qlora"] = Field("full", description="What is trained.")
    max_steps: int = Field(200, ge=1, description="Optimizer steps.")
    budget: str | None = Field(None, description="Stop cleanly after this long: 90s, 10m, 2h.")
    resume: bool = Field(False, description="Continue from the run directory's last checkpoint.")
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast (AMX on this CPU).")
    fused_loss: bool = Field(
        True,
        description="hf-causal: compute the output layer + cross-entropy in chunks, never the "
        "full logits (same loss, less memory, faster); false = the model's own loss.",
    )
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(512, ge=8, description="Tokens per example (longer ones are cut).")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    schedule: Literal["constant", "linear", "cosine", "exponential"] = Field(
        "cosine", description="LR schedule."
    )
    warmup_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of steps for linear warm-up (Autocoder: 0.2)."
    )
    decay_per_epoch: float = Field(0.97, gt=0, le=1, description="exponential: factor per epoch.")
    clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    log_every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints.")
    eval_every: int = Field(100, ge=1, description="Steps between validation passes.")
    eval_batches: int = Field(20, ge=1, description="Validation batches per pass.")
    eval_samples: int = Field(8, ge=0, description="Dev rows generated per pass (pass@1 / BLEU); 0 = off.")
    eval_max_new_tokens: int = Field(128, ge=1, description="Tokens generated per dev row.")
    best_metric: str = Field(
        "auto",
        description="Metric of the best checkpoint; auto = dev_pass@1 when the "
        "dev rows have tests, else valid_loss.",
    )
    keep_checkpoints: int = Field(2, ge=1, description="Step checkpoints kept (plus best and final).")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="LoRA dropout (PEFT's default 0; 0.05 costs ~20% of a CPU step)."
    )
    target_modules: list[str] | None = Field(None, description="LoRA targets; default per architecture.")
    freeze: list[str] = Field(default_factory=list, description="Regexes of parameter names to freeze.")
    unfreeze: list[str] = Field(default_factory=list, description="Regexes re-enabled after freeze.")


class RecipeConfig(StrictModel):
    """A YAML recipe: the stages `pycodegen run` executes in order, each optional."""

    name: str = Field(..., description="Recipe name, used in reports.")
    out: Path = Field(Path("runs/recipe"), description="Run directory; stages write below it.")
    prepare: PrepareConfig | None = None
    generate: GenerateConfig | None = None
    train: TrainConfig | None = None
    evaluate: EvaluateConfig | None = None
    serve: dict[str, Any] | None = Field(None, description="Reserved: serving (not built yet).")


M = TypeVar("M", bound=BaseModel)


def _model_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel]:
    """The config class that owns the key at `loc` (for listing its valid fields)."""
    for key in loc[:-1]:
        field = cls.model_fields.get(str(key))
        if field is None:
            break
        ann = field.annotation
        sub = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if sub is None:
            break
        cls = sub
    return cls


def parse_config(cls: type[M], data: dict[str, Any], where: str = "config") -> M:
    """Validate `data` as `cls`; any error names the key, and unknown keys list the valid ones.

    >>> try:
    ...     parse_config(GenerateConfig, {"temprature": 0.5})
    ... except ConfigError as exc:
    ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
    config: unknown key 'temprature'; valid keys: batch_size, max_new_tokens, model, n, out, prompt,
    prompt_mode, seed, temperature, top_p
    """
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        messages = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            dotted = ".".join(str(p) for p in loc)
            if err["type"] == "extra_forbidden":
                owner = _model_at(cls, loc)
                valid = ", ".join(sorted(owner.model_fields))
                messages.append(f"unknown key {dotted!r}; valid keys: {valid}")
            else:
                messages.append(f"{dotted}: {err['msg']}")
        raise ConfigError(f"{where}: " + "; ".join(messages)) from None


def load_recipe(path: Path) -> RecipeConfig:
    """Read a YAML recipe; errors name the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of stage names to settings")
    return parse_config(RecipeConfig, data, where=str(path))
