"""Typed configs shared by CLI flags and YAML recipes (the same field names in both).

Every model forbids unknown keys; `parse_config` turns pydantic's errors into one message that names the
bad key and lists the valid ones.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pycodegen.errors import ConfigError

Task = Literal["docstring-to-body", "instruction", "lm-windows", "char-stream", "problems"]
Format = Literal[
    "auto", "python-tree", "codealpaca", "mbpp", "codesearchnet", "conala", "xlcost", "humaneval"
]
Template = Literal["hust", "chat", "plain"]
PromptMode = Literal["auto", "raw", "chat", "hust"]
Benchmark = Literal["humaneval", "mbpp"]
Scale = Literal["smoke", "tiny", "paper"]

BUDGET_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*")


def parse_budget(text: str | None) -> float | None:
    """Seconds in a budget such as '90s', '10m', '1.5h'.

    >>> parse_budget("10m"), parse_budget("90s"), parse_budget("1.5h"), parse_budget(None)
    (600.0, 90.0, 5400.0, None)
    """
    if text is None:
        return None
    match = BUDGET_RE.fullmatch(text)
    if not match:
        raise ConfigError(f"budget {text!r}: use a number with s, m or h, e.g. 10m")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def valid_budget(value: str | None) -> str | None:
    """A budget field's validator: the value as given, or pydantic's error for a malformed one."""
    try:
        parse_budget(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


class StrictModel(BaseModel):
    """A config: unknown keys are errors, assignments are validated. A config composed of groups (e.g.
    TrainConfig) lists its flags in `--help` group by group, in the order the groups are composed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def positional(description: str, default: Any = ..., **kwargs: Any) -> Any:
    """A field that the CLI takes as a positional argument (still a plain key in YAML)."""
    return Field(default, description=description, json_schema_extra={"cli": "argument"}, **kwargs)


def short(flag: str, default: Any, description: str, **kwargs: Any) -> Any:
    """A field with a one-letter CLI alias besides its long flag (e.g. -n)."""
    return Field(default, description=description, json_schema_extra={"cli_short": flag}, **kwargs)


# -- prepare ----------------------------------------------------------------------------------------------
class PrepareSource(StrictModel):
    """Source"""

    source: str | None = Field(
        None, description="Source tree, single .py file or dataset file; default: the running stdlib."
    )
    add_source: list[str] = Field(
        default_factory=list,
        description="Further dataset files read beside --source (each in its own detected format), e.g. MBPP "
        "train beside CodeAlpaca; repeatable.",
    )
    mbpp_splits: list[Literal["train", "validation", "test", "prompt"]] = Field(
        default_factory=list,
        description="Keep only MBPP rows of these standard splits (by task_id; e.g. train); empty = all.",
    )
    format: Format = Field("auto", description="Dataset format; 'auto' detects it from the fields.")
    out: Path = Field(Path("runs/data"), description="Output dataset directory.")
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
    workers: int = Field(0, ge=0, description="Parse processes; 0 = number of cores.")


class PrepareCleaning(StrictModel):
    """Cleaning, deduplication, decontamination"""

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
    decontaminate: list[Path] = Field(default_factory=list, description="Extra HumanEval-style JSONL files.")
    builtin_eval_sets: bool = Field(
        True, description="Decontaminate against HumanEval and the MBPP test split."
    )
    ngram: int = Field(10, ge=3, description="Words in the runs that mark a record as contaminated.")
    min_overlap: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of one eval problem's distinctive words (or of its solution's) a record must "
        "reproduce, in runs of --ngram words, to be dropped.",
    )


class PrepareSplit(StrictModel):
    """Split"""

    split_by: Literal["file", "repo"] = Field("file", description="Unit that never straddles two splits.")
    valid_fraction: float = Field(0.05, ge=0, lt=1, description="Share of files (or repos) for validation.")
    test_fraction: float = Field(0.05, ge=0, lt=1, description="Share of files (or repos) for test.")
    seed: int = Field(0, description="Seed of the split.")


