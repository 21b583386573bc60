"""Fill-in-the-middle prompts: the text a FIM-trained model continues with the missing middle, built from
the checkpoint card's FIM record (`prepare --fim-rate`, pycodegen.data.fim) or from a tokenizer that has
StarCoder's sentinels. A model with neither was not trained for FIM: asking it is an error, never a fake.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pycodegen.errors import PycodegenError
from pycodegen.models.hf import FIM_TOKENS

__all__ = ["FimUnsupported", "fim_prompt", "fim_spec"]


class FimUnsupported(PycodegenError):
    """A fill-in-the-middle request to a model that was not trained for it (the server answers 400)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "this model was not trained for fill-in-the-middle" + (f" ({detail})" if detail else "")
        )


def fim_spec(source: Any) -> dict[str, Any]:
    """The FIM record of a checkpoint card, of a card's `fim` value, or of a tokenizer that has all of
    StarCoder's sentinels (both orders assumed, as StarCoder was trained); else FimUnsupported."""
    if source is None:
        raise FimUnsupported()
    if isinstance(source, Mapping):
        record = source.get("fim", source) if "tokens" not in source else source
        if not isinstance(record, Mapping) or not isinstance(record.get("tokens"), Mapping):
            raise FimUnsupported("its checkpoint card has no FIM record")
        return dict(record)
    vocab = source.get_vocab()
    if not all(t in vocab for t in FIM_TOKENS.values()):
        raise FimUnsupported("its tokenizer has no <fim_prefix>/<fim_suffix>/<fim_middle> tokens")
    return {"tokens": dict(FIM_TOKENS), "modes": ["psm", "spm"], "rate": None}


def fim_prompt(source: Any, prefix: str, suffix: str, mode: str = "psm") -> str:
    """The prompt whose continuation is the middle between `prefix` and `suffix`, in the format the model
    was trained on: PSM `<fim_prefix>P<fim_suffix>S<fim_middle>`, or SPM (StarCoder's variant)
    `<fim_prefix><fim_suffix>S<fim_middle>P`. The model ends the middle with EOS.

    >>> fim_prompt({"tokens": FIM_TOKENS, "modes": ["psm"]}, "def f(x):\\n", "\\n    return y\\n")
    '<fim_prefix>def f(x):\\n<fim_suffix>\\n    return y\\n<fim_middle>'
    >>> try:
    ...     fim_prompt({"family": "hf-causal", "fim": None}, "a", "b")
    ... except FimUnsupported as exc:
    ...     print(exc)
    this model was not trained for fill-in-the-middle (its checkpoint card has no FIM record)
    """
    spec = fim_spec(source)
    modes = list(spec.get("modes") or ["psm"])
    if mode not in modes:
        raise FimUnsupported(f"it was trained in {' and '.join(m.upper() for m in modes)} order, not {mode}")
    tokens = spec["tokens"]
    pre, suf, mid = tokens["prefix"], tokens["suffix"], tokens["middle"]
    if mode == "psm":
        return f"{pre}{prefix}{suf}{suffix}{mid}"
    return f"{pre}{suf}{suffix}{mid}{prefix}"
