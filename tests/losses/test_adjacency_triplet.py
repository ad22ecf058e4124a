"""The dual adjacency triplet loss: zero once margins hold, hand-computed hinges otherwise."""

from __future__ import annotations

import pytest
import torch

from workembed.losses import AdjacencyTripletLoss, extend_adjacency

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


def test_zero_when_every_margin_holds():
    # triplets (anchor, positive, negative): (p0, f0, p1) 0.7 vs 0.2, (p1, f1, p0) 0.6 vs 0.2,
    # (p1, f1, f0) 0.6 vs 0.1, (f0, p0, p1) 0.7 vs 0.1: every gap is at least the margin 0.2
    out = AdjacencyTripletLoss(margin=0.2).from_scores(SCORES, ADJACENCY, n_projects=2)
    assert out.loss.item() == 0.0
    assert set(out.parts) == {"project", "profile"}


def test_hand_computed_hinges_in_both_directions():
    scores = SCORES.clone()
    scores[0, 1] = scores[1, 0] = 0.6  # p0–p1
    scores[1, 2] = scores[2, 1] = 0.6  # p1–f0
    scores[0, 3] = scores[3, 0] = 0.95  # p0–f1 is unknown: in no triplet
    out = AdjacencyTripletLoss(margin=0.2).from_scores(scores, ADJACENCY, n_projects=2)
    project = (
        max(0, 0.2 - 0.7 + 0.6) + max(0, 0.2 - 0.6 + 0.6) + max(0, 0.2 - 0.6 + 0.6)
    ) / 3  # (p0,f0,p1), (p1,f1,p0), (p1,f1,f0)
    profile = max(0, 0.2 - 0.7 + 0.6)  # (f0, p0, p1); f1 has no negative
    assert out.parts["project"].item() == pytest.approx(project)
    assert out.parts["profile"].item() == pytest.approx(profile)
    assert out.loss.item() == pytest.approx((project + profile) / 2)


def test_gradients_are_exact_and_reach_both_towers():
    generator = torch.Generator().manual_seed(0)
    projects = torch.randn(2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    profiles = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    adjacency = extend_adjacency(
        torch.tensor([[1, 1, -1], [0, -1, 1]]), torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    )
    loss = AdjacencyTripletLoss(margin=3.0)  # every hinge active: the loss is smooth here
    assert torch.autograd.gradcheck(lambda p, f: loss(p, f, adjacency).loss, (projects, profiles))
    loss(projects, profiles, adjacency).loss.backward()
    for grad in (projects.grad, profiles.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_no_triplet_gives_a_zero_loss():
    out = AdjacencyTripletLoss().from_scores(torch.zeros(2, 2), torch.tensor([[0, 1], [1, 0]]), n_projects=1)
    assert out.loss.item() == 0.0 and out.parts == {}


def test_bad_margin_is_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        AdjacencyTripletLoss(margin=-0.1)