class PrepareTask(StrictModel):
    """Task view"""

    task: Task = Field(
        "docstring-to-body",
        description="Task view to build (problems: doctested functions → verified HumanEval problems).",
    )
    window: int = Field(256, ge=8, description="lm-windows: tokens per window (Autocoder: 256).")
    stride: int = Field(128, ge=1, description="lm-windows: tokens between window starts.")
    seq_len: int = Field(128, ge=2, description="char-stream: characters per sequence.")
    verify_timeout: float = Field(
        5.0, gt=0, description="problems: seconds per sandboxed run when verifying a mined problem."
    )
    template: Template = Field(
        "hust", description="instruction: HUST template, the model's chat template, or plain."
    )
    eval_format: bool = Field(
        False,
        description="instruction: ask as `evaluate` asks (a HumanEval-format problem: 'Complete the "
        "following Python function' + its prompt, answered without the docstring; MBPP: the text + its "
        "tests) and, with --template chat, answer in a fenced code block: train on the form it is scored in.",
    )
    tokenizer: str | None = Field(None, description="Zoo name or local tokenizer dir (lm-windows, chat).")
    train_tokenizer: bool = Field(False, description="Train a byte-level BPE on the train split.")
    vocab_size: int = Field(8192, ge=300, description="Vocabulary size of the trained BPE.")
    fim_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="lm-windows: share of windows rewritten for fill-in-the-middle (StarCoder: 0.5); "
        "0 = plain left-to-right windows.",
    )
    fim_spm_rate: float = Field(
        0.5, ge=0, le=1, description="lm-windows: share of FIM windows in SPM order (the rest PSM)."
    )


class PrepareConfig(PrepareSource, PrepareCleaning, PrepareSplit, PrepareTask):
    """`pycodegen prepare`: source → cleaned, deduplicated, decontaminated, split task view."""

    @model_validator(mode="after")
    def _fractions(self) -> PrepareConfig:
        if self.valid_fraction + self.test_fraction >= 1:
            raise ValueError("valid_fraction + test_fraction must leave something to train on (< 1)")
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} > window {self.window} would skip tokens")
        return self


# -- generate / evaluate ----------------------------------------------------------------------------------
class SamplingConfig(StrictModel):
    """Sampling"""

    prompt_mode: PromptMode = Field(
        "auto",
        description="How prompts are wrapped: raw, chat (the tokenizer's template), hust; auto = what a "
        "checkpoint was trained with, else chat when the tokenizer has a template, else raw.",
    )
    max_new_tokens: int = Field(128, ge=1, description="Tokens generated per sample.")
    temperature: float = Field(0.0, ge=0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    n: int = short("-n", 1, "Samples per prompt (or per problem).", ge=1)
    seed: int = Field(0, description="Sampling seed.")
    batch_size: int = Field(8, ge=1, description="Sequences decoded together.")


class ProblemSet(StrictModel):
    """Problems"""

    benchmark: Benchmark | None = Field(
        None, description="Built-in benchmark: humaneval, or mbpp (test split)."
    )
    problems: Path | None = Field(
        None, description="HumanEval-format JSONL of problems (instead of a benchmark)."
    )
    limit: int | None = Field(
        None, ge=1, description="Only the first N problems (smoke runs; the run says so)."
    )

    @model_validator(mode="after")
    def _one_problem_set(self) -> ProblemSet:
        if self.benchmark is not None and self.problems is not None:
            raise ValueError("give --benchmark or --problems, not both")
        return self


class EngineOptions(StrictModel):
    """Engine"""

    dtype: Literal["auto", "fp32", "bf16", "int8"] = Field(
        "auto",
        description="Decoding dtype: auto = bf16 on CUDA and AMX CPUs, else fp32; int8 = dynamic "
        "quantization of the Linear layers (CPU; faster, text changes slightly).",
    )
    threads: int | None = Field(
        None, ge=1, description="CPU threads for decoding; default: torch's (one per core)."
    )
    prompt_lookup: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Prompt-lookup speculative decoding: the most tokens a lone greedy request drafts from "
        "its own text and verifies in one forward pass (same text, fewer weight reads); 0 = off; "
        "default 2, 0 with --dtype int8 (whose text it would change).",
    )
    draft_heads: str | None = Field(
        None,
        description="Draft heads (`pycodegen draft-heads` OUT, or shipped heads' name) for speculative "
        "decoding where the prompt offers nothing to look up: a lone greedy request verifies their "
        "guesses in one pass (same text); fp32/bf16 Llama-architecture models; "
        "smollm2-135m-instruct-draft ships for the embedded model; default: none.",
    )


