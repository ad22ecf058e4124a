"""Asymmetric projections per side (JobBERT-v2): one linear map per side after mean pooling.

For side ``s`` (e.g. ``title``, ``skill``): e = normalize(W_s · m̄ + b_s) with m̄ the masked mean of the token
outputs. The sides share the backbone and nothing else, so a loss on one side leaves the other side's
projection untouched.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import Tensor, nn

from workembed.errors import InputError
from workembed.models.heads.pooling import masked_mean
from workembed.models.heads.registry import HeadConfig, register_head


@register_head("projection")
class AsymmetricProjection(nn.Module):
    """Mean pooling, then the linear projection of the side named in the call: ``[B, T, H] → [B, D_side]``."""

    config_fields: ClassVar[tuple[str, ...]] = ("sides", "input_sides", "normalize")
    required_fields: ClassVar[tuple[str, ...]] = ("sides",)

    def __init__(self, hidden_size: int, sides: Mapping[str, int], normalize: bool = True):
        super().__init__()
        if not sides:
            raise ValueError("an asymmetric projection needs at least one side")
        self.projections = nn.ModuleDict({side: nn.Linear(hidden_size, dim) for side, dim in sides.items()})
        self.normalize = normalize

    @classmethod
    def from_config(cls, config: HeadConfig, hidden_size: int) -> AsymmetricProjection:
        return cls(hidden_size, config.sides, normalize=config.normalize)

    @property
    def sides(self) -> dict[str, int]:
        """Output dimension of each side."""
        return {side: layer.out_features for side, layer in self.projections.items()}

    @property
    def output_dim(self) -> int:
        """The one output dimension of all sides (what a batch of rows of mixed sides needs)."""
        return self.shared_width()

    def shared_width(self) -> int:
        """The output dimension every side has; a clear error when the sides differ."""
        dims = set(self.sides.values())
        if len(dims) != 1:
            raise ValueError(f"rows of mixed sides need one output dimension for all sides, got {self.sides}")
        return dims.pop()

    def side_index(self, side: str) -> int:
        """Position of ``side`` in :attr:`sides` (the ids :meth:`project_rows` takes)."""
        if side not in self.projections:
            raise InputError(f"unknown side '{side}' (sides: {', '.join(self.projections)})")
        return list(self.projections).index(side)

    def project(self, pooled: Tensor, side: str) -> Tensor:
        """``[B, H] → [B, D_side]``: the side's linear map of already pooled vectors."""
        self.side_index(side)  # a clear error for an unknown side
        out = self.projections[side](pooled)
        return nn.functional.normalize(out, dim=-1) if self.normalize else out

    def project_rows(self, pooled: Tensor, side_ids: Tensor) -> Tensor:
        """``[B, H], [B] → [B, D]``: row ``i`` through the side with id ``side_ids[i]`` (sides of one output
        dimension). Every side's map runs on every row, so each side's parameters take part in the graph
        (a zero gradient, not none, for a side absent from the batch)."""
        self.shared_width()
        stacked = torch.stack([layer(pooled) for layer in self.projections.values()])  # [S, B, D]
        rows = torch.arange(pooled.shape[0], device=pooled.device)
        out = stacked[side_ids.to(pooled.device), rows]
        return nn.functional.normalize(out, dim=-1) if self.normalize else out

    def forward(self, hidden: Tensor, mask: Tensor, side: str | Tensor) -> Tensor:
        """Mean pooling then the projection of ``side``: one side name for all rows, or side ids per row."""
        pooled = masked_mean(hidden, mask)
        if isinstance(side, Tensor):
            return self.project_rows(pooled, side)
        return self.project(pooled, side)
