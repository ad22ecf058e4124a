"""Non-skill sentence filter (arXiv 2601.09119): drop sentences without skill content before extraction.

A logistic regression on the encoder's pooled, L2-normalised sentence embedding (the same backbone that
extracts the skills): p(skill | s) = σ(w · ê(s) + b); a sentence is kept when p ≥ ``threshold``. Fitted with
scikit-learn (L2-regularised, classes balanced) on SkillSpan train sentences, a sentence without any skill
or knowledge span being a negative. It is stored beside the model as ``skill_filter.json`` (weights, bias,
threshold, the data it was fitted on), so it travels with the model folder to evaluation and serving.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workembed.errors import DatasetError

FILTER_FILE = "skill_filter.json"


@dataclass(frozen=True)
class SkillFilter:
    """``p = σ(w · x + b)`` over L2-normalised embeddings ``x``; keep a sentence when ``p ≥ threshold``."""

    weights: np.ndarray  # [dim], float64
    bias: float
    threshold: float = 0.5
    info: Mapping[str, Any] = field(default_factory=dict)

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        """``[n]`` probabilities that each embedded sentence carries a skill."""
        if vectors.ndim != 2 or vectors.shape[1] != len(self.weights):
            raise ValueError(f"expected [n, {len(self.weights)}] embeddings, got {vectors.shape}")
        return 1.0 / (1.0 + np.exp(-(vectors.astype(np.float64) @ self.weights + self.bias)))

    def keep(self, vectors: np.ndarray) -> np.ndarray:
        """``[n]`` bool: the sentences that go on to extraction."""
        return self.probability(vectors) >= self.threshold

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / FILTER_FILE
        record = {
            "weights": self.weights.tolist(),
            "bias": self.bias,
            "threshold": self.threshold,
            **dict(self.info),
        }
        path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SkillFilter:
        record = json.loads((Path(directory) / FILTER_FILE).read_text(encoding="utf-8"))
        weights = np.asarray(record.pop("weights"), dtype=np.float64)
        return cls(weights, float(record.pop("bias")), float(record.pop("threshold")), record)


def read_skill_filter(directory: str | os.PathLike) -> SkillFilter | None:
    """The filter saved in a model folder, or None."""
    return SkillFilter.load(directory) if (Path(directory) / FILTER_FILE).is_file() else None


def fit_skill_filter(
    vectors: np.ndarray,
    has_skill: Sequence[bool],
    *,
    regularization: float = 1.0,
    threshold: float = 0.5,
    seed: int = 0,
) -> SkillFilter:
    """Fit the logistic regression on embedded sentences and their labels."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(has_skill, dtype=bool)
    if labels.all() or not labels.any():
        raise DatasetError("the filter needs sentences with and without skills")
    model = LogisticRegression(C=regularization, class_weight="balanced", max_iter=2000, random_state=seed)
    model.fit(vectors, labels)
    return SkillFilter(model.coef_[0].astype(np.float64), float(model.intercept_[0]), threshold)


def precision_recall(kept: np.ndarray, has_skill: np.ndarray) -> dict[str, float]:
    """Precision and recall of ``kept`` as a detector of skill-bearing sentences, and the share dropped."""
    kept, has_skill = np.asarray(kept, dtype=bool), np.asarray(has_skill, dtype=bool)
    true_positives = float((kept & has_skill).sum())
    precision = true_positives / kept.sum() if kept.any() else 0.0
    recall = true_positives / has_skill.sum() if has_skill.any() else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "dropped": float(1 - kept.mean())}