class GenerateConfig(SamplingConfig, ProblemSet, EngineOptions):
    """`pycodegen generate`: a model completes prompts, or every problem of a benchmark."""

    model: str = Field(
        "smollm2-135m-instruct", description="Zoo name, local HF directory, checkpoint or .gguf."
    )
    prompt: list[str] = short("-p", [], "Prompt text to complete; repeatable.")
    out: Path | None = Field(
        None, description="JSONL file for the samples (needed with --benchmark/--problems)."
    )
    overwrite: bool = Field(False, description="Replace an existing free-prompt --out file.")
    input: str | None = Field(
        None, description="File of prompts: one per line, or JSONL with a 'prompt' field; '-' = stdin."
    )
    format: Literal["text", "jsonl"] = Field(
        "text", description="Free prompts: completions on stdout as plain text, or one JSON row each."
    )
    stop: list[str] = Field(default_factory=list, description="Stop string (not returned); repeatable.")
    top_k: int = Field(0, ge=0, description="Sample among the k likeliest tokens only; 0 = off.")

    best_of: int | None = Field(
        None,
        ge=2,
        description="Free prompts: draw N samples and print one that passes the prompt's examples "
        "(>>> or f(x) ==> y) in the sandbox (highest mean log-probability; needs --temperature > 0).",
    )
    select: Literal["examples"] = Field("examples", description="How --best-of picks (see evaluate).")

    @model_validator(mode="after")
    def _best_of_samples(self) -> GenerateConfig:
        if self.best_of is not None and self.temperature <= 0:
            raise ValueError("--best-of draws several samples: give --temperature > 0 (e.g. 0.8)")
        if self.best_of is not None and (self.benchmark is not None or self.problems is not None):
            raise ValueError("--best-of is for free prompts; on a benchmark use `evaluate --best-of`")
        return self

    @model_validator(mode="after")
    def _benchmark_needs_out(self) -> GenerateConfig:
        if (self.benchmark is not None or self.problems is not None) and self.out is None:
            raise ValueError("--benchmark/--problems needs --out samples.jsonl")
        if self.limit is not None and self.benchmark is None and self.problems is None:
            raise ValueError("--limit applies to --benchmark/--problems")
        return self


class ExecutorConfig(StrictModel):
    """Sandbox"""

    workers: int = Field(0, ge=0, description="Sandboxed workers; 0 = number of cores.")
    timeout: float = Field(10.0, gt=0, description="Wall-clock seconds per sample.")
    memory_mb: int = Field(1024, ge=64, description="Memory per sample, MiB.")


class EvaluateConfig(SamplingConfig, ProblemSet, ExecutorConfig):
    """`pycodegen evaluate`: run samples (or a model's generations) against a benchmark's tests."""

    samples: Path | None = positional("A samples.jsonl to score (or use --model).", None)
    model: str | None = Field(None, description="Generate the samples with this model first.")
    out: Path = Field(Path("runs/eval"), description="Run directory: verdicts, results.json, report.md.")
    max_new_tokens: int = Field(384, ge=1, description="Tokens generated per sample.")
    examples: bool = Field(
        True, description="Also run the prompt's examples, >>> or f(x) ==> y (filtered pass@1)."
    )
    encoder: str | None = Field(None, description="CodeBERTScore encoder: 'minilm' or a local directory.")
    best_of: int | None = Field(
        None,
        ge=2,
        description="Also score selection by execution: of each problem's first N samples, one that passes "
        "the prompt's examples, >>> or f(x) ==> y (highest mean log-probability); with --model, at least N "
        "are drawn.",
    )
    select: Literal["examples"] = Field(
        "examples",
        description="How --best-of picks: examples = the prompt's examples (>>> or f(x) ==> y), in the "
        "sandbox.",
    )

    @model_validator(mode="after")
    def _best_of_needs_examples(self) -> EvaluateConfig:
        if self.best_of is not None and not self.examples:
            raise ValueError("--best-of selects by the prompt's examples: drop --no-examples")
        return self


