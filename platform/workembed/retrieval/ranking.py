"""Ranking a target space for queries with an encoder: the top ``k`` targets of each query.

The scorers (``cosine``, ``late-interaction``) and the blocked top-k are those of
:mod:`workembed.retrieval.scoring`; target spaces are embedded (and cached) by
:mod:`workembed.retrieval.embedding`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from workembed.errors import ConfigError
from workembed.retrieval.embedding import pooled_embeddings, query_token_vectors, target_embeddings
from workembed.retrieval.ray_embedding import RayEmbedding
from workembed.retrieval.scoring import blocked_top_k, dense_top_k, late_interaction_scores

if TYPE_CHECKING:
    from workembed.models import Encoder

logger = logging.getLogger(__name__)

Scorer = Literal["cosine", "late-interaction"]
SCORERS: tuple[str, ...] = ("cosine", "late-interaction")
METRICS: tuple[str, ...] = ("map", "mrr", "rp@1", "rp@5", "rp@10", "ndcg@10", "recall@100")
"""The metrics a ranking is evaluated with (:mod:`workembed.eval.metrics` computes them)."""


@dataclass(frozen=True)
class Ranking:
    """The top ``k`` targets of each query: row ``i`` of ``indices`` holds corpus positions, best first."""

    query_ids: list[str]
    corpus_ids: list[str]
    indices: np.ndarray  # [n_queries, min(k, n_targets)], int64
    scores: np.ndarray  # [n_queries, min(k, n_targets)], float32, descending per row

    def ids(self, row: int) -> list[str]:
        """The ranked target ids of query ``row``."""
        return [self.corpus_ids[j] for j in self.indices[row]]

    def as_dict(self) -> dict[str, list[str]]:
        """``{query_id: [target_id, ...]}``, best first."""
        return {qid: self.ids(row) for row, qid in enumerate(self.query_ids)}


def encoder_ranking(
    encoder: Encoder,
    queries: Mapping[str, str],
    corpus: Mapping[str, str],
    *,
    k: int = 100,
    scorer: Scorer = "cosine",
    temperature: float = 0.05,
    cache_dir: str | Path | None = None,
    block_size: int = 1024,
    ray: RayEmbedding | None = None,
    query_kind: str | None = None,
    target_kind: str | None = None,
) -> Ranking:
    """Rank the corpus for every query with ``encoder`` and ``scorer``; keep the top ``k``. With ``ray``,
    large target spaces and (cosine) query sets are embedded by Ray Data actors. ``query_kind`` and
    ``target_kind`` (WorkRB input types) pick a projection model's side for each."""
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer '{scorer}' (known: {', '.join(SCORERS)})")
    if scorer == "late-interaction" and encoder.head is not None:
        raise ConfigError("late-interaction scoring works on models with mean pooling, not a trained head")
    targets = target_embeddings(encoder, corpus, cache_dir, ray=ray, kind=target_kind)
    texts = list(queries.values())
    logger.info("embedding %d queries (%s)", len(texts), scorer)
    if scorer == "cosine":
        pooled = pooled_embeddings(encoder, texts, ray, query_kind)
        indices, scores = dense_top_k(pooled, targets, k, block_size)
    else:
        # token embeddings are computed per block of queries, so they are never all held at once
        indices, scores = blocked_top_k(
            lambda start, stop: late_interaction_scores(
                query_token_vectors(encoder, texts[start:stop]), targets, temperature
            ),
            len(texts),
            k,
            block_size,
        )
    return Ranking(list(queries), list(corpus), indices, scores)
