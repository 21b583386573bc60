"""Metrics, each a plain function `(predictions, references, **options) -> dict` (or a number) with a
doctest. Scores on a 0-100 scale where the literature reports them so (BLEU), else 0-1."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator of Chen et al. 2021 ("Evaluating Large Language Models Trained on
    Code", Codex paper, Figure 3): 1 - C(n-c, k) / C(n, k), computed as a stable product.

    >>> pass_at_k(10, 0, 1), pass_at_k(10, 10, 5), round(pass_at_k(10, 3, 1), 4)
    (0.0, 1.0, 0.3)
    >>> round(pass_at_k(20, 2, 10), 4)
    0.7632
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def pass_at_k_table(counts: dict[str, tuple[int, int]], ks: Sequence[int] = (1, 10, 100)) -> dict[str, float]:
    """Mean pass@k over tasks from {task_id: (n, correct)}, for each k that every task's n allows.

    >>> pass_at_k_table({"a": (2, 1), "b": (2, 0)})
    {'pass@1': 0.25}
    """
    if not counts:
        return {}
    n_min = min(n for n, _ in counts.values())
    return {
        f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()]))
        for k in ks
        if k <= n_min
    }


def filtered_pass_at_1(samples: dict[str, list[tuple[bool | None, bool]]]) -> dict[str, float]:
    """Example-filtered pass@1 (the AlphaCode filtering step): per task, keep the samples that pass the
    `>>>` examples shown in the prompt (None: the task has no usable examples, so all are kept), and score
    the first kept one on the hidden tests; a task with nothing kept scores 0.

    `samples[task]` is [(passes_examples, passes_tests)] in sample order.

    >>> filtered_pass_at_1({"a": [(False, False), (True, True)], "b": [(False, True)], "c": [(None, True)]})
    {'filtered_pass@1': 0.6666666666666666, 'tasks_with_examples': 2}
    """
    scores, with_examples = [], 0
    for results in samples.values():
        if any(e is not None for e, _ in results):
            with_examples += 1
        kept = [t for e, t in results if e is None or e]
        scores.append(float(kept[0]) if kept else 0.0)
    return {
        "filtered_pass@1": float(np.mean(scores)) if scores else 0.0,
        "tasks_with_examples": with_examples,
    }


def select_index(candidates: list[tuple[bool | None, float | None]]) -> int:
    """The sample selection by execution picks: among those that pass the examples (all, when none does),
    the highest mean log-probability; ties and unknown log-probabilities go to the earliest.

    >>> select_index([(False, -0.1), (True, -0.9), (True, -0.5)]), select_index([(None, None), (None, -2.0)])
    (2, 1)
    """
    passing = [i for i, (e, _) in enumerate(candidates) if e]
    pool = passing or list(range(len(candidates)))
    return max(pool, key=lambda i: (lp if (lp := candidates[i][1]) is not None else -math.inf, -i))


def best_of_picks(samples: dict[str, list[tuple[bool | None, float | None, bool]]], n: int) -> dict[str, int]:
    """{task: the position (in sample order) of the sample `best_of_pass_at_1` picks among the first `n`}.

    >>> best_of_picks({"a": [(False, -0.1, False), (True, -0.9, True)], "b": [(None, -0.3, True)]}, n=2)
    {'a': 1, 'b': 0}
    """
    return {task: select_index([(e, lp) for e, lp, _ in results[:n]]) for task, results in samples.items()}


def best_of_pass_at_1(
    samples: dict[str, list[tuple[bool | None, float | None, bool]]], n: int
) -> dict[str, float | int]:
    """Selection by execution (CodeT / AlphaCode style): per task, among its first `n` samples, those that
    pass the prompt's `>>>` examples (all of them when the task has no usable examples, or when none
    passes); of those, the one with the highest mean token log-probability (ties and unknown
    log-probabilities: the earliest); its hidden-test result is the task's score.

    `samples[task]` is [(passes_examples, mean_logprob, passes_tests)] in sample order.

    >>> best_of_pass_at_1({
    ...     "a": [(False, -0.1, False), (True, -0.9, True), (True, -0.5, False)],  # passing ones: -0.5 wins
    ...     "b": [(False, -0.2, True), (False, -0.1, False)],  # none passes: the likelier one
    ...     "c": [(None, -0.3, True), (None, None, False)],  # no examples: by log-probability
    ... }, n=3)
    {'best_of_3_pass@1': 0.3333333333333333, 'best_of': 3, 'tasks_selected_by_examples': 1}
    """
    picks = best_of_picks(samples, n)
    scores = [float(samples[task][best][2]) for task, best in picks.items()]
    by_examples = sum(any(e for e, _, _ in results[:n]) for results in samples.values())
    return {
        f"best_of_{n}_pass@1": float(np.mean(scores)) if scores else 0.0,
        "best_of": n,
        "tasks_selected_by_examples": by_examples,
    }


def bleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 13a tokenisation), 0-100.

    >>> bleu(["return a + b"], ["return a + b"])["bleu"]
    100.0
    """
    import sacrebleu

    return {"bleu": round(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score, 4)}