class SelfTrainConfig(SamplingConfig, ExecutorConfig):
    """`pycodegen self-train`: rounds of sample → judge → keep what passed → fine-tune → dev pass@1."""

    model: str = Field(
        "smollm2-135m-instruct", description="The model to start from (zoo name or checkpoint)."
    )
    out: Path = Field(Path("runs/self-train"), description="Run directory: one folder per round.")
    problems: list[Path] = Field(
        [],
        description="HumanEval-format problem files for the pool (`prepare --task problems`); repeatable.",
    )
    sample_model: str | None = Field(
        None,
        description="Draw round 0's samples with this model instead of --model (e.g. a fine-tune that "
        "writes well-formed code more often); each round still fine-tunes --model, and a round must beat "
        "the better of the two on dev.",
    )
    mbpp: bool = Field(True, description="Put MBPP's train split (374 problems) in the pool.")
    dev: Path | None = Field(None, description="Dev problems (HumanEval format); default: MBPP validation.")
    pool_limit: int | None = Field(None, ge=1, description="Only the first N pool problems (smoke runs).")
    dev_limit: int | None = Field(None, ge=1, description="Only the first N dev problems (smoke runs).")
    data: Path | None = Field(
        None, description="An instruction dataset from `prepare` mixed into every round's training data."
    )
    rounds: int = Field(3, ge=1, description="Most rounds; stops earlier when dev pass@1 stops improving.")
    n: int = short("-n", 8, "Samples per pool problem per round.", ge=1)
    temperature: float = Field(0.8, ge=0, description="Sampling temperature for the pool.")
    max_new_tokens: int = Field(256, ge=1, description="Tokens generated per sample.")
    keep_per_problem: int = Field(4, ge=1, description="Most kept (distinct) passing samples per problem.")
    mode: Literal["full", "lora"] = Field("lora", description="How each round fine-tunes the start model.")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate of each round's fine-tune.")
    train_steps: int = Field(200, ge=1, description="Optimizer steps per round (or the round budget rules).")
    train_batch_size: int = Field(8, ge=1, description="Examples per micro-batch.")
    train_budget: str | None = Field(None, description="Time per round's fine-tune: 90s, 10m.")
    train_config: Path | None = Field(
        None,
        description="A YAML file of further `train` settings for each round's fine-tune (lora_r, "
        "target_modules, max_length, drop_long, group_by_length, dtype, ...: train's flags with _).",
    )
    budget: str | None = Field(
        None, description="Stop cleanly after this long (rounds already run are kept)."
    )

    @field_validator("budget", "train_budget")
    @classmethod
    def _budgets(cls, value: str | None) -> str | None:
        return valid_budget(value)


