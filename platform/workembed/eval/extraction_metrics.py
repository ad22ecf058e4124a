"""Metrics of skill extraction (ConTeXT-match, :mod:`workembed.retrieval.skill_extraction`) against gold
skills, and the threshold calibration that uses them.

Notation: a sentence ``s`` has predicted skills ``P_s`` and gold skills ``G_s``; ``S`` is the skill space
(``skill_ids``, the columns of a score matrix).

- Micro P/R/F1 over all (sentence, skill) pairs: ``TP = Σ_s |P_s ∩ G_s|``, ``P = TP / Σ_s |P_s|``,
  ``R = TP / Σ_s |G_s|``, ``F1 = 2·TP / (Σ_s |P_s| + Σ_s |G_s|)`` (the harmonic mean of P and R); a ratio
  with a zero denominator is 0. Gold skills outside ``S`` count in ``Σ|G_s|`` and are never predicted.
- Macro P/R/F1: the same per sentence, averaged over the sentences with ``G_s ≠ ∅`` (``p_s = 0`` when
  nothing is predicted).
- Threshold calibration: the grid value (ascending) with the highest micro F1 on a validation split; among
  equal F1 values the lowest threshold (the one with the highest recall) wins.
- F1@K (keyphrase convention, Meng et al. 2017 / Chan et al. 2019): with ``h_s = |top_K(s) ∩ G_s|``,
  ``P@K = h_s / K`` (K fixed even when fewer than K skills are ranked), ``R@K = h_s / |G_s|`` and
  ``F1@K = 2·h_s / (K + |G_s|)``; macro: the mean over sentences with ``G_s ≠ ∅``; micro:
  ``2·Σh_s / (K·n + Σ|G_s|)`` over the same sentences.
- Redundancy: the share of predictions the redundancy filter removes, ``1 − Σ_s |F(P_s)| / Σ_s |P_s|``. The
  filter is idempotent, so after filtering it is 0 by construction; :func:`mean_pairwise_similarity` is a
  filter-independent measure (mean cosine between the skills predicted for one sentence) to compare
  before and after.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import numpy as np

from workembed.retrieval.scoring import l2_normalize
from workembed.retrieval.skill_extraction import Among, Scores, check_matrix, filter_predictions

DEFAULT_GRID = np.linspace(0.0, 1.0, 101)


# ------------------------------------------------------------------------------ P / R / F1, F1@K


def precision_recall_f1(predicted: Sequence[Collection[str]], gold: Sequence[Collection[str]]) -> dict:
    """Micro precision/recall/F1 over all (sentence, skill) pairs and their macro means over sentences with
    gold skills; also ``sentences``, ``evaluated`` (sentences with gold) and ``predicted_per_sentence``."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sets for {len(gold)} gold sets")
    pred_sets, gold_sets = [set(p) for p in predicted], [set(g) for g in gold]
    hits = [len(p & g) for p, g in zip(pred_sets, gold_sets, strict=True)]
    tp, n_pred, n_gold = sum(hits), sum(map(len, pred_sets)), sum(map(len, gold_sets))
    judged = [(h, len(p), len(g)) for h, p, g in zip(hits, pred_sets, gold_sets, strict=True) if g]
    n = len(judged)
    return {
        "precision": _ratio(tp, n_pred),
        "recall": _ratio(tp, n_gold),
        "f1": _ratio(2 * tp, n_pred + n_gold),
        "macro_precision": sum(_ratio(h, p) for h, p, _ in judged) / n if n else float("nan"),
        "macro_recall": sum(h / g for h, _, g in judged) / n if n else float("nan"),
        "macro_f1": sum(2 * h / (p + g) for h, p, g in judged) / n if n else float("nan"),
        "sentences": len(gold_sets),
        "evaluated": n,
        "predicted_per_sentence": n_pred / len(pred_sets) if pred_sets else float("nan"),
    }


def f1_at_k(
    ranked: Sequence[Sequence[str]],
    gold: Sequence[Collection[str]],
    k: int = 5,
    average: Literal["macro", "micro"] = "macro",
) -> float:
    """F1@K = 2·h / (K + |G|) with h = |top_K ∩ G| (P@K = h/K, R@K = h/|G|); macro: the mean over sentences
    with gold skills, micro: 2·Σh / (K·n + Σ|G|). NaN when no sentence has gold skills."""
    if k < 1:
        raise ValueError("k must be at least 1")
    if len(ranked) != len(gold):
        raise ValueError(f"{len(ranked)} rankings for {len(gold)} gold sets")
    pairs = [(len(set(r[:k]) & set(g)), len(set(g))) for r, g in zip(ranked, gold, strict=True) if g]
    if not pairs:
        return float("nan")
    if average == "micro":
        return 2 * sum(h for h, _ in pairs) / (k * len(pairs) + sum(g for _, g in pairs))
    if average != "macro":
        raise ValueError(f"average must be 'macro' or 'micro', got '{average}'")
    return sum(2 * h / (k + g) for h, g in pairs) / len(pairs)


