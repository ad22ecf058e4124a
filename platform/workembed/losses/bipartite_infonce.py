"""Many-to-many InfoNCE over the bipartite graphs of several tasks (UWE)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workembed.errors import ConfigError
from workembed.losses.output import LossOutput


class BipartiteInfoNCELoss(nn.Module):
    def __init__(
        self,
        temperature: float | Sequence[float] = 0.05,
        weights: float | Sequence[float] = 1.0,
        task_names: Sequence[str] | None = None,
        symmetric: bool = True,
    ) -> None:
        """
        InfoNCE with several positives per row, over a batch of (left, right) items drawn from the
        bipartite graphs of several tasks (skill–job, skill–sentence, skill–alt, ...). Every pair of
        batch items joined by an edge is a positive, not only the diagonal: a job title that needs three
        skills of the batch has three positives.

        With scores ``s`` (cosine of the embeddings, or a precomputed matrix such as soft late
        interaction), ``P_i`` the positive columns of row ``i``, ``t(i)`` its task, ``τ_t`` / ``w_t`` the
        task's temperature and weight, and ``I`` the rows with at least one positive::

            ℓ_i     = −1/|P_i| · Σ_{j ∈ P_i} log( exp(s_ij / τ_t(i)) / Σ_k exp(s_ik / τ_t(i)) )
            L_{l→r} = 1/|I| · Σ_{i ∈ I} w_t(i) · ℓ_i
            L       = ½ · (L_{l→r} + L_{r→l})          (L_{r→l}: the same over sᵀ, rows = right items)

        The softmax runs over every in-batch candidate column; rows without a positive are ignored. With
        unit weights ``L_{l→r}`` is the mean of ``ℓ_i``; with one positive per row on the diagonal it is
        the standard InfoNCE ``cross_entropy(s / τ, arange(B))``.

        In-batch negatives gathered from other workers enter as extra candidates: ``extra_right`` rows
        are appended as columns of the left→right softmax (and, having no positives, are no rows of the
        right→left one); ``extra_left`` likewise for right→left. They are always negatives: leave out
        the worker's own items (already in ``left`` / ``right``) and any duplicate of a local positive.

        Args:
            temperature: τ, one for every task or one per task index.
            weights: w, one for every task or one per task index.
            task_names: Names of the task indices, used as the keys of ``parts``; when given, its
                length fixes the number of tasks.
            symmetric: Average both directions (True) or use left→right only.

        References:
            De Lange, Decorte, Van Hautte (2025), "Unified Work Embeddings: Contrastive Learning of a
            Bidirectional Multi-task Ranker", arXiv:2511.07969. Oord, Li, Vinyals (2018), "Representation
            Learning with Contrastive Predictive Coding", arXiv:1807.03748.

        Inputs (of ``forward``; ``from_scores`` takes ``scores`` in place of the embeddings):
            +----------------+--------------------------------+-------------------------------------------+
            | argument       | shape                          | meaning                                   |
            +================+================================+===========================================+
            | left, right    | [B_l, D], [B_r, D]             | embeddings of the batch's two sides       |
            | positives      | [B_l, B_r] bool                | True where the graph joins the two items  |
            | left_tasks     | [B_l] int                      | task index of each left item              |
            | right_tasks    | [B_r] int, optional            | defaults to left_tasks (a batch of pairs) |
            | extra_left     | [E_l, D], optional             | gathered left candidates (no positives)   |
            | extra_right    | [E_r, D], optional             | gathered right candidates (no positives)  |
            | scores         | [B_l + E_l, B_r + E_r]         | precomputed scores, local items first     |
            +----------------+--------------------------------+-------------------------------------------+

        Returns a :class:`LossOutput`: the loss and, per task present, the unweighted mean of ``ℓ_i``
        over its rows, averaged over the directions (keyed by task name, or by the index as text).

        Example:
            ::

                loss_fn = BipartiteInfoNCELoss(temperature=[0.05, 0.1], task_names=["skill-job", "skill-alt"])
                left, right = torch.randn(3, 8), torch.randn(3, 8)  # pairs (left[i], right[i])
                positives = torch.eye(3, dtype=torch.bool)
                positives[0, 1] = True                              # left 0 also links to right 1
                out = loss_fn(left, right, positives, left_tasks=torch.tensor([0, 0, 1]))
                out.loss.backward()
                out.parts                                           # {"skill-job": ..., "skill-alt": ...}
        """
        super().__init__()
        if any(isinstance(values, str) for values in (temperature, weights, task_names)):
            raise ConfigError("temperature, weights and task_names take a number or a list, not a string")
        sizes = {
            len(values)
            for values in (temperature, weights, task_names)
            if values is not None and not isinstance(values, int | float)
        }
        if 0 in sizes:
            raise ConfigError("temperature, weights and task_names must not be empty lists")
        if len(sizes) > 1:
            raise ConfigError(
                "temperature, weights and task_names must give the same number of tasks, "
                f"got sizes {sorted(sizes)}"
            )
        self.n_tasks: int | None = sizes.pop() if sizes else None
        n_values = self.n_tasks or 1
        temperatures = _floats("temperature", temperature, n_values)
        if any(not math.isfinite(t) or t <= 0 for t in temperatures):
            raise ConfigError(f"temperature must be positive and finite, got {temperature}")
        task_weights = _floats("weights", weights, n_values)
        if any(not math.isfinite(w) or w < 0 for w in task_weights):
            raise ConfigError(f"weights must be non-negative and finite, got {weights}")
        if not isinstance(symmetric, bool):
            raise ConfigError(f"symmetric must be true or false, got {symmetric!r}")
        self.temperatures = temperatures
        self.weights = task_weights
        self.task_names = None if task_names is None else tuple(task_names)
        self.symmetric = symmetric

    def forward(
        self,
        left: Tensor,
        right: Tensor,
        positives: Tensor,
        left_tasks: Tensor,
        right_tasks: Tensor | None = None,
        extra_left: Tensor | None = None,
        extra_right: Tensor | None = None,
    ) -> LossOutput:
        """The loss over the cosine scores of ``left`` (+ ``extra_left``) against ``right``
        (+ ``extra_right``)."""
        if left.dim() != 2 or right.dim() != 2 or left.shape[1] != right.shape[1]:
            raise ValueError(
                f"left and right must be [n, D] embeddings of one width, got {tuple(left.shape)} and "
                f"{tuple(right.shape)}"
            )
        if extra_left is not None:
            left = torch.cat([left, extra_left])
        if extra_right is not None:
            right = torch.cat([right, extra_right])
        scores = F.normalize(left, dim=-1) @ F.normalize(right, dim=-1).T
        return self.from_scores(scores, positives, left_tasks, right_tasks)

    def from_scores(
        self, scores: Tensor, positives: Tensor, left_tasks: Tensor, right_tasks: Tensor | None = None
    ) -> LossOutput:
        """The loss over a precomputed score matrix whose first ``B_l`` rows and ``B_r`` columns are the
        local items of ``positives`` and whose further rows/columns are gathered candidates."""
        right_tasks = self._check(scores, positives, left_tasks, right_tasks)
        n_left, n_right = positives.shape
        directions = [self._row_losses(scores[:n_left], positives, left_tasks)]
        if self.symmetric:
            directions.append(self._row_losses(scores[:, :n_right].T, positives.T, right_tasks))
        totals: list[Tensor] = []
        per_task: dict[str, list[Tensor]] = defaultdict(list)
        for losses, tasks in directions:
            if losses.numel() == 0:
                continue
            weights = torch.tensor(self.weights, dtype=losses.dtype, device=losses.device)
            totals.append((weights[self._index(tasks)] * losses).mean())
            for task in tasks.unique().tolist():
                per_task[self._name(task)].append(losses[tasks == task].detach().mean())
        if not totals:
            return LossOutput(scores.sum() * 0.0, {})
        parts = {name: torch.stack(values).mean() for name, values in per_task.items()}
        return LossOutput(torch.stack(totals).mean(), parts)

    def _row_losses(self, scores: Tensor, positives: Tensor, tasks: Tensor) -> tuple[Tensor, Tensor]:
        """``ℓ_i`` of the rows that have a positive, and those rows' tasks."""
        counts = positives.sum(dim=1)
        keep = counts > 0
        scores, positives, tasks, counts = scores[keep], positives[keep], tasks[keep], counts[keep]
        temperatures = torch.tensor(self.temperatures, dtype=scores.dtype, device=scores.device)
        log_prob = (scores / temperatures[self._index(tasks)].unsqueeze(1)).log_softmax(dim=1)
        local = log_prob[:, : positives.shape[1]].masked_fill(~positives, 0.0)
        return -local.sum(dim=1) / counts, tasks

    def _index(self, tasks: Tensor) -> Tensor:
        """Positions in the per-task value lists (all 0 when one value serves every task)."""
        return tasks if self.n_tasks is not None else torch.zeros_like(tasks)

    def _name(self, task: int) -> str:
        return self.task_names[task] if self.task_names is not None else str(task)

    def _check(
        self, scores: Tensor, positives: Tensor, left_tasks: Tensor, right_tasks: Tensor | None
    ) -> Tensor:
        """Validate the shapes and task indices; return the right items' tasks."""
        if positives.dtype != torch.bool or positives.dim() != 2:
            raise ValueError(
                f"positives must be a 2-D bool matrix, got {positives.dtype} {tuple(positives.shape)}"
            )
        n_left, n_right = positives.shape
        if scores.dim() != 2 or scores.shape[0] < n_left or scores.shape[1] < n_right:
            raise ValueError(
                f"scores must be a 2-D matrix at least as large as positives {tuple(positives.shape)}, "
                f"got {tuple(scores.shape)}"
            )
        if right_tasks is None:
            if n_left != n_right:
                raise ValueError(
                    "right_tasks is required when the two sides differ in size "
                    f"({n_left} left, {n_right} right)"
                )
            right_tasks = left_tasks
        for name, tasks, size in (("left_tasks", left_tasks, n_left), ("right_tasks", right_tasks, n_right)):
            if tasks.shape != (size,) or tasks.is_floating_point() or tasks.dtype == torch.bool:
                raise ValueError(
                    f"{name} must be {size} integer task indices, got {tasks.dtype} {tuple(tasks.shape)}"
                )
            if tasks.numel() and (
                tasks.min() < 0 or (self.n_tasks is not None and tasks.max() >= self.n_tasks)
            ):
                limit = f"below {self.n_tasks}" if self.n_tasks is not None else "non-negative"
                raise ValueError(
                    f"{name} must be task indices {limit}, "
                    f"got values from {int(tasks.min())} to {int(tasks.max())}"
                )
        return right_tasks


def _floats(name: str, values: float | Sequence[float], size: int) -> tuple[float, ...]:
    """One float per task: a single value repeated, or the sequence itself."""
    try:
        if isinstance(values, int | float):
            return (float(values),) * size
        return tuple(float(value) for value in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number or a list of numbers, got {values!r}") from None