# -- train ------------------------------------------------------------------------------------------------
class ModelSpec(StrictModel):
    """Model"""

    family: str = Field(..., description="Model family: char-rnn, seq2seq, retrieval, hf-causal, hf-seq2seq.")
    model: str | None = Field(
        None, description="Zoo name, local dir, a checkpoint, or new:gpt2 / new:llama / new:t5."
    )
    model_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Architecture sizes KEY=VALUE (e.g. n_layer=4); repeatable.",
        json_schema_extra={"cli_short": "--model-arg"},
    )
    mode: Literal["full", "lora", "qlora"] = Field(
        "full", description="What is trained: all weights, LoRA adapters, or QLoRA (CUDA only)."
    )
    dtype: Literal["fp32", "bf16"] = Field("fp32", description="bf16 = autocast (AMX on this CPU).")
    fused_loss: bool = Field(
        True,
        description="hf-causal: output layer + cross-entropy in chunks, never the full logits (same loss, "
        "less memory, faster); off = the model's own loss.",
    )
    max_length: int = Field(512, ge=8, description="Tokens per example (longer ones are cut).")
    drop_long: bool = Field(
        False,
        description="hf-causal prompt/target rows longer than --max-length are left out of training "
        "instead of cut (a cut row loses its answer's end, or all of it); the count is printed.",
    )


class OptimConfig(StrictModel):
    """Optimizer"""

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
    batch_size: int = Field(8, ge=1, description="Examples per micro-batch per process.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    group_by_length: bool = Field(
        False,
        description="Batch examples of similar length together (within windows of 64 batches, batch "
        "order still shuffled): less padding, so faster steps when lengths vary.",
    )


class LoopConfig(StrictModel):
    """Loop"""

    data: Path = Field(Path("runs/data"), description="A dataset directory from `pycodegen prepare`.")
    out: Path = Field(Path("runs/train"), description="Run directory: checkpoints, metrics.jsonl.")
    max_steps: int = Field(
        200, ge=1, description="Optimizer steps; with --budget and no --max-steps, the budget rules."
    )
    budget: str | None = Field(None, description="Stop cleanly after this long: 90s, 10m, 2h.")
    resume: bool = Field(False, description="Continue from the run directory's last checkpoint.")
    seed: int = Field(0, description="Seed for initialisation, data order and dropout.")
    log_every: int = Field(10, ge=1, description="Steps between metrics.jsonl lines.")
    save_every: int = Field(100, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1, description="Step checkpoints kept (plus best and final).")

    @field_validator("budget")
    @classmethod
    def _budget(cls, value: str | None) -> str | None:
        return valid_budget(value)


class LoraConfig(StrictModel):
    """LoRA and freezing"""

    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha.")
    lora_dropout: float = Field(
        0.0, ge=0, lt=1, description="LoRA dropout (PEFT's default 0; 0.05 costs ~20% of a CPU step)."
    )
    target_modules: list[str] | None = Field(
        None, description="LoRA target module; repeatable (default: per architecture)."
    )
    freeze: list[str] = Field(
        default_factory=list, description="Regex of parameter names to freeze; repeatable."
    )
    unfreeze: list[str] = Field(
        default_factory=list, description="Regex of parameters re-enabled after --freeze; repeatable."
    )


class DevEvalConfig(StrictModel):
    """Validation and dev evaluation"""

    eval_every: int = Field(100, ge=1, description="Steps between validation passes.")
    eval_batches: int = Field(20, ge=1, description="Validation batches per pass.")
    eval_samples: int = Field(8, ge=0, description="Dev rows generated per pass (pass@1 / BLEU); 0 = off.")
    eval_max_new_tokens: int = Field(128, ge=1, description="Tokens generated per dev row.")
    eval_beams: int = Field(
        1, ge=1, description="Beam width of dev generation (seq2seq and hf-seq2seq); 1 = greedy."
    )
    best_metric: str = Field(
        "auto",
        description="Metric of the best checkpoint; auto = dev_pass@1 when the dev rows have tests "
        "(valid loss when it never moves), MRR for retrieval, else valid_loss.",
    )


class TrainConfig(ModelSpec, OptimConfig, LoopConfig, LoraConfig, DevEvalConfig):
    """`pycodegen train`: one accelerate-based loop for every model family."""

    @model_validator(mode="after")
    def _mode_settings(self) -> TrainConfig:
        if self.unfreeze and not self.freeze:
            raise ValueError("--unfreeze re-enables parameters that --freeze froze: give --freeze too")
        if self.target_modules and self.mode == "full":
            raise ValueError("--target-modules are LoRA targets: use --mode lora (or qlora)")
        if self.eval_beams > 1 and self.family not in ("seq2seq", "hf-seq2seq"):
            raise ValueError(
                "--eval-beams > 1: beam search is for the encoder-decoders (seq2seq, hf-seq2seq)"
            )
        return self