# -------------------------------------------------------------------------------- calibration


def threshold_table(
    scores: Scores,
    gold: Sequence[Collection[str]],
    grid: Sequence[float] | np.ndarray = DEFAULT_GRID,
    skill_ids: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Micro precision, recall and F1 of ``P_s(t)`` at each threshold ``t`` of ``grid`` (sorted ascending).

    Keys: ``threshold``, ``predicted`` (Σ|P_s(t)|), ``true_positives``, ``precision``, ``recall``, ``f1``.
    Computed from sorted scores (no prediction sets are built): O((N + |grid|) log N) for N scores.
    """
    thresholds = np.sort(np.asarray(grid, dtype=np.float64).ravel())
    all_scores, gold_scores, n_gold = _score_pairs(scores, gold, skill_ids)
    predicted = _count_at_least(all_scores, thresholds)
    true_positives = _count_at_least(gold_scores, thresholds)
    return {
        "threshold": thresholds,
        "predicted": predicted,
        "true_positives": true_positives,
        "precision": _ratios(true_positives, predicted),
        "recall": _ratios(true_positives, np.full_like(predicted, n_gold)),
        "f1": _ratios(2 * true_positives, predicted + n_gold),
    }


def calibrate_threshold(
    scores: Scores,
    gold: Sequence[Collection[str]],
    grid: Sequence[float] | np.ndarray = DEFAULT_GRID,
    skill_ids: Sequence[str] | None = None,
) -> tuple[float, dict[str, np.ndarray]]:
    """The grid threshold with the highest micro F1 (the lowest one among ties) and the full
    :func:`threshold_table`."""
    table = threshold_table(scores, gold, grid, skill_ids)
    if table["threshold"].size == 0:
        raise ValueError("the threshold grid is empty")
    return float(table["threshold"][int(np.argmax(table["f1"]))]), table


# --------------------------------------------------------------------------------- redundancy


def redundancy(
    predicted: Sequence[Collection[str]],
    token_scores: Sequence[np.ndarray],
    skill_ids: Sequence[str],
    among: Among = "all",
) -> float:
    """Share of predictions the redundancy filter removes: 1 − Σ_s |F(P_s)| / Σ_s |P_s| (0 without
    predictions, and 0 on filtered predictions since the filter is idempotent)."""
    kept = filter_predictions(predicted, token_scores, skill_ids, among)
    total = sum(len(set(p)) for p in predicted)
    return 1.0 - sum(map(len, kept)) / total if total else 0.0


def mean_pairwise_similarity(
    predicted: Sequence[Collection[str]], skill_vectors: np.ndarray, skill_ids: Sequence[str]
) -> float:
    """Mean over sentences with ≥ 2 predictions of the mean cosine between their distinct predicted
    skills' vectors: (2 / (m(m−1))) Σ_{a<b} ŷ_a · ŷ_b. NaN when no sentence has two predictions."""
    if len(skill_vectors) != len(skill_ids):
        raise ValueError(f"{len(skill_vectors)} skill vectors for {len(skill_ids)} skill ids")
    column = {skill: j for j, skill in enumerate(skill_ids)}
    values = []
    for skills in predicted:
        indices = sorted({column[skill] for skill in skills})
        if len(indices) < 2:
            continue
        vectors = l2_normalize(skill_vectors[indices]).astype(np.float64)
        m = len(indices)
        gram = vectors @ vectors.T
        values.append((gram.sum() - np.trace(gram)) / (m * (m - 1)))
    return float(np.mean(values)) if values else float("nan")


# ------------------------------------------------------------------------------------ helpers


def _score_pairs(
    scores: Scores, gold: Sequence[Collection[str]], skill_ids: Sequence[str] | None
) -> tuple[np.ndarray, np.ndarray, int]:
    """All scores, the scores of the gold (sentence, skill) pairs that have one, and Σ_s |G_s|."""
    if len(scores) != len(gold):
        raise ValueError(f"{len(scores)} score rows for {len(gold)} gold sets")
    gold_sets = [set(g) for g in gold]
    n_gold = sum(map(len, gold_sets))
    if isinstance(scores, np.ndarray):
        column = {skill: j for j, skill in enumerate(check_matrix(scores, skill_ids))}
        pairs = np.array(
            [(i, column[s]) for i, g in enumerate(gold_sets) for s in g if s in column], dtype=np.int64
        ).reshape(-1, 2)
        hits = scores[pairs[:, 0], pairs[:, 1]]
        return scores.ravel().astype(np.float64), hits.astype(np.float64), n_gold
    flat = np.fromiter((v for row in scores for v in row.values()), dtype=np.float64)
    hits = [row[s] for row, g in zip(scores, gold_sets, strict=True) for s in g if s in row]
    return flat, np.asarray(hits, dtype=np.float64), n_gold


def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``#{v ≥ t}`` for each threshold (NaN scores count nowhere)."""
    ordered = np.sort(values[~np.isnan(values)])
    return (ordered.size - np.searchsorted(ordered, thresholds, side="left")).astype(np.int64)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _ratios(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
