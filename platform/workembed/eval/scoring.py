"""Scoring a target space for queries with an encoder, and blocked top-k ranking.

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
Target embeddings are cached as ``.npy`` per (model, target-space fingerprint). With a
:class:`~workembed.eval.ray_embedding.RayEmbedding`, pooled embeddings of target spaces and query sets of at
least ``min_texts`` texts are computed by Ray Data actors (same cache file and key); late-interaction query
tokens are always embedded here, block by block.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from workembed.eval.ray_embedding import RayEmbedding, embed_with_ray, model_reference

if TYPE_CHECKING:
    from workembed.models import Encoder

Scorer = Literal["cosine", "late-interaction"]
SCORERS: tuple[str, ...] = ("cosine", "late-interaction")
Log = Callable[[str], None]


def say(log: Log | None, message: str) -> None:
    """Send ``message`` to ``log`` when there is one."""
    if log is not None:
        log(message)


ScoreBlock = Callable[[int, int], np.ndarray]


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
    score_block: ScoreBlock, n_queries: int, k: int, block_size: int = 1024, log: Log | None = None
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
        if log is not None and n_queries > block_size:
            log(f"ranked {stop}/{n_queries} queries")
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


def pooled_embeddings(
    encoder: Encoder,
    texts: Sequence[str],
    ray: RayEmbedding | None = None,
    log: Log | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """L2-normalised pooled embeddings of ``texts`` (of input ``kind``, which picks a projection model's
    side): by Ray Data actors when ``ray`` is given and there are at least ``ray.min_texts`` texts, else by
    ``encoder`` in this process."""
    if ray is None or len(texts) == 0 or len(texts) < ray.min_texts:
        return l2_normalize(encoder.embed(texts, kind))
    return embed_with_ray(
        model_reference(encoder),
        texts,
        batch_size=encoder.batch_size,
        max_length=encoder.max_length,
        device=ray.device(str(encoder.device)),
        num_actors=ray.num_actors,
        ray_address=ray.address,
        num_cpus=ray.num_cpus,
        num_gpus=ray.num_gpus,
        log=log,
        kind=kind,
    )


def query_token_vectors(encoder: Encoder, texts: Sequence[str]) -> list[np.ndarray]:
    """L2-normalised token embeddings of each text, special tokens excluded ([CLS]/[SEP] only when the
    text has no other token)."""
    vectors = []
    for tokens in encoder.embed_tokens(texts):
        keep = [i for i, special in enumerate(tokens.special) if not special] or list(
            range(len(tokens.special))
        )
        vectors.append(l2_normalize(tokens.vectors[keep]))
    return vectors


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


# ----------------------------------------------------------------------------------- target cache


def model_fingerprint(encoder: Encoder) -> str:
    """Hash of what decides the target embeddings: model files (name, size, mtime), max length, pooling."""
    digest = hashlib.sha256()
    digest.update(
        f"{encoder.name}\0{Path(encoder.path).resolve()}\0{encoder.max_length}\0{encoder.normalize}".encode()
    )
    for path in sorted(Path(encoder.path).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"\0{path.relative_to(encoder.path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def corpus_fingerprint(corpus: Mapping[str, str]) -> str:
    """Hash of the target space: ids and texts, in order."""
    digest = hashlib.sha256()
    for key, text in corpus.items():
        digest.update(f"{key}\0{text}\n".encode())
    return digest.hexdigest()


def target_cache_path(
    encoder: Encoder, corpus: Mapping[str, str], cache_dir: str | Path, side: str | None = None
) -> Path:
    """``<cache_dir>/<model>-<model hash>/<corpus hash>[.<side>].npy`` (``side``: a projection model's side
    that encoded the corpus)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(encoder.name).name or "model")
    folder = Path(cache_dir).expanduser() / f"{slug}-{model_fingerprint(encoder)[:16]}"
    suffix = f".{side}" if side else ""
    return folder / f"{corpus_fingerprint(corpus)[:32]}{suffix}.npy"


def target_embeddings(
    encoder: Encoder,
    corpus: Mapping[str, str],
    cache_dir: str | Path | None = None,
    log: Log | None = None,
    *,
    ray: RayEmbedding | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """Pooled, L2-normalised embeddings of the corpus texts (of input ``kind``), read from / written to the
    cache when given (computed as :func:`pooled_embeddings` says when not cached)."""
    side = encoder.side(kind)
    path = target_cache_path(encoder, corpus, cache_dir, side) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.shape == (len(corpus), encoder.output_dim):
            if log is not None:
                log(f"target embeddings from cache {path}")
            return cached
    if log is not None:
        log(f"embedding {len(corpus)} targets with {encoder.name}")
    vectors = pooled_embeddings(encoder, list(corpus.values()), ray, log, kind)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, vectors)
        os.replace(partial, path)
    return vectors


# ------------------------------------------------------------------------------------------ ranking


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
    log: Log | None = None,
    ray: RayEmbedding | None = None,
    query_kind: str | None = None,
    target_kind: str | None = None,
) -> Ranking:
    """Rank the corpus for every query with ``encoder`` and ``scorer``; keep the top ``k``. With ``ray``,
    large target spaces and (cosine) query sets are embedded by Ray Data actors. ``query_kind`` and
    ``target_kind`` (WorkRB input types) pick a projection model's side for each."""
    if scorer not in SCORERS:
        raise ValueError(f"unknown scorer '{scorer}' (known: {', '.join(SCORERS)})")
    if scorer == "late-interaction" and encoder.head is not None:
        raise ValueError("late-interaction scoring works on models with mean pooling, not a trained head")
    targets = target_embeddings(encoder, corpus, cache_dir, log, ray=ray, kind=target_kind)
    texts = list(queries.values())
    if log is not None:
        log(f"embedding {len(texts)} queries ({scorer})")
    if scorer == "cosine":
        pooled = pooled_embeddings(encoder, texts, ray, log, query_kind)
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
            log,
        )
    return Ranking(list(queries), list(corpus), indices, scores)