# -- the smaller verbs ------------------------------------------------------------------------------------
class SearchConfig(StrictModel):
    """`pycodegen search`: find the functions of a prepared corpus that match a query."""

    query: str = positional("What the function should do, in words.")
    model: Path = Field(..., description="A trained retrieval checkpoint (RUN/final or RUN/best).")
    corpus: Path = Field(..., description="A docstring-to-body dataset directory to search.")
    top: int = Field(5, ge=1, description="How many functions to show.")


class ExportConfig(StrictModel):
    """`pycodegen export`: a checkpoint → a plain HF-format directory, LoRA merged."""

    checkpoint: Path = positional("A checkpoint directory (RUN/final, RUN/best, ...).")
    out: Path = Field(
        ..., description="Where to write the plain HF-format model (with --zoo: the zoo directory)."
    )
    zoo: bool = Field(
        False,
        description="Write a LoRA checkpoint as a zoo model pycodegen ships instead (not merged): the "
        "adapter in float16, its sha256 in the card, MODEL_CARD.md; OUT's last part is the zoo name.",
    )
    model_card: Path | None = Field(
        None, description="With --zoo: the model card's markdown (data, recipe, figures, licences)."
    )

    @model_validator(mode="after")
    def _zoo_card(self) -> ExportConfig:
        if self.zoo != (self.model_card is not None):
            raise ValueError("--zoo and --model-card go together: a shipped model needs its model card")
        return self


class DraftHeadsConfig(StrictModel):
    """`pycodegen draft-heads`: train draft heads (Medusa) for a model's speculative decoding."""

    model: str = positional(
        "Zoo name, local HF directory, checkpoint or .gguf (default: the embedded model).",
        "smollm2-135m-instruct",
    )
    out: Path = Field(..., description="Directory for the heads, their card and the model's answers.")
    problems: list[Path] = Field(
        [],
        description="HumanEval-format problems whose instructions the model also answers (repeatable; "
        "default: MBPP's train, validation and prompt splits only).",
    )
    limit: int | None = Field(None, ge=1, description="Only the first N instructions.")
    heads: int = Field(2, ge=1, le=8, description="Draft heads: tokens guessed per pass.")
    epochs: int = Field(2, ge=1, description="Passes over the answers' positions.")
    max_new_tokens: int = Field(192, ge=8, description="Longest answer the model writes per instruction.")
    batch_size: int = Field(16, ge=1, description="Instructions answered together.")
    threads: int | None = Field(None, ge=1, description="CPU threads; default: torch's (one per core).")


class ModelsConfig(StrictModel):
    """`pycodegen models`: the zoo names, what each is, and whether it is installed."""


class ReportConfig(StrictModel):
    """`pycodegen report`: evaluation runs side by side."""

    runs: list[Path] = positional("Evaluation run directories (or results.json files).")
    out: Path | None = Field(None, description="Also write the comparison (markdown) here.")
    allow_mismatch: bool = Field(
        False, description="Compare runs whose problems, prompt mode or decoding differ (flagged)."
    )


class RunConfig(StrictModel):
    """`pycodegen run`: a recipe's stages in order."""

    recipe: Path = positional("YAML recipe.")
    force: bool = Field(False, description="Rerun stages that are already done.")
    scale: Scale = Field(
        "tiny",
        description="smoke = seconds (tests), tiny = this 2-core CPU, paper = the published settings (GPUs).",
    )
    out: Path | None = Field(None, description="Run directory instead of the recipe's `out`.")
    source: str | None = Field(None, description="Source of the recipe's prepare stage instead of its own.")
    budget: str | None = Field(None, description="Training budget instead of the recipe's (e.g. 5m).")


