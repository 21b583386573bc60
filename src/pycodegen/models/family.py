"""The model-family protocol the trainer drives: how a family builds or loads its model, turns a dataset
row into token ids and a batch into a loss, and saves a checkpoint directory that describes itself.

Every checkpoint a family saves holds its weights and tokenizer in HF-style files plus a `pycodegen.json`
card (family, architecture, tokenizer, LoRA adapter and base, training config, prompt format), so that
`pycodegen.models.checkpoint.load_checkpoint` rebuilds it from the directory alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from pycodegen import __version__
from pycodegen.errors import ConfigError, unknown_name
from pycodegen.jsonl import write_json
from pycodegen.zoo import ADAPTER_FILE, CARD_FILE

if TYPE_CHECKING:
    from pycodegen.config import TrainConfig

CARD_FORMAT = 1  # bumped when a card field changes meaning
BASE_DIR = "base"  # where a LoRA checkpoint keeps a base model that exists nowhere else (new:...)


class Family:
    """Base class: every hook has a default or raises with a clear message."""

    name: ClassVar[str] = ""
    views: ClassVar[tuple[str, ...]] = ()  # task views this family trains on
    lora_targets: ClassVar[list[str]] = []  # default LoRA target modules
    generates: ClassVar[bool] = False  # whether prompts → text (for generation metrics during training)
    # Which tokens `count_tokens` counts (tokens/s in metrics.jsonl and the bar says so).
    tokens_counted: ClassVar[str] = "target"
    tokenizer_file: ClassVar[str] = "."  # where, inside a checkpoint, the tokenizer or vocabulary is

    def __init__(self, cfg: TrainConfig, manifest: dict[str, Any], data_dir: Path) -> None:
        self.cfg = cfg
        self.manifest = manifest
        self.data_dir = data_dir
        self.model: torch.nn.Module | None = None
        if manifest.get("task") not in self.views:
            raise ConfigError(
                f"family {self.name!r} trains on {', '.join(self.views)} datasets, but {data_dir} is "
                f"{manifest.get('task')!r}; prepare one with `pycodegen prepare --task {self.views[0]}`"
            )

    @classmethod
    def default_overrides(cls) -> dict[str, Any]:
        """Training settings this family needs instead of the global defaults (applied by
        `pycodegen.models.registry.apply_family_defaults` to the settings the user did not give)."""
        return {}

    def setup(self) -> None:
        """Load the tokenizer/vocabulary and build or load the model into `self.model`."""
        raise NotImplementedError

    def setup_from_checkpoint(self, directory: Path, card: dict[str, Any]) -> None:
        """Load the tokenizer/vocabulary and the trained model from a checkpoint directory alone."""
        raise NotImplementedError(f"family {self.name!r} cannot load checkpoints")

    def encode(self, row: dict[str, Any]) -> dict[str, list[int]] | None:
        """One dataset row → `input_ids` and `labels` (-100 where no loss is taken); None = leave the
        row out (a family that honours `drop_long`, for a row over `max_length`)."""
        raise NotImplementedError

    def collate(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        """Right-pad a list of encoded examples into tensors."""
        lengths = torch.tensor([len(e["input_ids"]) for e in examples])
        ids = pad_field(examples, "input_ids", self.pad_id)
        mask = (
            torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        ).long()  # not ids != pad: pad may be EOS
        return {"input_ids": ids, "labels": pad_field(examples, "labels", -100), "attention_mask": mask}

    @property
    def pad_id(self) -> int:
        return 0

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy over the label tokens of the batch."""
        raise NotImplementedError

    def pack(self, examples: list[dict[str, list[int]]]) -> list[dict[str, list[int]]]:
        """Training examples as batched (default: unchanged)."""
        return examples

    def count_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Tokens the batch trains on (for tokens/s and loss weighting)."""
        return int((batch["labels"] != -100).sum())

    def evaluate(self, model: torch.nn.Module, rows: list[dict[str, Any]]) -> dict[str, float]:
        """Family-specific validation metrics beyond loss (e.g. MRR for retrieval)."""
        return {}

    def notes(self, metrics: dict[str, Any]) -> list[str]:
        """Warnings about validation metrics for the training summary (e.g. a retrieval MRR at chance)."""
        return []

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """A checkpoint directory: the family's files (`save_files`) and the pycodegen.json card."""
        directory.mkdir(parents=True, exist_ok=True)
        self.save_files(model, directory)
        write_json(directory / CARD_FILE, self.card(model))

    def save_files(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the weights and tokenizer/vocabulary in HF style (config + safetensors)."""
        raise NotImplementedError

    def card(self, model: torch.nn.Module) -> dict[str, Any]:
        """What the checkpoint is, for loading it from the directory alone."""
        options = self.manifest.get("options") or {}
        task = self.manifest.get("task")
        template = options.get("template") if task == "instruction" else None
        adapter = None
        if is_adapter(model):
            adapter = {"kind": "lora", "base_model": self.base_reference()}
        return {
            "card_format": CARD_FORMAT,
            "pycodegen_version": __version__,
            **self.architecture(model),
            "tokenizer": self.tokenizer_file,
            "adapter": adapter,
            "dataset": {
                "task": task,
                "template": template,
                "dataset_sha256": self.manifest.get("dataset_sha256"),
            },
            "prompt_mode": prompt_mode_of(task, template),
            "train_config": json.loads(self.cfg.model_dump_json()),
        }

    def architecture(self, model: torch.nn.Module) -> dict[str, Any]:
        """family, model_type and architecture (the model class) for the card."""
        base = model.get_base_model() if is_adapter(model) else model  # type: ignore[operator]
        config = getattr(base, "config", None)
        model_type = (
            config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
        )
        return {"family": self.name, "model_type": model_type, "architecture": type(base).__name__}

    def model_reference(self) -> str | None:
        """The model the family starts from (`--model`, or the family's default)."""
        return self.cfg.model

    def base_reference(self) -> str | None:
        """The base model of a LoRA adapter as the card records it: a zoo name, an absolute directory, or
        BASE_DIR when the base was built here (`new:...`) and `save_files` wrote it into the checkpoint."""
        ref = self.model_reference()
        if ref is None or ref.startswith("new:"):
            return BASE_DIR if ref else None
        path = Path(ref).expanduser()
        return str(path.resolve()) if path.exists() else ref

    def load_weights(self, model: torch.nn.Module, directory: Path) -> None:
        """Load a checkpoint's weights into `model` in place (a LoRA adapter, or the full state)."""
        if (directory / ADAPTER_FILE).is_file():
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(directory / ADAPTER_FILE)))
            return
        load_full_state(model, directory)

    # Families whose `generate` takes beams > 1 (the encoder-decoders); the config validator checks it.
    beam_search: ClassVar[bool] = False

    def generate(
        self, model: torch.nn.Module, prompts: list[str], max_new_tokens: int, beams: int = 1
    ) -> list[str]:
        """One greedy (or, where `beam_search`, beam-searched) continuation per formatted prompt."""
        raise NotImplementedError(f"family {self.name!r} has no text generation")

    def describe(self) -> dict[str, Any]:
        return {"family": self.name}

    def lora_options(self) -> dict[str, Any]:
        """Extra PEFT LoraConfig settings this family's data needs (e.g. trainable token rows)."""
        return {}


