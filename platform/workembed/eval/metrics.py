"""Ranking metrics for one query and their means over a dataset.

Inputs are an explicit ranking (document ids, best first, possibly truncated to the top ``k``; ties are
impossible because the order is given) and the judged relevance of the query (``{doc_id: grade}``, a grade
> 0 is relevant; a plain collection of ids means grade 1 each). With ``rel_i`` = 1 when the document at rank
``i`` (1-based) is relevant, ``R`` the number of relevant documents and ``hits@K`` = Σ_{i≤K} rel_i:

- AP = (1/R) · Σ_i rel_i · hits@i / i (relevant documents missing from the ranking add 0); MAP is its mean.
- RR = 1 / (rank of the first relevant document), 0 when none is ranked; MRR is its mean.
- RP@K = hits@K / min(K, R): R-precision cut at K, as in the skill-extraction benchmark of Decorte et al.
  (it reaches 1 when the top K hold min(K, R) relevant documents).
- NDCG@K = DCG@K / IDCG@K with DCG@K = Σ_{i≤K} g_i / log2(i + 1), the gain ``g_i`` being the graded
  relevance from the qrels (linear gain, as trec_eval), and IDCG@K the DCG of the ideal order of all judged
  positives.
- Recall@K = hits@K / R.

Queries with R = 0 have no defined value: the per-query functions raise ``ValueError`` for them and
:func:`mean_metrics` leaves them out (the runner counts them as ``queries_without_positives``).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from workembed.retrieval.ranking import METRICS

Relevance = Mapping[str, int] | Collection[str]


def positive_grades(relevance: Relevance) -> dict[str, int]:
    """``{doc_id: grade}`` of the relevant documents (grade > 0); a collection of ids gives grade 1."""
    if isinstance(relevance, Mapping):
        return {doc: int(grade) for doc, grade in relevance.items() if grade > 0}
    return dict.fromkeys(relevance, 1)


def _check(ranking: Sequence[str], relevance: Relevance) -> tuple[list[bool], dict[str, int]]:
    grades = positive_grades(relevance)
    if not grades:
        raise ValueError("the query has no relevant document: its metrics are undefined")
    if len(set(ranking)) != len(ranking):
        raise ValueError("the ranking lists a document more than once")
    return [doc in grades for doc in ranking], grades


def average_precision(ranking: Sequence[str], relevance: Relevance) -> float:
    """AP = (1/R) Σ_i rel_i · hits@i / i."""
    flags, grades = _check(ranking, relevance)
    hits, total = 0, 0.0
    for rank, relevant in enumerate(flags, start=1):
        if relevant:
            hits += 1
            total += hits / rank
    return total / len(grades)


def reciprocal_rank(ranking: Sequence[str], relevance: Relevance) -> float:
    """RR = 1 / rank of the first relevant document (0 when none is ranked)."""
    flags, _ = _check(ranking, relevance)
    return next((1.0 / rank for rank, relevant in enumerate(flags, start=1) if relevant), 0.0)


def r_precision_at_k(ranking: Sequence[str], relevance: Relevance, k: int) -> float:
    """RP@K = hits@K / min(K, R)."""
    flags, grades = _check(ranking, relevance)
    return sum(flags[:k]) / min(k, len(grades))


def recall_at_k(ranking: Sequence[str], relevance: Relevance, k: int = 100) -> float:
    """Recall@K = hits@K / R."""
    flags, grades = _check(ranking, relevance)
    return sum(flags[:k]) / len(grades)


def ndcg_at_k(ranking: Sequence[str], relevance: Relevance, k: int = 10) -> float:
    """NDCG@K = Σ_{i≤K} g_i / log2(i+1), divided by the same sum over the ideal order."""
    _, grades = _check(ranking, relevance)
    dcg = sum(grades.get(doc, 0) / math.log2(rank + 1) for rank, doc in enumerate(ranking[:k], start=1))
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(grade / math.log2(rank + 1) for rank, grade in enumerate(ideal, start=1))
    return dcg / idcg


def query_metrics(ranking: Sequence[str], relevance: Relevance) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one query."""
    return {
        "map": average_precision(ranking, relevance),
        "mrr": reciprocal_rank(ranking, relevance),
        "rp@1": r_precision_at_k(ranking, relevance, 1),
        "rp@5": r_precision_at_k(ranking, relevance, 5),
        "rp@10": r_precision_at_k(ranking, relevance, 10),
        "ndcg@10": ndcg_at_k(ranking, relevance, 10),
        "recall@100": recall_at_k(ranking, relevance, 100),
    }


def mean_metrics(
    rankings: Mapping[str, Sequence[str]], qrels: Mapping[str, Relevance]
) -> tuple[dict[str, float], int]:
    """Mean of each metric over the queries of ``rankings`` that have a relevant document.

    Returns the means and the number of queries evaluated; a query without relevant documents is skipped.
    With no query evaluated every mean is NaN.
    """
    sums = dict.fromkeys(METRICS, 0.0)
    evaluated = 0
    for qid, ranking in rankings.items():
        relevance = qrels.get(qid, {})
        if not positive_grades(relevance):
            continue
        for name, value in query_metrics(ranking, relevance).items():
            sums[name] += value
        evaluated += 1
    if evaluated == 0:
        return dict.fromkeys(METRICS, math.nan), 0
    return {name: total / evaluated for name, total in sums.items()}, evaluated
