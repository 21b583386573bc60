"""`pycodegen export`: a training checkpoint → a plain HF-format directory, LoRA adapters merged in; or,
with `--zoo`, a LoRA checkpoint → a directory pycodegen ships as a zoo model (`ship`).

The checkpoint is rebuilt from its own directory (its pycodegen.json card), so a checkpoint copied to
another place, without the dataset it was trained on, still exports.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pycodegen.errors import ConfigError
from pycodegen.jsonl import write_json
from pycodegen.models.checkpoint import load_checkpoint, read_card
from pycodegen.models.family import is_adapter
from pycodegen.zoo import (
    ADAPTER_FILE,
    CARD_FILE,
    CAUSAL_FAMILY,
    MODEL_CARD_FILE,
    ZOO,
    file_sha256,
    model_path,
)

MAX_ADAPTER_BYTES = 30_000_000  # issue 14: a shipped adapter is at most 30 MB
# What a shipped LoRA checkpoint needs besides its adapter and card: PEFT's adapter config and the
# tokenizer files (whichever the tokenizer wrote). Training state, PEFT's README and the like stay behind.
SHIPPED_FILES = (
    "adapter_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
FP16_MAX = 65504.0  # the largest finite float16


def export(checkpoint: Path, out: Path) -> Path:
    """Load the checkpoint (base + adapter for LoRA), merge any adapter, and save the model to `out`."""
    family, model = load_checkpoint(Path(checkpoint))
    if is_adapter(model):
        model = model.merge_and_unload()  # type: ignore[operator]
    family.save(model, Path(out))  # with its card: an exported directory still says what it is
    return Path(out)


def ship(checkpoint: Path, out: Path, model_card: Path) -> dict[str, Any]:
    """Write a LoRA checkpoint of the hf-causal family as a shipped zoo directory `out` (its name is the
    zoo name): the adapter halved to float16 (bfloat16 if a weight would overflow float16; PEFT loads it
    back into the base's dtype), its sha256 in the card (`adapter_sha256`, checked on every load), the
    tokenizer files, and MODEL_CARD.md = `model_card`'s text + the list of what was shipped. Refuses an
    adapter over 30 MB, a full-weights checkpoint, and a base that exists only on this machine's run.
    Returns the card written."""
    checkpoint, out = model_path(str(checkpoint)), Path(out)
    card = read_card(checkpoint)
    base = str((card.get("adapter") or {}).get("base_model") or "")
    if card["family"] != CAUSAL_FAMILY or not base:
        raise ConfigError(
            f"{checkpoint / CARD_FILE}: only LoRA checkpoints of the hf-causal family ship as zoo models "
            "(the shipped part is the adapter; its base is a zoo model)"
        )
    if base not in ZOO and not Path(base).is_absolute():
        raise ConfigError(
            f"{checkpoint / CARD_FILE}: the adapter's base {base!r} was built by the training run; a "
            "shipped adapter must adapt a zoo model (train with --model ZOO-NAME)"
        )
    if not Path(model_card).is_file():
        raise ConfigError(
            f"{model_card}: no such model card file (markdown: data, recipe, figures, licences)"
        )
    if out.exists():
        raise ConfigError(f"{out} exists; remove it first (a shipped directory is written whole)")
    for name in ("adapter_config.json", ADAPTER_FILE):
        if not (checkpoint / name).is_file():
            raise ConfigError(f"{checkpoint / name} is missing: not a whole LoRA checkpoint")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in SHIPPED_FILES:
        if (checkpoint / name).is_file():
            shutil.copyfile(checkpoint / name, partial / name)
    dtype = _write_half(checkpoint / ADAPTER_FILE, partial / ADAPTER_FILE)
    size = (partial / ADAPTER_FILE).stat().st_size
    if size > MAX_ADAPTER_BYTES:
        shutil.rmtree(partial)
        raise ConfigError(
            f"{checkpoint / ADAPTER_FILE}: {size / 1e6:.1f} MB in {dtype}, over the "
            f"{MAX_ADAPTER_BYTES / 1e6:.0f} MB a shipped adapter may take; train a smaller one (lower "
            "--lora-r or fewer --target-modules)"
        )
    shipped = {
        **card,
        "adapter_sha256": file_sha256(partial / ADAPTER_FILE),
        "zoo": {"name": out.name, "adapter_dtype": dtype, "adapter_bytes": size},
    }
    write_json(partial / CARD_FILE, shipped)
    peft = json.loads((partial / "adapter_config.json").read_text(encoding="utf-8"))
    section = _shipped_section(shipped, sorted(peft.get("target_modules") or []))
    text = Path(model_card).read_text(encoding="utf-8").rstrip() + "\n\n" + section
    (partial / MODEL_CARD_FILE).write_text(text, encoding="utf-8")
    partial.replace(out)
    return shipped


def _write_half(source: Path, target: Path) -> str:
    """Save a safetensors adapter with its float weights in float16 (bfloat16 when one would overflow
    float16's range); returns the dtype's name."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata() or {"format": "pt"}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    floats = [t for t in state.values() if t.is_floating_point()]
    fits = all(float(t.abs().max()) <= FP16_MAX for t in floats if t.numel())
    half = torch.float16 if fits else torch.bfloat16
    save_file(
        {k: (t.to(half) if t.is_floating_point() else t).contiguous() for k, t in state.items()},
        str(target),
        metadata=metadata,
    )
    return str(half).removeprefix("torch.")


def _shipped_section(card: dict[str, Any], targets: list[str]) -> str:
    """The generated end of MODEL_CARD.md: what the directory holds, how it loads, how to check it."""
    config = card.get("train_config") or {}
    dataset = card.get("dataset") or {}
    zoo = card["zoo"]
    return "\n".join(
        [
            "## Shipped files",
            "",
            f"Written by `pycodegen export --zoo` (pycodegen {card.get('pycodegen_version')}).",
            "",
            f"- zoo name: `{zoo['name']}`; base model: `{card['adapter']['base_model']}` (the LoRA adapter "
            "is applied over it when loaded, not merged)",
            f"- `{ADAPTER_FILE}`: LoRA r={config.get('lora_r')}, alpha={config.get('lora_alpha')}, "
            f"targets {', '.join(targets)}; {zoo['adapter_dtype']}, {zoo['adapter_bytes']:,} bytes",
            f"- sha256 `{card['adapter_sha256']}`, recorded in `{CARD_FILE}` as `adapter_sha256` and "
            "checked on every load (`sha256sum adapter_model.safetensors` prints it)",
            f"- prompt mode `{card.get('prompt_mode')}` (what `--prompt-mode auto` uses); trained on task "
            f"`{dataset.get('task')}`, template `{dataset.get('template')}`, dataset sha256 "
            f"`{dataset.get('dataset_sha256')}`",
            f"- training: mode {config.get('mode')}, max_steps {config.get('max_steps')}, budget "
            f"{config.get('budget')}, lr {config.get('lr')}, batch {config.get('batch_size')} × "
            f"{config.get('grad_accum')}, seed {config.get('seed')} (all settings: `{CARD_FILE}`)",
            "",
        ]
    )