def sentence_bleu4(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean smoothed sentence BLEU-4 as CodeXGLUE reports it (add-one smoothing of n>1 precisions,
    Lin and Och 2004; sacrebleu's `add-k` with k=1), 0-100.

    Every n-gram of the prediction matches (precisions 1) and it is 8 tokens against 10, so the score
    is the brevity penalty exp(1 - 10/8) = 0.7788:

    >>> round(sentence_bleu4(["def f(a): return a"], ["def f(a): return a + 1"])["sentence_bleu4"], 2)
    77.88
    """
    import sacrebleu

    scores = [
        sacrebleu.sentence_bleu(p, [r], smooth_method="add-k", smooth_value=1).score
        for p, r in zip(predictions, references, strict=True)
    ]
    return {"sentence_bleu4": round(float(np.mean(scores)), 4) if scores else 0.0}


def codebleu(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """CodeBLEU (Ren et al. 2020) with the Python grammar, via the `codebleu` package's components; 0-1.

    The combination is the paper's (and CodeXGLUE's) equal-weight sum, not the package's: the package
    adds `0.25 * (dataflow_match or 1)`, so a prediction that matches no data flow at all (an empty
    output, say) is credited a full data-flow match and scores 0.25. Here a data-flow score of 0 counts
    as 0; only when the references themselves have no data flow (nothing to match) is the score the
    mean of the other three components. Empty predictions score 0.0.

    >>> code = "def f(a):\\n    return a + 1\\n"
    >>> round(codebleu([code], [code])["codebleu"], 4), codebleu([""], [code])["codebleu"]
    (1.0, 0.0)
    """
    from codebleu import calc_codebleu

    components = ("ngram_match_score", "weighted_ngram_match_score", "syntax_match_score")
    if not any(p.strip() for p in predictions):
        # The package's BLEU credits whitespace-only output with n-gram matches; nothing was written.
        return {"codebleu": 0.0, **{k: 0.0 for k in components}, "dataflow_match_score": 0.0}
    result = {
        k: float(v) for k, v in calc_codebleu(list(references), list(predictions), lang="python").items()
    }
    refs_have_dataflow = calc_codebleu(list(references), list(references), lang="python")[
        "dataflow_match_score"
    ]
    parts = [result[k] for k in components]
    if refs_have_dataflow:
        parts.append(result["dataflow_match_score"])
    result["codebleu"] = sum(parts) / len(parts)
    return {k: round(v, 4) for k, v in result.items()}


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Share of predictions equal to their reference after stripping surrounding whitespace.

    >>> exact_match(["x = 1\\n", "y"], ["x = 1", "z"])
    {'exact_match': 0.5}
    """
    hits = [p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)]
    return {"exact_match": float(np.mean(hits)) if hits else 0.0}


