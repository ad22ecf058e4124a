"""ConTeXT-match extraction metrics and threshold calibration against hand-computed values on small
hand-built arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.retrieval.test_skill_extraction import SCORES, SKILLS, TOKENS
from workembed.eval.extraction_metrics import (
    calibrate_threshold,
    f1_at_k,
    mean_pairwise_similarity,
    precision_recall_f1,
    redundancy,
    threshold_table,
)
from workembed.retrieval.skill_extraction import filter_predictions

# gold pairs score 0.9, 0.425 | 0.425, 0.6 (SCORES); the non-gold "c" of sentence 0 scores 0.415: only
# thresholds in (0.415, 0.425] predict exactly the gold pairs, and the grid holds one of them: 0.42
GOLD = [{"a", "b"}, {"b", "d"}]


def test_calibration_finds_the_known_optimum():
    threshold, table = calibrate_threshold(SCORES, GOLD, skill_ids=SKILLS)
    assert threshold == pytest.approx(0.42)
    assert len(table["threshold"]) == 101
    at = {round(t, 2): i for i, t in enumerate(table["threshold"])}
    assert table["f1"][at[0.42]] == 1.0 and table["predicted"][at[0.42]] == 4
    # t = 0.3: a, b, c | b, d predicted, 4 of them gold
    assert (table["precision"][at[0.3]], table["recall"][at[0.3]]) == (pytest.approx(4 / 5), 1.0)
    assert table["f1"][at[0.3]] == pytest.approx(8 / 9)
    # t = 0.5: a | d
    assert (table["precision"][at[0.5]], table["recall"][at[0.5]], table["f1"][at[0.5]]) == (
        1.0,
        0.5,
        pytest.approx(2 / 3),
    )
    # t = 0: all 8 predicted; t = 1: none (precision 0 by convention)
    assert table["precision"][at[0.0]] == 0.5 and table["f1"][at[0.0]] == pytest.approx(2 / 3)
    assert table["predicted"][at[1.0]] == 0 and table["precision"][at[1.0]] == 0.0


def test_sparse_scores_give_the_same_table():
    sparse = [dict(zip(SKILLS, row, strict=True)) for row in SCORES.tolist()]
    dense = threshold_table(SCORES, GOLD, skill_ids=SKILLS)
    for key, values in threshold_table(sparse, GOLD).items():
        np.testing.assert_array_equal(values, dense[key])


def test_ties_go_to_the_lowest_threshold_and_unknown_gold_counts_in_recall():
    scores = np.array([[0.5, 0.3]])
    threshold, table = calibrate_threshold(scores, [{"a"}], skill_ids=["a", "b"])
    assert threshold == pytest.approx(0.31)  # F1 = 1 for every t in (0.3, 0.5]
    threshold, table = calibrate_threshold(scores, [{"a", "zz"}], grid=[0.6, 0.4, 0.2], skill_ids=["a", "b"])
    assert threshold == pytest.approx(0.4)
    np.testing.assert_allclose(table["threshold"], [0.2, 0.4, 0.6])  # sorted
    np.testing.assert_allclose(table["recall"], [0.5, 0.5, 0.0])


def test_precision_recall_f1_exact_fractions():
    predicted = [{"a", "b", "c"}, {"d"}, set(), {"x"}]
    gold = [{"a", "b", "e", "f"}, {"d"}, {"g"}, set()]
    values = precision_recall_f1(predicted, gold)
    # TP = 2 + 1 = 3, Σ|P| = 5, Σ|G| = 6
    assert values["precision"] == pytest.approx(3 / 5)
    assert values["recall"] == pytest.approx(1 / 2)
    assert values["f1"] == pytest.approx(6 / 11)
    # sentences with gold: p = 2/3, 1, 0; r = 1/2, 1, 0; f1 = 4/7, 1, 0
    assert values["macro_precision"] == pytest.approx(5 / 9)
    assert values["macro_recall"] == pytest.approx(1 / 2)
    assert values["macro_f1"] == pytest.approx(11 / 21)
    assert (values["sentences"], values["evaluated"]) == (4, 3)
    assert values["predicted_per_sentence"] == pytest.approx(5 / 4)


def test_f1_at_5_exact_fractions():
    ranked = [["a", "x", "b", "y", "z", "c"], ["q", "r"], ["m"]]
    gold = [{"a", "b", "c"}, {"r", "s"}, set()]
    # sentence 1: h = 2 of top 5, P@5 = 2/5, R@5 = 2/3, F1 = 1/2; sentence 2: h = 1, F1 = 2/(5+2) = 2/7
    assert f1_at_k(ranked, gold, k=5) == pytest.approx((1 / 2 + 2 / 7) / 2)
    assert f1_at_k(ranked, gold, k=5, average="micro") == pytest.approx(2 * 3 / (5 * 2 + 5))
    assert f1_at_k(ranked, gold, k=1) == pytest.approx((2 / 4 + 0) / 2)
    assert math.isnan(f1_at_k([["a"]], [set()]))


# 4 tokens x 5 skills; skills 0-3 are above the threshold, skill 4 is not
def test_redundancy_before_and_after_the_filter():
    skills = ["s0", "s1", "s2", "s3", "s4"]
    predicted = [{"s0", "s1", "s2", "s3"}, {"s4"}]
    token_scores = [TOKENS, np.array([[0.0, 0.1, 0.2, 0.3, 0.4], [0.5, 0.0, 0.0, 0.0, 0.6]])]
    kept = filter_predictions(predicted, token_scores, skills)
    assert kept == [{"s0", "s2"}, {"s4"}]
    assert redundancy(predicted, token_scores, skills) == pytest.approx(2 / 5)
    assert redundancy(kept, token_scores, skills) == 0.0  # the filter is idempotent
    assert filter_predictions(kept, token_scores, skills) == kept


def test_mean_pairwise_similarity():
    vectors = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # unnormalised on purpose
    value = mean_pairwise_similarity([{"a", "b", "c"}, {"a"}, {"a", "c"}], vectors, ["a", "b", "c"])
    # {a, b, c}: (0 + 1/√2 + 1/√2) / 3; {a}: left out; {a, c}: 1/√2
    assert value == pytest.approx((math.sqrt(2) / 3 + 1 / math.sqrt(2)) / 2)
    assert math.isnan(mean_pairwise_similarity([{"a"}], vectors, ["a", "b", "c"]))
