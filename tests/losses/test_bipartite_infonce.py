"""The many-to-many InfoNCE against hand-computed values, torch's cross-entropy InfoNCE, and gradcheck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workembed.losses import BipartiteInfoNCELoss


def lse(*values: float) -> float:
    return math.log(sum(math.exp(v) for v in values))


def reference(scores, positives, left_tasks, right_tasks, temperatures, weights, symmetric=True):
    """Explicit loops over the formula: rows with positives, the row's task temperature and weight."""
    scores, positives = np.asarray(scores, dtype=float), np.asarray(positives, dtype=bool)
    n_left, n_right = positives.shape

    def direction(s, p, tasks):
        terms = []
        for i in range(p.shape[0]):
            cols = [j for j in range(p.shape[1]) if p[i, j]]
            if not cols:
                continue
            tau = temperatures[tasks[i]]
            log_z = lse(*(s[i, k] / tau for k in range(s.shape[1])))
            row = -sum(s[i, j] / tau - log_z for j in cols) / len(cols)
            terms.append(weights[tasks[i]] * row)
        return sum(terms) / len(terms)

    forward = direction(scores[:n_left], positives, left_tasks)
    if not symmetric:
        return forward
    return (forward + direction(scores[:, :n_right].T, positives.T, right_tasks)) / 2


def test_many_to_many_two_by_two_by_hand():
    # unit vectors with cosines s = [[1, 0.6], [0, 0.8]]; left 0 links to both right items
    left = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # lengths do not matter: cosine
    right = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    positives = torch.tensor([[True, True], [False, True]])
    out = BipartiteInfoNCELoss(temperature=0.5)(left, right, positives, torch.tensor([0, 0]))
    row_0 = -((2.0 - lse(2.0, 1.2)) + (1.2 - lse(2.0, 1.2))) / 2  # logits s / τ = [2.0, 1.2]
    row_1 = -(1.6 - lse(0.0, 1.6))  # logits [0.0, 1.6]
    col_0 = -(2.0 - lse(2.0, 0.0))  # right 0 against the left items: logits [2.0, 0.0], positive left 0
    col_1 = -((1.2 - lse(1.2, 1.6)) + (1.6 - lse(1.2, 1.6))) / 2
    expected = ((row_0 + row_1) / 2 + (col_0 + col_1) / 2) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.parts["0"].item() == pytest.approx(expected, rel=1e-6)


def test_diagonal_mask_equals_cross_entropy_infonce():
    generator = torch.Generator().manual_seed(0)
    left, right = torch.randn(4, 8, generator=generator), torch.randn(4, 8, generator=generator)
    tasks, diagonal = torch.zeros(4, dtype=torch.long), torch.eye(4, dtype=torch.bool)
    scores = F.normalize(left, dim=-1) @ F.normalize(right, dim=-1).T / 0.05
    labels = torch.arange(4)
    one_way = BipartiteInfoNCELoss(temperature=0.05, symmetric=False)(left, right, diagonal, tasks)
    assert one_way.loss.item() == pytest.approx(F.cross_entropy(scores, labels).item(), rel=1e-5)
    both = BipartiteInfoNCELoss(temperature=0.05)(left, right, diagonal, tasks)
    expected = (F.cross_entropy(scores, labels) + F.cross_entropy(scores.T, labels)) / 2
    assert both.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_symmetric_is_mean_of_both_directions():
    scores = torch.tensor([[0.9, 0.2, -0.1], [0.3, 0.7, 0.4], [0.0, 0.5, 0.6]])
    positives = torch.tensor([[True, True, False], [False, True, False], [False, True, True]])
    tasks = torch.tensor([0, 1, 1])
    one_way = BipartiteInfoNCELoss(temperature=[0.1, 0.2], symmetric=False)
    forward = one_way.from_scores(scores, positives, tasks).loss
    backward = one_way.from_scores(scores.T, positives.T, tasks).loss
    both = BipartiteInfoNCELoss(temperature=[0.1, 0.2]).from_scores(scores, positives, tasks).loss
    assert both.item() == pytest.approx(((forward + backward) / 2).item(), rel=1e-6)
    assert forward.item() != pytest.approx(backward.item(), rel=1e-3)  # the two directions do differ


def test_rows_without_positives_are_ignored():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.1], [0.5, 0.4, 0.7]])
    positives = torch.tensor([[True, False, False], [False, True, False], [False, False, False]])
    loss = BipartiteInfoNCELoss(temperature=0.5, symmetric=False)
    value = loss.from_scores(scores, positives, torch.zeros(3, dtype=torch.long)).loss.item()
    row_0 = -(1.8 - lse(1.8, 0.2, 0.6))
    row_1 = -(1.6 - lse(0.4, 1.6, 0.2))
    assert value == pytest.approx((row_0 + row_1) / 2, rel=1e-6)  # divided by 2 rows, not 3
    changed = scores.clone()
    changed[2] = torch.tensor([5.0, -3.0, 2.0])  # the row without positives
    assert loss.from_scores(
        changed, positives, torch.zeros(3, dtype=torch.long)
    ).loss.item() == pytest.approx(value, rel=1e-6)