class RecipeVariant(StrictModel):
    """One row of a recipe's table: a model taken as it is (`model`), or trained with the recipe's
    stage settings plus this row's overrides; every row is evaluated the same way."""

    model: str | None = Field(None, description="Evaluate this model as it is (no training): a baseline row.")
    prepare: dict[str, Any] = Field(default_factory=dict, description="Overrides of the prepare settings.")
    train: dict[str, Any] = Field(default_factory=dict, description="Overrides of the train settings.")
    generate: dict[str, Any] = Field(default_factory=dict, description="Overrides of the generate settings.")
    evaluate: dict[str, Any] = Field(
        default_factory=dict, description="Overrides applied to every evaluation of this row."
    )
    evaluations: list[str] | None = Field(
        None, description="Names of the evaluations this row gets (default: all)."
    )

    @model_validator(mode="after")
    def _model_or_train(self) -> RecipeVariant:
        if self.model is not None and (self.train or self.prepare):
            raise ValueError("a row with `model` is evaluated as it is: drop its prepare/train overrides")
        return self


# -- serve ------------------------------------------------------------------------------------------------
class ServeConfig(EngineOptions):
    """`pycodegen serve`: an OpenAI-compatible HTTP server (and playground) over one model."""

    model: str = positional(
        "Zoo name, local HF directory, checkpoint or .gguf (default: the embedded model).",
        "smollm2-135m-instruct",
    )
    host: str = Field("127.0.0.1", description="Interface to listen on (0.0.0.0 = every interface).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    api_key: str | None = Field(
        None,
        description="Require 'Authorization: Bearer KEY' on every route but /health and the playground "
        "page; default: $PYCODEGEN_API_KEY if set (keeps the key out of the process list).",
    )
    max_prompt_tokens: int = Field(2048, ge=1, description="Longest prompt accepted, in tokens.")
    max_tokens: int = Field(512, ge=1, description="Cap on max_tokens (and n_predict) per request.")
    max_n: int = Field(8, ge=1, description="Cap on n (choices per request).")
    max_batch: int = Field(8, ge=1, description="Sequences decoded together in the running batch.")
    queue_size: int = Field(
        32, ge=0, description="Requests that may wait beyond --max-batch; more in flight get HTTP 429."
    )
    request_timeout: float = Field(120.0, gt=0, description="Seconds a request may take, queue included.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (HTTP 413).")
    shutdown_timeout: float = Field(
        10.0, ge=0, description="On SIGTERM, seconds in-flight requests get to finish before being cancelled."
    )
    select_examples: bool = Field(
        False,
        description='Allow best_of with select "examples": samples run against the prompt\'s examples '
        "(>>> or one-line) in the sandbox (needs root, or PYCODEGEN_UNSAFE_SANDBOX=1); off, such requests "
        "get HTTP 400.",
    )


