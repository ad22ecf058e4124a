"""InfoNCE over the extended project–profile adjacency of a batch (Malt retriever)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workembed.errors import ConfigError
from workembed.losses.adjacency import check_adjacency, joint_batch, side_average
from workembed.losses.output import LossOutput


class AdjacencyInfoNCELoss(nn.Module):
    def __init__(self, temperature: float = 0.05) -> None:
        """
        InfoNCE over a batch of projects and freelancer profiles whose relations are an extended
        adjacency ``Â`` in {-1, 0, 1} (see :func:`workembed.losses.adjacency.extend_adjacency`: labelled
        project–profile pairs, transitive profile–profile relations through a shared project, weak
        negatives between differing categories). Every item of the batch is an anchor against every
        other; the softmax runs over the anchor's known relations only, so unknown pairs (``Â = 0``) are
        neither positives nor negatives.

        With cosine scores ``s`` over the joint batch (projects then profiles), ``P_a = {b : Â_ab = 1}``
        and ``K_a = {c : Â_ac ≠ 0}``, and ``I`` the anchors with a positive::

            ℓ_a = −1/|P_a| · Σ_{b ∈ P_a} log( exp(s_ab / τ) / Σ_{c ∈ K_a} exp(s_ac / τ) )
            L   = ½ · (mean_{a ∈ I, a project} ℓ_a + mean_{a ∈ I, a profile} ℓ_a)

        (the mean of the one side present when the other has no anchor; zero without any positive).

        Args:
            temperature: τ of the softmax.

        References:
            Jouanneau, Palyart, Jouffroy (2024), "Skill matching at scale: freelancer-project alignment
            for efficient multilingual candidate retrieval", RecSys in HR 2024, arXiv:2409.12097.

        Inputs:
            +------------+--------------------------+------------------------------------------------+
            | argument   | shape                    | meaning                                        |
            +============+==========================+================================================+
            | projects   | [n_p, D]                 | project embeddings (project tower)             |
            | profiles   | [n_f, D]                 | profile embeddings (profile tower)             |
            | adjacency  | [n_p + n_f, n_p + n_f]   | extended adjacency, projects first             |
            +------------+--------------------------+------------------------------------------------+

        ``from_scores(scores, adjacency, n_projects)`` takes a precomputed ``[n, n]`` score matrix instead.
        Returns a :class:`LossOutput` with parts ``project`` and ``profile`` (the side means).

        Example:
            ::

                adjacency = extend_adjacency(labels, project_categories, profile_categories)
                loss_fn = AdjacencyInfoNCELoss(temperature=0.05)
                out = loss_fn(project_embeddings, profile_embeddings, adjacency)
                out.loss.backward()
        """
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise ConfigError(f"temperature must be a number, got {temperature!r}")
        if not math.isfinite(temperature) or temperature <= 0:
            raise ConfigError(f"temperature must be positive and finite, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, projects: Tensor, profiles: Tensor, adjacency: Tensor) -> LossOutput:
        """The loss over the cosine scores of the joint batch ``[projects; profiles]``."""
        documents = F.normalize(joint_batch(projects, profiles), dim=-1)
        return self.from_scores(documents @ documents.T, adjacency, n_projects=projects.shape[0])

    def from_scores(self, scores: Tensor, adjacency: Tensor, n_projects: int) -> LossOutput:
        """The loss over a precomputed ``[n, n]`` score matrix of the joint batch (projects first)."""
        check_adjacency(scores, adjacency, n_projects)
        positives = adjacency == 1
        anchors = positives.any(dim=1).nonzero().squeeze(1)
        positives = positives[anchors]
        logits = (scores[anchors] / self.temperature).masked_fill(adjacency[anchors] == 0, -torch.inf)
        log_prob = logits.log_softmax(dim=1).masked_fill(~positives, 0.0)
        losses = -log_prob.sum(dim=1) / positives.sum(dim=1)
        return side_average(losses, anchors, n_projects, scores)
