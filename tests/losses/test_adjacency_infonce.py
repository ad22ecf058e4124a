"""The masked adjacency InfoNCE against hand-computed values; unknown pairs leave it unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from workembed.losses import AdjacencyInfoNCELoss, extend_adjacency

# p0, p1, f0, f1: p0–f0 and p1–f1 positive, p1–f0 negative, p0–p1 a weak negative, p0–f1 and f0–f1 unknown
ADJACENCY = torch.tensor([[0, -1, 1, 0], [-1, 0, -1, 1], [1, -1, 0, 0], [0, 1, 0, 0]])
SCORES = torch.tensor(
    [
        [1.0, 0.2, 0.7, 0.4],
        [0.2, 1.0, 0.1, 0.6],
        [0.7, 0.1, 1.0, 0.3],
        [0.4, 0.6, 0.3, 1.0],
    ],
    dtype=torch.float64,
)


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def reference(scores: np.ndarray, adjacency: np.ndarray, n_projects: int, tau: float) -> float:
    """Explicit loops: −mean log softmax over the known relations, averaged per side, then over sides."""
    sides: dict[bool, list[float]] = {True: [], False: []}
    for a in range(len(adjacency)):
        positives = [b for b in range(len(adjacency)) if adjacency[a, b] == 1]
        if not positives:
            continue
        known = [c for c in range(len(adjacency)) if adjacency[a, c] != 0]
        log_z = lse(*(scores[a, c] / tau for c in known))
        sides[a < n_projects].append(-sum(scores[a, b] / tau - log_z for b in positives) / len(positives))
    means = [sum(values) / len(values) for values in sides.values() if values]
    return sum(means) / len(means)


def test_hand_built_batch():
    out = AdjacencyInfoNCELoss(temperature=0.5).from_scores(SCORES, ADJACENCY, n_projects=2)
    p0 = -(1.4 - lse(0.4, 1.4))  # positive f0; known p1, f0 (f1 unknown)
    p1 = -(1.2 - lse(0.4, 0.2, 1.2))  # positive f1; known p0, f0, f1
    f0 = -(1.4 - lse(1.4, 0.2))  # positive p0; known p0, p1 (f1 unknown)
    f1 = 0.0  # its only known relation is its positive p1
    assert out.parts["project"].item() == pytest.approx((p0 + p1) / 2)
    assert out.parts["profile"].item() == pytest.approx((f0 + f1) / 2)
    assert out.loss.item() == pytest.approx(((p0 + p1) / 2 + (f0 + f1) / 2) / 2)


def test_unknown_pairs_are_outside_the_softmax():
    loss = AdjacencyInfoNCELoss(temperature=0.5)
    base = loss.from_scores(SCORES, ADJACENCY, n_projects=2).loss.item()
    unknown = SCORES.clone()
    for a, b in ((0, 3), (2, 3)):
        unknown[a, b] = unknown[b, a] = 5.0
    assert loss.from_scores(unknown, ADJACENCY, n_projects=2).loss.item() == pytest.approx(base, rel=1e-12)
    negative = SCORES.clone()
    negative[0, 1] = negative[1, 0] = 0.9  # a known (weak) negative does count
    assert loss.from_scores(negative, ADJACENCY, n_projects=2).loss.item() > base + 0.1
    scores = SCORES.clone().requires_grad_(True)
    loss.from_scores(scores, ADJACENCY, n_projects=2).loss.backward()
    assert scores.grad[0, 3] == 0 and scores.grad[2, 3] == 0 and scores.grad[0, 1] != 0


def test_embeddings_with_extended_adjacency_match_the_formula():
    generator = torch.Generator().manual_seed(0)
    projects, profiles = torch.randn(2, 5, generator=generator), torch.randn(3, 5, generator=generator)
    labels = torch.tensor([[1, 1, 0], [-1, 0, 1]])
    adjacency = extend_adjacency(labels, torch.tensor([0, 1]), torch.tensor([0, 0, 1]))
    assert adjacency[2, 3] == 1  # f0–f1 related through p0
    out = AdjacencyInfoNCELoss(temperature=0.1)(projects, profiles, adjacency)
    documents = torch.cat([projects, profiles]).numpy().astype(float)
    documents /= np.linalg.norm(documents, axis=1, keepdims=True)
    expected = reference(documents @ documents.T, adjacency.numpy(), 2, 0.1)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_no_positive_gives_a_zero_loss():
    projects = torch.randn(1, 3, requires_grad=True)
    out = AdjacencyInfoNCELoss()(projects, torch.randn(1, 3), torch.tensor([[0, -1], [-1, 0]]))
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.parts == {}
    assert torch.equal(projects.grad, torch.zeros(1, 3))


def test_gradients_are_exact_and_reach_both_towers():
    generator = torch.Generator().manual_seed(1)
    projects = torch.randn(2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    profiles = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    adjacency = extend_adjacency(
        torch.tensor([[1, 1, -1], [0, -1, 1]]), torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    )
    loss = AdjacencyInfoNCELoss(temperature=0.2)
    assert torch.autograd.gradcheck(lambda p, f: loss(p, f, adjacency).loss, (projects, profiles))
    loss(projects, profiles, adjacency).loss.backward()
    for grad in (projects.grad, profiles.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_bad_inputs_are_rejected():
    loss = AdjacencyInfoNCELoss()
    with pytest.raises(ValueError, match="square extended adjacency"):
        loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([[1, 0], [0, 1]])[:1])
    with pytest.raises(ValueError, match="zero diagonal"):
        loss.from_scores(torch.zeros(2, 2), torch.eye(2, dtype=torch.long), n_projects=1)
    with pytest.raises(ValueError, match="one width"):
        loss(torch.randn(1, 3), torch.randn(1, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="positive"):
        AdjacencyInfoNCELoss(temperature=-1.0)
