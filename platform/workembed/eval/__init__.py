"""Evaluation: ranking datasets, metrics, scoring, lexical baselines and the runner.

Every task is "rank a target space for a query": a :class:`RankingDataset` holds the queries, the corpus
and graded relevance judgements; :func:`evaluate` ranks the corpus for each query with an encoder (and
optionally BM25 and character n-gram TF-IDF) and reports MAP, MRR, RP@K, NDCG@10 and Recall@100.
"""

from workembed.eval.dataset import DatasetError, RankingDataset, read_dataset, write_dataset
from workembed.eval.metrics import METRICS, mean_metrics, query_metrics
from workembed.eval.runner import EvalConfig, evaluate, run_eval
from workembed.eval.scoring import Ranking, encoder_ranking

__all__ = [
    "METRICS",
    "DatasetError",
    "EvalConfig",
    "Ranking",
    "RankingDataset",
    "encoder_ranking",
    "evaluate",
    "mean_metrics",
    "query_metrics",
    "read_dataset",
    "run_eval",
    "write_dataset",
]
