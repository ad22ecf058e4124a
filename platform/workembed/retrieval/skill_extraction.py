"""Skill extraction as in ConTeXT-match (Decorte et al., "Efficient text encoders for labor market
analysis", 2025): score every skill for a sentence, keep those above a calibrated threshold, then drop
redundant ones with a token-level filter.

Notation: a sentence ``s`` has predicted skills ``P_s``; ``S`` is the skill space (``skill_ids``, the
columns of a score matrix).

- Match score (token attention, the same formula as the late-interaction scorer of
  :mod:`workembed.retrieval.scoring`): with L2-normalised token vectors ``x_i`` and skill vector ``y``,
  ``c_i = x̂_i · ŷ`` and ``score(s, y) = Σ_i softmax_i(c_i / τ) · c_i``.
- Prediction: ``P_s(t) = {y ∈ S : score(s, y) ≥ t}`` (the threshold ``t`` is calibrated on annotated
  sentences: :mod:`workembed.eval.extraction_metrics`).
- Redundancy filter: with token scores ``T[i, j] = c_i`` of skill ``j``, keep ``y ∈ P_s`` iff ``y`` is
  ``argmax_j T[i, j]`` for at least one token ``i``; ``j`` runs over all skills (``among="all"``) or over
  ``P_s`` only (``among="candidates"``: then at least one skill survives). Ties go to the lower skill index.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Literal

import numpy as np

from workembed.retrieval.scoring import l2_normalize, top_k_rows

Among = Literal["all", "candidates"]
Scores = np.ndarray | Sequence[Mapping[str, float]]
"""Per sentence, a score per skill: a ``[n_sentences, n_skills]`` array (columns ``skill_ids``) or, sparse,
one ``{skill_id: score}`` per sentence (skills left out are never predicted)."""


# ------------------------------------------------------------------------------------ predictions


def predict(scores: Scores, threshold: float, skill_ids: Sequence[str] | None = None) -> list[set[str]]:
    """``P_s = {y : score(s, y) ≥ threshold}`` for each sentence."""
    if isinstance(scores, np.ndarray):
        ids = check_matrix(scores, skill_ids)
        return [{ids[j] for j in np.flatnonzero(row >= threshold)} for row in scores]
    return [{skill for skill, value in row.items() if value >= threshold} for row in scores]


def rank_skills(scores: Scores, k: int, skill_ids: Sequence[str] | None = None) -> list[list[str]]:
    """The ``k`` best skills of each sentence, best first (ties: lower column / first listed first)."""
    if isinstance(scores, np.ndarray):
        ids = check_matrix(scores, skill_ids)
        if scores.shape[1] == 0:
            return [[] for _ in range(len(scores))]
        indices, _ = top_k_rows(scores, k)
        return [[ids[j] for j in row] for row in indices]
    return [[skill for skill, _ in sorted(row.items(), key=lambda item: -item[1])[:k]] for row in scores]


# --------------------------------------------------------------------------- redundancy filter


def redundancy_filter(
    token_scores: np.ndarray, candidates: Collection[int] | np.ndarray, among: Among = "all"
) -> np.ndarray:
    """The candidate skill indices (sorted) that are ``argmax_j token_scores[i, j]`` for some token ``i``.

    ``token_scores`` is ``[n_tokens, n_skills]``; ``j`` runs over all skills (``among="all"``) or over the
    candidates (``among="candidates"``). No token keeps nothing.
    """
    if token_scores.ndim != 2:
        raise ValueError(f"token_scores must be [n_tokens, n_skills], got shape {token_scores.shape}")
    kept = np.unique(np.asarray(list(candidates), dtype=np.int64))
    if kept.size == 0 or token_scores.shape[0] == 0:
        return kept[:0]
    if among == "all":
        best = token_scores.argmax(axis=1)
    elif among == "candidates":
        best = kept[token_scores[:, kept].argmax(axis=1)]
    else:
        raise ValueError(f"among must be 'all' or 'candidates', got '{among}'")
    return kept[np.isin(kept, best)]


def filter_predictions(
    predicted: Sequence[Collection[str]],
    token_scores: Sequence[np.ndarray],
    skill_ids: Sequence[str],
    among: Among = "all",
) -> list[set[str]]:
    """:func:`redundancy_filter` applied to each sentence's predicted skills (``token_scores[s]`` is
    ``[n_tokens, len(skill_ids)]``)."""
    if len(predicted) != len(token_scores):
        raise ValueError(f"{len(predicted)} predicted sets for {len(token_scores)} token score matrices")
    column = {skill: j for j, skill in enumerate(skill_ids)}
    kept = []
    for skills, matrix in zip(predicted, token_scores, strict=True):
        if matrix.ndim != 2 or matrix.shape[1] != len(skill_ids):
            raise ValueError(f"token scores of shape {matrix.shape} for {len(skill_ids)} skills")
        indices = redundancy_filter(matrix, [column[skill] for skill in skills], among)
        kept.append({skill_ids[j] for j in indices})
    return kept


# ---------------------------------------------------------------------------- end to end


def extract_skills(
    token_vectors: Sequence[np.ndarray],
    skill_vectors: np.ndarray,
    skill_ids: Sequence[str],
    threshold: float,
    temperature: float = 0.05,
    among: Among = "all",
) -> tuple[list[set[str]], list[set[str]]]:
    """Per sentence (its token vectors, e.g. :func:`~workembed.retrieval.embedding.query_token_vectors`), the
    skills with ``score ≥ threshold`` and those the redundancy filter keeps.

    The token × skill cosines are computed once per sentence and serve both the match score and the filter,
    so the full ``[n_tokens, n_skills]`` matrices are never held for more than one sentence.
    """
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    if len(skill_vectors) != len(skill_ids):
        raise ValueError(f"{len(skill_vectors)} skill vectors for {len(skill_ids)} skill ids")
    targets = l2_normalize(skill_vectors)
    predicted, kept = [], []
    for tokens in token_vectors:
        cosines = l2_normalize(tokens) @ targets.T  # [n_tokens, n_skills]
        candidates = np.flatnonzero(token_attention_scores(cosines, temperature) >= threshold)
        predicted.append({skill_ids[j] for j in candidates})
        kept.append({skill_ids[j] for j in redundancy_filter(cosines, candidates, among)})
    return predicted, kept


def token_attention_scores(cosines: np.ndarray, temperature: float) -> np.ndarray:
    """``[n_skills]``: Σ_i softmax_i(c_i / τ) · c_i from the ``[n_tokens, n_skills]`` cosines ``c``."""
    logits = cosines / temperature
    weights = np.exp(logits - logits.max(axis=0, keepdims=True))
    weights /= weights.sum(axis=0, keepdims=True)
    return (weights * cosines).sum(axis=0)


# ------------------------------------------------------------------------------------ helpers


def check_matrix(scores: np.ndarray, skill_ids: Sequence[str] | None) -> Sequence[str]:
    """The column ids of a score matrix (``skill_ids``), checked against its shape."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be [n_sentences, n_skills], got shape {scores.shape}")
    if skill_ids is None or len(skill_ids) != scores.shape[1]:
        raise ValueError(f"a score matrix of shape {scores.shape} needs {scores.shape[1]} skill_ids")
    return skill_ids
