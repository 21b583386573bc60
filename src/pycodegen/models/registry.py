"""The one table from model-family name to implementation (no self-registration: read it here)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pycodegen.errors import unknown_name
from pycodegen.models.char_rnn import CharRNNFamily
from pycodegen.models.family import Family
from pycodegen.models.hf import HFCausalFamily, HFSeq2SeqFamily
from pycodegen.models.retrieval import RetrievalFamily
from pycodegen.models.seq2seq import Seq2SeqFamily

if TYPE_CHECKING:
    from pycodegen.config import TrainConfig

# The family modules import only torch at module level (transformers and peft are imported inside the
# methods that need them), so importing them all here costs little beyond torch itself.
FAMILIES: dict[str, type[Family]] = {
    "char-rnn": CharRNNFamily,
    "seq2seq": Seq2SeqFamily,
    "retrieval": RetrievalFamily,
    "hf-causal": HFCausalFamily,
    "hf-seq2seq": HFSeq2SeqFamily,
}


def get_family(name: str) -> type[Family]:
    """The family class called `name`, or an error listing the valid names."""
    if name not in FAMILIES:
        raise unknown_name("model family", name, list(FAMILIES))
    return FAMILIES[name]


def apply_family_defaults(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with the family's own training defaults (`Family.default_overrides`) in place of the global
    ones, for every setting the user did not give (in a flag, a YAML file or a recipe)."""
    given = cfg.model_fields_set
    overrides = {k: v for k, v in get_family(cfg.family).default_overrides().items() if k not in given}
    if not overrides:
        return cfg
    updated = cfg.model_copy(update=overrides)
    updated.__pydantic_fields_set__ = set(given)  # the overrides stay "not given by the user"
    return updated
