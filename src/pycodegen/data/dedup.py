"""Exact (normalised hash) and near-duplicate (MinHash/LSH over token shingles) detection.

Items are visited in the caller's order and the first of each duplicate cluster is kept, so the result
is deterministic. MinHash and LSH come from `datasketch`; shingles are hashed with crc32 (a fixed
function, unlike Python's salted `hash`) so two runs give the same signatures.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass, field

import numpy as np

TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def code_tokens(text: str) -> list[str]:
    """Identifier/number words and single punctuation characters; whitespace and layout are ignored.

    >>> code_tokens("def f(x):  return x+1")
    ['def', 'f', '(', 'x', ')', ':', 'return', 'x', '+', '1']
    """
    return TOKEN_RE.findall(text)


def normalized_hash(text: str) -> str:
    """A hash that ignores whitespace and layout: reformatted copies collide.

    >>> normalized_hash("x = 1\\n") == normalized_hash("x   =  1")
    True
    """
    return hashlib.sha1(" ".join(code_tokens(text)).encode()).hexdigest()


def _shingle_hashes(tokens: list[str], k: int) -> np.ndarray:
    if len(tokens) < k:
        grams = [" ".join(tokens)]
    else:
        grams = [" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1)]
    return np.fromiter((zlib.crc32(g.encode()) for g in set(grams)), dtype=np.uint64)


@dataclass
class DedupResult:
    """Indices to keep, and for each dropped index the index it duplicates."""

    keep: list[int]
    exact: dict[int, int] = field(default_factory=dict)
    near: dict[int, int] = field(default_factory=dict)


def deduplicate(
    texts: list[str], *, near: bool = True, threshold: float = 0.85, num_perm: int = 64, shingle: int = 5
) -> DedupResult:
    """Drop exact duplicates, then near duplicates whose estimated Jaccard similarity ≥ `threshold`.

    >>> r = deduplicate(["a = 1", "a  =  1", "b = 2"], near=False)
    >>> r.keep, r.exact
    ([0, 2], {1: 0})
    """
    result = DedupResult(keep=[])
    first_of: dict[str, int] = {}
    survivors: list[int] = []
    for i, text in enumerate(texts):
        h = normalized_hash(text)
        if h in first_of:
            result.exact[i] = first_of[h]
        else:
            first_of[h] = i
            survivors.append(i)
    if not near:
        result.keep = survivors
        return result

    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    signatures: dict[int, MinHash] = {}
    for i in survivors:
        # The shingles are already hashed (crc32), so the hash function is the identity.
        m = MinHash(num_perm=num_perm, seed=1, hashfunc=int)
        m.update_batch(_shingle_hashes(code_tokens(texts[i]), shingle).tolist())
        candidates = sorted(c for c in lsh.query(m) if signatures[c].jaccard(m) >= threshold)
        if candidates:
            result.near[i] = candidates[0]
            continue
        lsh.insert(i, m, check_duplication=False)
        signatures[i] = m
        result.keep.append(i)
    return result