def test_per_task_temperatures_and_weights_follow_each_rows_task():
    scores = np.array([[0.9, 0.2, 0.1], [0.3, 0.7, 0.4], [0.2, 0.5, 0.6]])
    positives = np.array([[True, False, True], [False, True, False], [False, False, True]])
    tasks = [0, 1, 0]
    temperatures, weights = [0.5, 0.25], [1.0, 3.0]
    loss = BipartiteInfoNCELoss(
        temperature=temperatures, weights=weights, task_names=["skill-job", "skill-alt"]
    )
    out = loss.from_scores(torch.tensor(scores), torch.tensor(positives), torch.tensor(tasks))
    assert out.loss.item() == pytest.approx(reference(scores, positives, tasks, tasks, temperatures, weights))
    # row 1 (task 1) at τ = 0.25, unweighted; column 1 (task 1) against the left items
    row_1 = -(0.7 / 0.25 - lse(0.3 / 0.25, 0.7 / 0.25, 0.4 / 0.25))
    col_1 = -(0.7 / 0.25 - lse(0.2 / 0.25, 0.7 / 0.25, 0.5 / 0.25))
    assert out.parts["skill-alt"].item() == pytest.approx((row_1 + col_1) / 2)
    assert set(out.parts) == {"skill-job", "skill-alt"}
    swapped = loss.from_scores(torch.tensor(scores), torch.tensor(positives), torch.tensor([1, 0, 1]))
    assert swapped.loss.item() == pytest.approx(
        reference(scores, positives, [1, 0, 1], [1, 0, 1], temperatures, weights)
    )
    assert swapped.loss.item() != pytest.approx(out.loss.item(), rel=1e-3)


def test_right_items_use_their_own_tasks():
    scores = np.array([[0.9, 0.2, 0.4], [0.1, 0.8, 0.3]])  # 2 left items, 3 right items
    positives = np.array([[True, False, True], [False, True, False]])
    left_tasks, right_tasks = [0, 1], [0, 1, 1]
    loss = BipartiteInfoNCELoss(temperature=[0.5, 0.2], weights=[1.0, 2.0])
    out = loss.from_scores(
        torch.tensor(scores), torch.tensor(positives), torch.tensor(left_tasks), torch.tensor(right_tasks)
    )
    expected = reference(scores, positives, left_tasks, right_tasks, [0.5, 0.2], [1.0, 2.0])
    assert out.loss.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="right_tasks is required"):
        loss.from_scores(torch.tensor(scores), torch.tensor(positives), torch.tensor(left_tasks))


def test_extra_candidates_are_negatives_of_the_other_side():
    generator = torch.Generator().manual_seed(1)
    left, right = torch.randn(2, 4, generator=generator), torch.randn(2, 4, generator=generator)
    extra_left, extra_right = torch.randn(1, 4, generator=generator), torch.randn(2, 4, generator=generator)
    positives = torch.tensor([[True, True], [False, True]])
    tasks = torch.tensor([0, 1])
    loss = BipartiteInfoNCELoss(temperature=[0.1, 0.3])
    out = loss(left, right, positives, tasks, extra_left=extra_left, extra_right=extra_right)
    all_left = F.normalize(torch.cat([left, extra_left]), dim=-1)
    all_right = F.normalize(torch.cat([right, extra_right]), dim=-1)
    scores = (all_left @ all_right.T).numpy()  # [3, 4]: local items first
    expected = reference(scores, positives.numpy(), [0, 1], [0, 1], [0.1, 0.3], [1.0, 1.0])
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    without = loss(left, right, positives, tasks)
    assert out.loss.item() > without.loss.item()  # more negatives in both softmaxes
    padded = loss.from_scores(torch.tensor(scores), positives, tasks)
    assert padded.loss.item() == pytest.approx(out.loss.item(), rel=1e-6)


def test_no_positive_in_the_batch_gives_a_zero_loss_that_backpropagates():
    left = torch.randn(2, 3, requires_grad=True)
    out = BipartiteInfoNCELoss()(
        left, torch.randn(2, 3), torch.zeros(2, 2, dtype=torch.bool), torch.tensor([0, 0])
    )
    out.loss.backward()
    assert out.loss.item() == 0.0 and out.parts == {}
    assert torch.equal(left.grad, torch.zeros(2, 3))


def test_gradients_are_exact_and_reach_both_sides():
    generator = torch.Generator().manual_seed(2)
    left = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    right = torch.randn(3, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    extra_right = torch.randn(2, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    positives = torch.tensor([[True, True, False], [False, True, False], [False, False, True]])
    tasks = torch.tensor([0, 1, 0])
    loss = BipartiteInfoNCELoss(temperature=[0.2, 0.5], weights=[1.0, 2.0])

    def value(left, right, extra_right):
        return loss(left, right, positives, tasks, extra_right=extra_right).loss

    assert torch.autograd.gradcheck(value, (left, right, extra_right))
    value(left, right, extra_right).backward()
    for grad in (left.grad, right.grad, extra_right.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"temperature": [0.1, 0.2], "weights": [1.0]}, "same number of tasks"),
        ({"temperature": 0.0}, "positive"),
        ({"weights": [-1.0]}, "non-negative"),
        ({"temperature": "0.1"}, "not a string"),
        ({"temperature": []}, "not be empty"),
    ],
)
def test_bad_settings_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BipartiteInfoNCELoss(**kwargs)


def test_bad_inputs_are_rejected():
    loss = BipartiteInfoNCELoss(temperature=[0.1, 0.2])
    scores, positives = torch.zeros(2, 2), torch.eye(2, dtype=torch.bool)
    with pytest.raises(ValueError, match="below 2, got values from 0 to 2"):
        loss.from_scores(scores, positives, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="bool"):
        loss.from_scores(scores, torch.eye(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="at least as large"):
        loss.from_scores(torch.zeros(1, 2), positives, torch.tensor([0, 1]))
