"""Fill-in-the-middle (FIM) training rows: the prefix-suffix-middle transformation of Bavarian et al. (2022)
as StarCoder applies it, at the character level, before the parts are tokenised.

A text is cut at two uniformly drawn character positions into prefix P, middle M and suffix S, and
rewritten so that a left-to-right model learns to write M after seeing both P and S:

- PSM: `<fim_prefix>P<fim_suffix>S<fim_middle>M`
- SPM (StarCoder's variant: the prefix follows the middle sentinel, so it runs straight into M):
  `<fim_prefix><fim_suffix>S<fim_middle>PM`

The three parts are tokenised separately (as an editor's prompt is), and the row ends with EOS so that the
model learns to stop where the middle meets the suffix. The choice for each text is drawn from its own
generator, seeded by the dataset seed and the row id: the same inputs give the same rows in any order.
"""

from __future__ import annotations

import random
from typing import Any

from pycodegen.data.tokenizers import FIM_TOKENS

MODES = ("psm", "spm")


def fim_rng(seed: int, row_id: str) -> random.Random:
    """The generator of one row's FIM choices (a str seed is hashed with SHA-512: stable across runs)."""
    return random.Random(f"fim:{seed}:{row_id}")


def fim_split(text: str, rng: random.Random) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of `text` cut at two uniform character positions; any part may be empty.

    >>> p, m, s = fim_split("def f(x):\\n    return x\\n", random.Random(0))
    >>> p + m + s == "def f(x):\\n    return x\\n"
    True
    """
    lo, hi = sorted((rng.randint(0, len(text)), rng.randint(0, len(text))))
    return text[:lo], text[lo:hi], text[hi:]


def fim_choice(rng: random.Random, rate: float, spm_rate: float) -> str | None:
    """'psm', 'spm', or None (the row stays plain left-to-right text), drawn with the given rates."""
    if rate <= 0 or rng.random() >= rate:
        return None
    return "spm" if rng.random() < spm_rate else "psm"


def fim_text(mode: str, prefix: str, middle: str, suffix: str) -> str:
    """The transformed text as a string, sentinels included (what `fim_ids` tokenises part by part).

    >>> fim_text("psm", "a", "b", "c"), fim_text("spm", "a", "b", "c")
    ('<fim_prefix>a<fim_suffix>c<fim_middle>b', '<fim_prefix><fim_suffix>c<fim_middle>ab')
    """
    pre, mid, suf = FIM_TOKENS["prefix"], FIM_TOKENS["middle"], FIM_TOKENS["suffix"]
    if mode == "psm":
        return f"{pre}{prefix}{suf}{suffix}{mid}{middle}"
    return f"{pre}{suf}{suffix}{mid}{prefix}{middle}"


def fim_ids(tokenizer: Any, mode: str, prefix: str, middle: str, suffix: str) -> list[int]:
    """Token ids of the transformed text, each part tokenised on its own, followed by EOS."""

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    pre, mid, suf = (tokenizer.convert_tokens_to_ids(FIM_TOKENS[k]) for k in ("prefix", "middle", "suffix"))
    if mode == "psm":
        ids = [pre, *enc(prefix), suf, *enc(suffix), mid, *enc(middle)]
    else:
        ids = [pre, suf, *enc(suffix), mid, *enc(prefix), *enc(middle)]
    return [*ids, tokenizer.eos_token_id]


def fim_record(rate: float, spm_rate: float) -> dict[str, Any] | None:
    """What a dataset (and a checkpoint trained on it) says about FIM: sentinel tokens by role, the modes
    it was trained in, and the rate; None when no row was transformed (rate 0).

    >>> fim_record(0.5, 0.0)["modes"], fim_record(0.5, 1.0)["modes"], fim_record(0.0, 0.5)
    (['psm'], ['spm'], None)
    """
    if rate <= 0:
        return None
    modes = [m for m, share in (("psm", 1 - spm_rate), ("spm", spm_rate)) if share > 0]
    return {"tokens": dict(FIM_TOKENS), "modes": modes, "rate": rate, "spm_rate": spm_rate}