def edit_similarity(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean 1 - normalised Levenshtein distance (rapidfuzz), 0-1.

    >>> edit_similarity(["kitten"], ["sitting"])
    {'edit_similarity': 0.5714}
    """
    from rapidfuzz.distance import Levenshtein

    sims = [Levenshtein.normalized_similarity(p, r) for p, r in zip(predictions, references, strict=True)]
    return {"edit_similarity": round(float(np.mean(sims)), 4) if sims else 0.0}


def greedy_match_scores(similarity: np.ndarray) -> dict[str, float]:
    """BERTScore's greedy matching (Zhang et al. 2020) on a (candidate tokens × reference tokens)
    cosine-similarity matrix: precision, recall, F1 and F3 (recall weighted 3x, as CodeBERTScore reports).

    >>> s = greedy_match_scores(np.array([[1.0, 0.0], [0.0, 0.5]]))
    >>> s["precision"], s["recall"], round(s["f1"], 4)
    (0.75, 0.75, 0.75)
    """
    precision = float(similarity.max(axis=1).mean())
    recall = float(similarity.max(axis=0).mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    f3 = 10 * precision * recall / (9 * precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "f3": f3}


def codebertscore(
    predictions: Sequence[str], references: Sequence[str], encoder: str | Path, max_length: int = 512
) -> dict[str, Any]:
    """CodeBERTScore P/R/F1/F3 with a local encoder directory (never a hub download).

    Written here rather than through `bert-score`, which resolves encoders by hub name and needs
    per-model baseline files; the matching is the same greedy cosine matching, without idf weighting.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    encoder = Path(encoder)
    if not encoder.is_dir():
        raise FileNotFoundError(f"encoder directory {encoder} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(encoder)
    model = AutoModel.from_pretrained(encoder).eval()

    def embed(text: str) -> torch.Tensor:
        batch = tokenizer(
            text, return_tensors="pt", truncation=True, max_length=max_length, return_special_tokens_mask=True
        )
        special = batch.pop("special_tokens_mask")[0].bool()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state[0]  # (T, C)
        hidden = hidden[~special]
        return torch.nn.functional.normalize(hidden, dim=-1)

    totals = {"precision": [], "recall": [], "f1": [], "f3": []}
    for p, r in zip(predictions, references, strict=True):
        cand, ref = embed(p), embed(r)
        if len(cand) == 0 or len(ref) == 0:
            scores = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f3": 0.0}
        else:
            scores = greedy_match_scores((cand @ ref.T).numpy())
        for k, v in scores.items():
            totals[k].append(v)
    out: dict[str, Any] = {f"codebertscore_{k}": round(float(np.mean(v)), 4) for k, v in totals.items()}
    out["codebertscore_encoder"] = str(encoder)
    return out


def perplexity(total_nll: float, n_tokens: int) -> float:
    """exp(mean negative log-likelihood per token).

    >>> round(perplexity(2 * math.log(4), 2), 6)
    4.0
    """
    return math.exp(total_nll / n_tokens) if n_tokens else float("nan")


def model_perplexity(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 1024) -> float:
    """Perplexity of a causal LM on held-out texts: every token after the first is predicted."""
    import torch

    total_nll, n_tokens = 0.0, 0
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)["input_ids"]
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss  # mean over ids.shape[1] - 1 predictions
        total_nll += float(loss) * (ids.shape[1] - 1)
        n_tokens += ids.shape[1] - 1
    return perplexity(total_nll, n_tokens)


def mean_reciprocal_rank(similarity: np.ndarray, distractors: int = 999) -> float:
    """MRR for code search as CodeSearchNet/CodeBERT report it: queries and their codes are cut into
    chunks of `distractors + 1`; within a chunk, a query's rank is that of its own code among all of
    the chunk's codes. `similarity[i, j]` scores query i against code j (the diagonal is the match).

    >>> mean_reciprocal_rank(np.array([[0.9, 0.1], [0.8, 0.2]]), distractors=1)
    0.75
    """
    n = similarity.shape[0]
    size = distractors + 1
    reciprocal = []
    for start in range(0, n, size):
        block = similarity[start : start + size, start : start + size]
        correct = np.diag(block)[:, None]
        ranks = (block > correct).sum(axis=1) + 1
        reciprocal.extend(1.0 / ranks)
    return float(np.mean(reciprocal)) if reciprocal else 0.0


# -- paired comparison of two runs on the same problems ---------------------------------------------------
def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test: the probability, were wins and losses equally likely (ties dropped), of
    a split at least as uneven as this one (binomial, p = 1/2).

    >>> sign_test(0, 0), sign_test(3, 3), round(sign_test(9, 1), 4), round(sign_test(1, 9), 4)
    (1.0, 1.0, 0.0215, 0.0215)
    """
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(
    differences: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-problem differences (problems resampled with
    replacement; a fixed seed, so a report is reproducible).

    >>> bootstrap_interval([0.0] * 10)
    (0.0, 0.0)
    >>> low, high = bootstrap_interval([1.0] * 8 + [0.0] * 2)
    >>> 0.5 <= low < 0.8 < high <= 1.0
    True
    """
    values = np.asarray(differences, dtype=float)
    if values.size == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return (round(float(low), 4), round(float(high), 4))


def paired_comparison(
    first: dict[str, float], second: dict[str, float], alpha: float = 0.05
) -> dict[str, Any]:
    """Per-problem comparison of two runs' scores (per-problem pass rates) on the problems both scored:
    `wins` where `second` beats `first`, `losses`, `ties`, the exact sign-test p-value, the mean difference
    (second - first) with a 95 % bootstrap interval, and whether the difference is beyond noise.

    >>> r = paired_comparison({"a": 0, "b": 1, "c": 0}, {"a": 1, "b": 1, "c": 0})
    >>> r["wins"], r["losses"], r["ties"], r["p_value"], r["significant"]
    (1, 0, 2, 1.0, False)
    """
    shared = sorted(set(first) & set(second))
    diffs = [second[t] - first[t] for t in shared]
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    p = sign_test(wins, losses)
    return {
        "problems": len(shared),
        "wins": wins,
        "losses": losses,
        "ties": len(shared) - wins - losses,
        "p_value": round(p, 4),
        "mean_difference": round(float(np.mean(diffs)), 4) if diffs else 0.0,
        "interval95": bootstrap_interval(diffs),
        "significant": p < alpha,
    }


# -- what a model copied from its training data -----------------------------------------------------------
def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def ngram_novelty(predictions: Sequence[str], training: Sequence[str], n: int = 4) -> dict[str, float]:
    """How much of the generated text is new: the share of the predictions' word n-grams (whitespace
    tokens) that never occur in the training texts, and the share of predictions found verbatim in
    training (the novelty check of Perez et al. 2021).

    >>> ngram_novelty(["return a + b", "x = y * 2 + 1"], ["def f(a, b):\\n    return a + b"], n=2)
    {'novel_ngram_share': 0.6667, 'verbatim_share': 0.5}
    """
    seen: set[tuple[str, ...]] = set()
    for text in training:
        seen |= _ngrams(text.split(), n)
    grams = [g for p in predictions for g in _ngrams(p.split(), n)]
    novel = sum(g not in seen for g in grams)
    joined = "\0".join(training)
    verbatim = sum(bool(p.strip()) and p.strip() in joined for p in predictions)
    return {
        "novel_ngram_share": round(novel / len(grams), 4) if grams else 1.0,
        "verbatim_share": round(verbatim / len(predictions), 4) if predictions else 0.0,
    }


def longest_common_substring(text: str, corpus: Sequence[str]) -> dict[str, Any]:
    """The longest piece of `text` found verbatim in any one of the `corpus` texts (memorisation): its
    length in characters, the text, and the index of a corpus text holding it.

    For each start in `text`, only a match longer than the best so far is tried, and a match is extended
    a character at a time (`in` on the joined corpus, a fast substring search), so the cost is about
    len(text) + best searches rather than one per substring.

    >>> r = longest_common_substring("def factorial(n): return n", ["x = 1", "def fact(n): return n * 2"])
    >>> r["length"], r["match"], r["source"]
    (13, '(n): return n', 1)
    """
    joined = "\0".join(corpus)  # NUL never occurs in source text: no match spans two corpus texts
    best = ""
    for start in range(len(text)):
        length = len(best) + 1
        while start + length <= len(text) and text[start : start + length] in joined:
            best = text[start : start + length]
            length += 1
    source = joined[: joined.find(best)].count("\0") if best else None
    return {"length": len(best), "match": best, "source": source}
