"""Scoring a target space: cosine and soft late interaction, and blocked top-k.

Two scorers:

- ``cosine``: s(q, t) = q̂ · t̂ on mean-pooled, L2-normalised embeddings.
- ``late-interaction`` (soft late interaction, UWE): with the query's token embeddings q_1..q_n
  (special tokens excluded, each L2-normalised) and a pooled, L2-normalised target t,

      c_i = q̂_i · t̂                                   (cosine of token i with the target)
      s(q, t) = Σ_i softmax_i(c_i / τ) · c_i            (softmax over the query's tokens)

  τ → ∞ gives the mean token cosine, τ → 0 the best-matching token's cosine.

Rankings never hold the full |Q| × |T| score matrix: queries are scored in blocks (``block_size`` queries
against all targets), each block reduced to its top ``k`` with ``np.argpartition`` before the next.
Ties are ordered by corpus position (the exact top-k boundary among equal scores is arbitrary).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

ScoreBlock = Callable[[int, int], np.ndarray]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- top-k


def top_k_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the indices and scores of the ``k`` highest scores, descending (ties: lower index first)."""
    n_rows, n_cols = scores.shape
    k = min(k, n_cols)
    if k < n_cols:
        candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        candidates = np.broadcast_to(np.arange(n_cols), (n_rows, n_cols))
    values = np.take_along_axis(scores, candidates, axis=1)
    order = np.lexsort((candidates, -values), axis=-1)
    return np.take_along_axis(candidates, order, axis=1).astype(np.int64), np.take_along_axis(
        values, order, axis=1
    )


def blocked_top_k(
    score_block: ScoreBlock, n_queries: int, k: int, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per query, computing scores ``score_block(start, stop) -> [stop - start, n_targets]``
    for one block of queries at a time."""
    if block_size < 1 or k < 1:
        raise ValueError("block_size and k must be at least 1")
    indices, values = [], []
    for start in range(0, n_queries, block_size):
        stop = min(start + block_size, n_queries)
        top_index, top_value = top_k_rows(score_block(start, stop), k)
        indices.append(top_index)
        values.append(top_value.astype(np.float32))
        if n_queries > block_size:
            logger.info("ranked %d/%d queries", stop, n_queries)
    if not indices:
        return np.zeros((0, 0), dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(indices), np.concatenate(values)


def dense_top_k(
    queries: np.ndarray, targets: np.ndarray, k: int, block_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` targets per query by dot product (cosine for L2-normalised rows), in query blocks."""
    return blocked_top_k(lambda start, stop: queries[start:stop] @ targets.T, len(queries), k, block_size)


# ------------------------------------------------------------------------------- late interaction


def l2_normalize(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def late_interaction_scores(
    token_vectors: Sequence[np.ndarray], targets: np.ndarray, temperature: float
) -> np.ndarray:
    """``[len(token_vectors), n_targets]``: s(q, t) = Σ_i softmax_i(c_i / τ) · c_i with c_i = q̂_i · t̂."""
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    targets = l2_normalize(targets)
    out = np.empty((len(token_vectors), len(targets)), dtype=np.float32)
    for row, tokens in enumerate(token_vectors):
        cosines = l2_normalize(tokens) @ targets.T  # [n_tokens, n_targets]
        logits = cosines / temperature
        weights = np.exp(logits - logits.max(axis=0, keepdims=True))
        weights /= weights.sum(axis=0, keepdims=True)
        out[row] = (weights * cosines).sum(axis=0)
    return out