def is_adapter(model: torch.nn.Module) -> bool:
    """Whether `model` is a PEFT model (LoRA adapters over a base)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def prompt_mode_of(task: str | None, template: str | None) -> str:
    """The generate/evaluate prompt mode matching the prompts a model was trained on.

    >>> prompt_mode_of("instruction", "hust"), prompt_mode_of("instruction", "plain")
    ('hust', 'raw')
    >>> prompt_mode_of("docstring-to-body", None)
    'raw'
    """
    if task == "instruction" and template in ("hust", "chat"):
        return template
    return "raw"


def load_full_state(model: torch.nn.Module, directory: Path) -> None:
    """Load model.safetensors (or its shards) into `model`; weights tied to a loaded one (an output
    layer tied to the embedding) may be absent, anything else missing or unexpected is an error."""
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    files = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else ["model.safetensors"]
    )
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_file(str(directory / name)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {params[k].data_ptr() for k in state if k in params}
    untied = [k for k in missing if k not in params or params[k].data_ptr() not in loaded]
    if unexpected or untied:
        raise ConfigError(
            f"{directory}: checkpoint does not fit the model (missing {untied[:3]}, "
            f"unexpected {unexpected[:3]})"
        )


def check_model_args(family: str, args: dict[str, Any], valid: set[str] | list[str]) -> None:
    """Refuse an architecture argument the model does not have (`cel=gru` would otherwise be ignored).

    >>> check_model_args("char-rnn", {"cel": "gru"}, ["cell", "n_layer"])
    Traceback (most recent call last):
    ...
    pycodegen.errors.ConfigError: unknown char-rnn model argument 'cel'; valid: cell, n_layer
    """
    for key in args:
        if key not in valid:
            raise unknown_name(f"{family} model argument", key, sorted(valid))


def pad_field(examples: list[dict[str, list[int]]], key: str, value: int) -> torch.Tensor:
    """The `key` lists of a batch, right-padded with `value` to the longest: (B, T).

    >>> pad_field([{"x": [1, 2]}, {"x": [3]}], "x", 0).tolist()
    [[1, 2], [3, 0]]
    """
    width = max(len(e[key]) for e in examples)
    return torch.tensor([e[key] + [value] * (width - len(e[key])) for e in examples])


def save_module(model: torch.nn.Module, directory: Path) -> None:
    """A pycodegen-native model as an HF-style directory: model.safetensors + config.json (its `config`)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    # clone(): shared weights (a tied embedding) become separate tensors, which safetensors can save
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"))
    write_json(directory / "config.json", model.config)  # type: ignore[arg-type]


def read_model_config(directory: Path) -> dict[str, Any]:
    """config.json of a pycodegen-native checkpoint."""
    path = directory / "config.json"
    if not path.is_file():
        raise ConfigError(f"{directory} has no config.json: not a checkpoint of this family")
    return json.loads(path.read_text())
