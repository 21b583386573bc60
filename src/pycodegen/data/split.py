"""Deterministic, seeded splits by group (file or repository), never by record or window.

Autocoder's published split shuffled overlapping windows, so one file's windows sat on both sides;
splitting whole groups rules that out.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from pycodegen.data.dataset_dir import SPLITS

__all__ = ["SPLITS", "split_groups"]


def split_groups(
    groups: Iterable[str], valid_fraction: float, test_fraction: float, seed: int
) -> dict[str, str]:
    """Map each group to 'train', 'valid' or 'test'; the same groups and seed give the same map.

    >>> m = split_groups([f"f{i}.py" for i in range(20)], 0.1, 0.1, seed=0)
    >>> sorted(list(m.values()).count(s) for s in ("train", "valid", "test"))
    [2, 2, 16]
    >>> m == split_groups(reversed(list(m)), 0.1, 0.1, seed=0)
    True
    """
    if valid_fraction + test_fraction >= 1:
        raise ValueError("valid_fraction + test_fraction must be below 1")
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    n_test = round(len(unique) * test_fraction)
    n_valid = round(len(unique) * valid_fraction)
    assignment = {}
    for i, group in enumerate(unique):
        assignment[group] = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
    return assignment
