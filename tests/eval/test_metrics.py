"""Ranking metrics against hand-computed values, and against WorkRB's implementation when installed."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from workembed.eval.metrics import (
    METRICS,
    average_precision,
    mean_metrics,
    ndcg_at_k,
    positive_grades,
    query_metrics,
    r_precision_at_k,
    recall_at_k,
    reciprocal_rank,
)

INV_LOG2_3 = 1 / math.log2(3)  # discount of rank 2


def test_two_relevant_at_ranks_two_and_three():
    ranking = ["a", "b", "c", "d", "e"]
    relevance = {"b": 1, "c": 2, "z": 0}  # z is judged non-relevant: it does not count in R
    assert average_precision(ranking, relevance) == pytest.approx(7 / 12)  # (1/2 + 2/3) / 2 = 0.5833…
    assert reciprocal_rank(ranking, relevance) == pytest.approx(1 / 2)
    assert r_precision_at_k(ranking, relevance, 1) == 0.0
    assert r_precision_at_k(ranking, relevance, 2) == pytest.approx(1 / 2)  # 1 hit / min(2, 2)
    assert r_precision_at_k(ranking, relevance, 5) == 1.0
    # DCG = 1/log2(3) + 2/log2(4); IDCG = 2/log2(2) + 1/log2(3)
    assert ndcg_at_k(ranking, relevance, 10) == pytest.approx((INV_LOG2_3 + 1) / (2 + INV_LOG2_3))
    assert ndcg_at_k(ranking, relevance, 2) == pytest.approx(INV_LOG2_3 / (2 + INV_LOG2_3))
    assert recall_at_k(ranking, relevance, 2) == pytest.approx(1 / 2)
    assert recall_at_k(ranking, relevance, 100) == 1.0


def test_relevant_documents_outside_a_truncated_ranking_count_in_r():
    ranking = ["a", "b"]
    relevance = {"a", "c", "d"}  # a collection: grade 1 each
    values = query_metrics(ranking, relevance)
    assert values["map"] == pytest.approx(1 / 3)
    assert values["mrr"] == 1.0
    assert values["rp@1"] == 1.0
    assert values["rp@5"] == pytest.approx(1 / 3)  # 1 hit / min(5, 3)
    assert values["rp@10"] == pytest.approx(1 / 3)
    assert values["ndcg@10"] == pytest.approx(1 / (1 + INV_LOG2_3 + 1 / 2))
    assert values["recall@100"] == pytest.approx(1 / 3)
    assert tuple(values) == METRICS


def test_no_relevant_document_retrieved_scores_zero():
    values = query_metrics(["x", "y", "z"], {"a": 1})
    assert values == dict.fromkeys(METRICS, 0.0)


def test_rp_at_k_divides_by_k_when_there_are_more_relevant_documents():
    relevant = [f"r{i}" for i in range(12)]
    ranking = relevant[:9] + ["x"] + relevant[9:]  # ranks 1-9 and 11-13 relevant
    assert r_precision_at_k(ranking, relevant, 10) == pytest.approx(9 / 10)
    assert r_precision_at_k(ranking, relevant, 5) == 1.0
    assert recall_at_k(ranking, relevant, 10) == pytest.approx(9 / 12)
    assert average_precision(ranking, relevant) == pytest.approx((9 + 10 / 11 + 11 / 12 + 12 / 13) / 12)


def test_graded_ndcg_prefers_the_higher_grade_first():
    relevance = {"hi": 3, "lo": 1}
    best = ndcg_at_k(["hi", "lo"], relevance)
    swapped = ndcg_at_k(["lo", "hi"], relevance)
    assert best == 1.0
    assert swapped == pytest.approx((1 + 3 * INV_LOG2_3) / (3 + INV_LOG2_3))


def test_undefined_cases_are_errors():
    with pytest.raises(ValueError, match="no relevant"):
        average_precision(["a"], {})
    with pytest.raises(ValueError, match="no relevant"):
        query_metrics(["a"], {"a": 0})
    with pytest.raises(ValueError, match="more than once"):
        reciprocal_rank(["a", "a"], {"a": 1})
    assert positive_grades({"a": 2, "b": 0, "c": -1}) == {"a": 2}


def test_mean_metrics_skips_queries_without_positives():
    rankings = {"q1": ["a", "b"], "q2": ["b", "a"], "q3": ["a", "b"]}
    qrels = {"q1": {"a": 1}, "q2": {"a": 1}, "q3": {"a": 0}}
    means, evaluated = mean_metrics(rankings, qrels)
    assert evaluated == 2
    assert means["mrr"] == pytest.approx((1 + 1 / 2) / 2)
    assert means["rp@1"] == pytest.approx(1 / 2)
    assert means["ndcg@10"] == pytest.approx((1 + INV_LOG2_3) / 2)
    empty, none = mean_metrics({"q3": ["a"]}, qrels)
    assert none == 0 and all(math.isnan(value) for value in empty.values())


def _workrb_ranking_module():
    """WorkRB's ranking metrics, loaded from their file (the package's ``__init__`` needs its full stack)."""
    spec = importlib.util.find_spec("workrb")
    if spec is None or spec.origin is None:
        pytest.skip("workrb is not installed (pip install --no-deps workrb==0.6.0)")
    path = Path(spec.origin).parent / "metrics" / "ranking.py"
    module_spec = importlib.util.spec_from_file_location("_workrb_ranking", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def test_metrics_match_workrb_on_random_full_rankings():
    workrb = _workrb_ranking_module()
    rng = np.random.default_rng(7)
    n_queries, n_targets = 25, 40
    scores = rng.random((n_queries, n_targets))
    positives = [
        sorted(rng.choice(n_targets, size=rng.integers(1, 15), replace=False).tolist()) for _ in scores
    ]
    grades = [rng.integers(1, 4, size=len(p)).tolist() for p in positives]
    # WorkRB's NDCG uses the exponential gain 2^x - 1; x = log2(1 + grade) turns it into our linear gain
    exp_relevance = [[math.log2(1 + g) for g in row] for row in grades]
    names = ["map", "mrr", "rp@1", "rp@5", "rp@10", "recall@100"]
    theirs = workrb.calculate_ranking_metrics(scores, positives, metrics=names)
    theirs.update(workrb.calculate_ranking_metrics(scores, positives, ("ndcg@10",), exp_relevance))
    rankings = {str(i): [str(j) for j in np.argsort(-row)] for i, row in enumerate(scores)}
    qrels = {
        str(i): {str(j): g for j, g in zip(p, gs, strict=True)}
        for i, (p, gs) in enumerate(zip(positives, grades, strict=True))
    }
    ours, evaluated = mean_metrics(rankings, qrels)
    assert evaluated == n_queries
    for name in METRICS:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-9), name
