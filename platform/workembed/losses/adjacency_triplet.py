"""Dual triplet loss over the extended project–profile adjacency of a batch (Malt retriever)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from workembed.errors import ConfigError
from workembed.losses.adjacency import check_adjacency, joint_batch, side_average
from workembed.losses.output import LossOutput


class AdjacencyTripletLoss(nn.Module):
    def __init__(self, margin: float = 0.2) -> None:
        """
        Margin triplet loss over every valid triplet of a batch of projects and freelancer profiles, the
        alternative to :class:`AdjacencyInfoNCELoss` on the same extended adjacency ``Â`` (see
        :func:`workembed.losses.adjacency.extend_adjacency`). It is dual: project anchors (positives among
        profiles) and profile anchors (positives among projects and, transitively, profiles) each give
        one term, and the two are averaged.

        With cosine scores ``s`` over the joint batch (projects then profiles) — the cosine distance
        ``1 − s`` gives the same hinge — and ``T`` the triplets ``(a, p, n)`` with ``Â_ap = 1, Â_an = -1``::

            ℓ_apn = max(0, m − s_ap + s_an)
            L     = ½ · (mean_{(a,p,n) ∈ T, a project} ℓ_apn + mean_{(a,p,n) ∈ T, a profile} ℓ_apn)

        (the mean of the one side present when the other has no triplet; zero without any triplet).
        Unknown pairs (``Â = 0``) are in no triplet. The loss is zero once every positive scores at
        least ``m`` above every negative of its anchor.

        Args:
            margin: m, in cosine units.

        References:
            Jouanneau, Palyart, Jouffroy (2024), "Skill matching at scale: freelancer-project alignment
            for efficient multilingual candidate retrieval", RecSys in HR 2024, arXiv:2409.12097.
            Schroff, Kalenichenko, Philbin (2015), "FaceNet", arXiv:1503.03832.

        Inputs and output: as :class:`~workembed.losses.adjacency_infonce.AdjacencyInfoNCELoss` (``projects``
        ``[n_p, D]``, ``profiles`` ``[n_f, D]``, ``adjacency`` ``[n_p + n_f, n_p + n_f]`` with projects
        first; ``from_scores(scores, adjacency, n_projects)``; parts ``project`` and ``profile``).

        Example:
            ::

                adjacency = extend_adjacency(labels, project_categories, profile_categories)
                out = AdjacencyTripletLoss(margin=0.2)(project_embeddings, profile_embeddings, adjacency)
                out.loss.backward()
        """
        super().__init__()
        if isinstance(margin, bool) or not isinstance(margin, int | float):
            raise ConfigError(f"margin must be a number, got {margin!r}")
        if not math.isfinite(margin) or margin < 0:
            raise ConfigError(f"margin must be non-negative and finite, got {margin}")
        self.margin = float(margin)

    def forward(self, projects: Tensor, profiles: Tensor, adjacency: Tensor) -> LossOutput:
        """The loss over the cosine scores of the joint batch ``[projects; profiles]``."""
        documents = F.normalize(joint_batch(projects, profiles), dim=-1)
        return self.from_scores(documents @ documents.T, adjacency, n_projects=projects.shape[0])

    def from_scores(self, scores: Tensor, adjacency: Tensor, n_projects: int) -> LossOutput:
        """The loss over a precomputed ``[n, n]`` score matrix of the joint batch (projects first)."""
        check_adjacency(scores, adjacency, n_projects)
        anchor, positive = (adjacency == 1).nonzero(as_tuple=True)  # one row per (anchor, positive)
        negatives = adjacency[anchor] == -1  # [pairs, n]
        hinge = (self.margin - scores[anchor, positive].unsqueeze(1) + scores[anchor]).clamp(min=0.0)
        triplet_anchors = anchor.unsqueeze(1).expand_as(negatives)[negatives]
        return side_average(hinge[negatives], triplet_anchors, n_projects, scores)
