"""The extended project–profile adjacency on hand-built batches."""

from __future__ import annotations

import pytest
import torch

from workembed.losses import extend_adjacency

# 2 projects (p0, p1) then 4 profiles (f0..f3)
LABELS = torch.tensor(
    [
        [1, 1, -1, 0],  # p0: f0, f1 positive, f2 negative
        [0, 1, 0, 1],  # p1: f1, f3 positive
    ]
)
PROJECT_CATEGORIES = torch.tensor([0, 1])
PROFILE_CATEGORIES = torch.tensor([0, 0, 1, -1])  # f3's category is unknown


def test_labels_transitive_relations_and_weak_negatives():
    expected = torch.tensor(
        [
            # p0  p1  f0  f1  f2  f3
            [0, -1, 1, 1, -1, 0],  # p0–p1 differ in category; p0–f3: f3's category unknown
            [-1, 0, -1, 1, 0, 1],  # p1–f1 stays positive though the categories differ; p1–f2 same category
            [1, -1, 0, 1, -1, 0],  # f0–f1 share p0
            [1, 1, 1, 0, -1, 1],  # f1–f3 share p1
            [-1, 0, -1, -1, 0, 0],  # a negative for p0 does not relate f2 to p0's positives
            [0, 1, 0, 1, 0, 0],
        ],
        dtype=torch.int8,
    )
    assert torch.equal(extend_adjacency(LABELS, PROJECT_CATEGORIES, PROFILE_CATEGORIES), expected)


def test_without_categories_or_transitivity():
    plain = extend_adjacency(LABELS, transitive=False)
    expected = torch.zeros(6, 6, dtype=torch.int8)
    expected[:2, 2:] = LABELS
    expected[2:, :2] = LABELS.T
    assert torch.equal(plain, expected)
    transitive = extend_adjacency(LABELS)
    expected[2, 3] = expected[3, 2] = expected[3, 5] = expected[5, 3] = 1
    assert torch.equal(transitive, expected)


def test_bad_labels_and_categories_are_rejected():
    with pytest.raises(ValueError, match="only -1"):
        extend_adjacency(torch.tensor([[2, 0]]))
    with pytest.raises(ValueError, match="both project_categories and profile_categories"):
        extend_adjacency(LABELS, project_categories=PROJECT_CATEGORIES)
    with pytest.raises(ValueError, match="profile_categories must be 4"):
        extend_adjacency(LABELS, PROJECT_CATEGORIES, torch.tensor([0, 1]))
