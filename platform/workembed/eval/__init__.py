"""Evaluation: ranking tasks, benchmark converters, metrics, runners, reports and plots.

Every task is "rank a target space for a query": a ranking dataset
(:mod:`workembed.retrieval.ranking_dataset`) holds the queries, the corpus and graded relevance judgements;
:func:`evaluate` ranks the corpus for each query with an encoder (:mod:`workembed.retrieval.ranking`;
optionally also BM25 and character n-gram TF-IDF) and reports MAP, MRR, RP@K, NDCG@10 and Recall@100.
"""

from workembed.eval.metrics import METRICS, mean_metrics, query_metrics
from workembed.eval.runner import EvalConfig, evaluate, run_eval

__all__ = [
    "METRICS",
    "EvalConfig",
    "evaluate",
    "mean_metrics",
    "query_metrics",
    "run_eval",
]
