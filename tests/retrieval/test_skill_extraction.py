"""ConTeXT-match extraction algorithm against hand-computed values on small hand-built arrays."""

from __future__ import annotations

import numpy as np
import pytest

from workembed.retrieval.scoring import late_interaction_scores
from workembed.retrieval.skill_extraction import (
    extract_skills,
    filter_predictions,
    predict,
    rank_skills,
    redundancy_filter,
    token_attention_scores,
)

SKILLS = ["a", "b", "c", "d"]
SCORES = np.array([[0.9, 0.425, 0.415, 0.1], [0.2, 0.425, 0.05, 0.6]])
TOKENS = np.array(
    [
        [0.9, 0.5, 0.2, 0.1, 0.0],  # -> 0
        [0.1, 0.3, 0.8, 0.2, 0.1],  # -> 2
        [0.7, 0.6, 0.1, 0.3, 0.2],  # -> 0
        [0.2, 0.1, 0.3, 0.25, 0.9],  # -> 4 over all skills, -> 2 over the candidates 0-3
    ]
)


def test_predict_and_rank():
    assert predict(SCORES, 0.42, SKILLS) == [{"a", "b"}, {"b", "d"}]
    assert rank_skills(SCORES, 2, SKILLS) == [["a", "b"], ["d", "b"]]
    assert rank_skills([{"x": 0.1, "y": 0.7, "z": 0.7}], 2) == [["y", "z"]]
    with pytest.raises(ValueError, match="skill_ids"):
        predict(SCORES, 0.5)


def test_redundancy_filter_removes_skills_no_token_prefers():
    for among in ("all", "candidates"):
        np.testing.assert_array_equal(redundancy_filter(TOKENS, [3, 1, 0, 2], among), [0, 2])
    changed = TOKENS.copy()
    changed[3] = [0.2, 0.1, 0.25, 0.3, 0.9]  # the last token now prefers 3 among the candidates
    np.testing.assert_array_equal(redundancy_filter(changed, [0, 1, 2, 3], "all"), [0, 2])
    np.testing.assert_array_equal(redundancy_filter(changed, [0, 1, 2, 3], "candidates"), [0, 2, 3])
    assert redundancy_filter(TOKENS, [], "all").size == 0
    assert redundancy_filter(TOKENS[:0], [1], "all").size == 0


def test_extract_skills_matches_the_late_interaction_scorer_and_the_filter():
    rng = np.random.default_rng(0)
    sentences = [rng.normal(size=(n, 8)).astype(np.float32) for n in (3, 5, 6)]
    skill_vectors = rng.normal(size=(7, 8)).astype(np.float32)
    skills = [f"k{j}" for j in range(7)]
    scores = late_interaction_scores(sentences, skill_vectors, 0.1)
    ordered = np.sort(scores.ravel())
    threshold = float((ordered[10] + ordered[11]) / 2)  # 10 of the 21 pairs predicted
    predicted, kept = extract_skills(sentences, skill_vectors, skills, threshold, temperature=0.1)
    assert predicted == predict(scores, threshold, skills) and sum(map(len, predicted)) == 10
    unit = skill_vectors / np.linalg.norm(skill_vectors, axis=1, keepdims=True)
    cosines = [(s / np.linalg.norm(s, axis=1, keepdims=True)) @ unit.T for s in sentences]
    assert kept == filter_predictions(predicted, cosines, skills)
    assert all(k <= p for k, p in zip(kept, predicted, strict=True))


def test_token_attention_limits():
    cosines = np.array([[0.2, 0.9], [0.6, 0.1], [0.4, 0.5]])
    np.testing.assert_allclose(token_attention_scores(cosines, 1e4), cosines.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(token_attention_scores(cosines, 1e-4), cosines.max(axis=0))