class RecipeConfig(StrictModel):
    """A YAML recipe: the stages `pycodegen run` executes in order, each optional."""

    name: str = Field(..., description="Recipe name, used in reports.")
    out: Path = Field(Path("runs/recipe"), description="Run directory; stages write below it.")
    description: str = Field("", description="What the recipe reproduces (paper, published numbers).")
    prepare: PrepareConfig | None = None
    generate: GenerateConfig | None = None
    train: TrainConfig | None = None
    evaluate: EvaluateConfig | None = None
    evaluations: dict[str, EvaluateConfig] = Field(
        default_factory=dict, description="More named evaluations, each run for every row."
    )
    variants: dict[str, RecipeVariant] = Field(
        default_factory=dict, description="Rows of the table (base model, full FT, LoRA...); default one."
    )
    published: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="The paper's numbers, by row, shown beside ours in report.md."
    )
    analyses: list[Literal["novelty", "memorisation"]] = Field(
        default_factory=list,
        description="Report sections: novelty (generated bodies' n-grams vs the training bodies), "
        "memorisation (longest piece of each completion found verbatim in a training file).",
    )
    scales: dict[Scale, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-scale overrides (a partial recipe merged in); the recipe itself is `tiny`.",
    )
    serve: dict[str, Any] | None = Field(
        None,
        description="Serve when the stages are done (ServeConfig fields; model = the last trained one).",
    )

    @model_validator(mode="after")
    def _rows_validate(self) -> RecipeConfig:
        """Each row's overrides make valid stage settings (checked here, not first at run time)."""
        try:
            self._check_rows()
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return self

    def _check_rows(self) -> None:
        stages = {"prepare": PrepareConfig, "train": TrainConfig, "generate": GenerateConfig}
        for name, variant in self.variants.items():
            for stage, cls in stages.items():
                override = getattr(variant, stage)
                base = getattr(self, stage)
                if override and base is None and stage != "train":
                    raise ValueError(f"variants.{name}.{stage}: the recipe has no {stage} stage to override")
                if override or (stage == "train" and base is not None and variant.model is None):
                    merged = (base.model_dump(exclude_unset=True) if base is not None else {}) | override
                    parse_config(cls, merged, where=f"variants.{name}.{stage}")
            known = {"evaluate", *self.evaluations} if self.evaluate is not None else set(self.evaluations)
            for evaluation in variant.evaluations or []:
                if evaluation not in known:
                    raise ValueError(f"variants.{name}.evaluations: no evaluation named {evaluation!r}")
            for evaluation in self.evaluation_configs().values():
                merged = evaluation.model_dump(exclude_unset=True) | variant.evaluate
                parse_config(EvaluateConfig, merged, where=f"variants.{name}.evaluate")

    def evaluation_configs(self) -> dict[str, EvaluateConfig]:
        """Every evaluation by name: `evaluate` (named 'evaluate') first, then `evaluations`."""
        return ({"evaluate": self.evaluate} if self.evaluate is not None else {}) | self.evaluations


def merge_settings(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into `base`: mappings merge key by key, any other value replaces.

    >>> merge_settings({"train": {"lr": 1, "max_steps": 9}}, {"train": {"max_steps": 2}, "out": "x"})
    {'train': {'lr': 1, 'max_steps': 2}, 'out': 'x'}
    """
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    ...     parse_config(ExecutorConfig, {"timout": 5})
    ... except ConfigError as exc:
    ...     print(exc)
    config: unknown key 'timout'; valid keys: memory_mb, timeout, workers
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
                msg = err["msg"].removeprefix("Value error, ")
                messages.append(f"{dotted}: {msg}" if dotted else msg)
        raise ConfigError(f"{where}: " + "; ".join(messages)) from None


def _load_yaml(path: Path, what: str = "") -> Any:
    """A YAML file's content; an unreadable file or invalid YAML is a ConfigError naming the file."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what}{path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def read_config_file(path: Path | None) -> dict[str, Any]:
    """The settings in a YAML settings file (`--config`, `--train-config`; empty without one); errors name
    the file."""
    if path is None:
        return {}
    data = _load_yaml(Path(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values")
    return data


def load_recipe(path: Path, scale: str | None = None) -> RecipeConfig:
    """Read a YAML recipe at a scale (None: the recipe as written, i.e. tiny); every scale it defines is
    validated too, so a broken `paper` scale is an error at any scale. Errors name the file and scale."""
    data = _load_yaml(path, what="recipe ")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of stage names to settings")
    recipe = parse_config(RecipeConfig, data, where=str(path))
    chosen = recipe
    for name, override in recipe.scales.items():
        scaled = parse_config(RecipeConfig, merge_settings(data, override), where=f"{path} (scale {name})")
        if name == scale:
            chosen = scaled
    if scale not in (None, "tiny") and scale not in recipe.scales:
        defined = ", ".join(["tiny", *recipe.scales]) if recipe.scales else "tiny only"
        raise ConfigError(f"{path}: no {scale!r} scale (it has {defined}); add `scales: {{{scale}: ...}}`")
    return chosen
