"""The extended adjacency of a project–profile batch (Malt retriever), shared by its two losses.

A batch holds ``n_p`` projects followed by ``n_f`` profiles. Its extended adjacency ``Â`` is an
``[n_p + n_f, n_p + n_f]`` matrix in {-1, 0, 1} (1 related, -1 negative, 0 unknown), symmetric, with a
zero diagonal, filled in this order (an earlier rule is never overridden by a later one):

1. project–profile labels ``A`` (and ``Aᵀ`` for profile–project);
2. transitive profile–profile relations: ``Â[f, g] = 1`` when some project has ``A[p, f] = A[p, g] = 1``;
3. weak negatives: any remaining unknown pair whose two categories are known and differ is -1.

Pairs left at 0 are unknown: the adjacency losses exclude them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workembed.losses.output import LossOutput


def extend_adjacency(
    labels: Tensor,
    project_categories: Tensor | None = None,
    profile_categories: Tensor | None = None,
    *,
    transitive: bool = True,
) -> Tensor:
    """The int8 extended adjacency ``Â`` of a batch (see the module docstring).

    Args:
        labels: ``[n_p, n_f]`` project–profile labels in {-1, 0, 1}.
        project_categories: ``[n_p]`` integer categories (negative: unknown); with
            ``profile_categories``, turns unknown pairs of differing categories into weak negatives.
        profile_categories: ``[n_f]`` integer categories (negative: unknown).
        transitive: Relate two profiles positive for the same project.

    Example: two projects of categories 0 and 1, three profiles of categories 0, 0, 1, with profiles 0 and
    1 positive for project 0 and profile 2 negative for project 1::

        extend_adjacency(torch.tensor([[1, 1, 0], [0, 0, -1]]), torch.tensor([0, 1]), torch.tensor([0, 0, 1]))
        #      p0  p1  f0  f1  f2
        # p0 [  0, -1,  1,  1, -1]
        # p1 [ -1,  0, -1, -1, -1]
        # f0 [  1, -1,  0,  1, -1]
        # f1 [  1, -1,  1,  0, -1]
        # f2 [ -1, -1, -1, -1,  0]
    """
    if labels.dim() != 2:
        raise ValueError(f"labels must be a [projects, profiles] matrix, got shape {tuple(labels.shape)}")
    _check_values("labels", labels)
    n_projects, n_profiles = labels.shape
    size = n_projects + n_profiles
    adjacency = torch.zeros(size, size, dtype=torch.int8, device=labels.device)
    adjacency[:n_projects, n_projects:] = labels
    adjacency[n_projects:, :n_projects] = labels.T
    if transitive:
        positive = (labels == 1).to(torch.float32)
        shared = (positive.T @ positive) > 0
        shared.fill_diagonal_(False)
        adjacency[n_projects:, n_projects:] = shared.to(torch.int8)
    if (project_categories is None) != (profile_categories is None):
        raise ValueError("weak negatives need both project_categories and profile_categories, or neither")
    if project_categories is not None and profile_categories is not None:
        for name, categories, count in (
            ("project_categories", project_categories, n_projects),
            ("profile_categories", profile_categories, n_profiles),
        ):
            if categories.shape != (count,) or categories.is_floating_point():
                raise ValueError(
                    f"{name} must be {count} integer categories, "
                    f"got {categories.dtype} {tuple(categories.shape)}"
                )
        categories = torch.cat([project_categories, profile_categories]).to(labels.device)
        known = categories >= 0
        differ = (categories[:, None] != categories[None, :]) & known[:, None] & known[None, :]
        adjacency[differ & (adjacency == 0)] = -1
    return adjacency


def check_adjacency(scores: Tensor, adjacency: Tensor, n_projects: int) -> None:
    """Raise ``ValueError`` unless ``adjacency`` is a square {-1, 0, 1} matrix with a zero diagonal, of the
    shape of ``scores``, over ``n_projects`` projects followed by profiles."""
    if adjacency.dim() != 2 or adjacency.shape[0] != adjacency.shape[1]:
        raise ValueError(
            f"adjacency must be the square extended adjacency over projects and profiles (see "
            f"extend_adjacency), got shape {tuple(adjacency.shape)}"
        )
    if scores.shape != adjacency.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and adjacency {tuple(adjacency.shape)} differ in shape"
        )
    if not 0 <= n_projects <= adjacency.shape[0]:
        raise ValueError(f"n_projects must lie in [0, {adjacency.shape[0]}], got {n_projects}")
    _check_values("adjacency", adjacency)
    if adjacency.diagonal().any():
        raise ValueError("adjacency must have a zero diagonal: an item is no candidate of itself")


def joint_batch(projects: Tensor, profiles: Tensor) -> Tensor:
    """``[projects; profiles]``, checked to be embeddings of one width."""
    if projects.dim() != 2 or profiles.dim() != 2 or projects.shape[1] != profiles.shape[1]:
        raise ValueError(
            f"projects and profiles must be [n, D] embeddings of one width, got {tuple(projects.shape)} and "
            f"{tuple(profiles.shape)}"
        )
    return torch.cat([projects, profiles])


def side_average(values: Tensor, anchors: Tensor, n_projects: int, scores: Tensor) -> LossOutput:
    """``½ (mean over project anchors + mean over profile anchors)`` of ``values`` (one per anchor index
    in ``anchors``), the mean of the one side present when the other has none, and zero (still a node of
    ``scores``' graph) when neither has any; parts ``project`` / ``profile`` hold the side means."""
    means: list[Tensor] = []
    parts: dict[str, Tensor] = {}
    for side, on_side in (("project", anchors < n_projects), ("profile", anchors >= n_projects)):
        if on_side.any():
            mean = values[on_side].mean()
            means.append(mean)
            parts[side] = mean.detach()
    if not means:
        return LossOutput(scores.sum() * 0.0, parts)
    return LossOutput(torch.stack(means).mean(), parts)


def _check_values(name: str, matrix: Tensor) -> None:
    if ((matrix != 0) & (matrix != 1) & (matrix != -1)).any():
        raise ValueError(f"{name} must hold only -1 (negative), 0 (unknown) and 1 (positive)")
