"""Training losses of the multi-task encoder, one per module, picked by name.

Losses take representations (embeddings, or a precomputed score matrix through ``from_scores``), never
a model, so that a gradient-caching trainer can call them on cached representations. Each returns a
:class:`LossOutput` (the loss and detached parts to log).

- ``bipartite-infonce`` (:class:`BipartiteInfoNCELoss`): UWE many-to-many InfoNCE over several tasks.
- ``adjacency-infonce`` (:class:`AdjacencyInfoNCELoss`): Malt masked InfoNCE over an extended adjacency.
- ``adjacency-triplet`` (:class:`AdjacencyTripletLoss`): Malt dual triplet loss over the same adjacency.
"""

from __future__ import annotations

import inspect
from typing import Any

from pydantic import Field, field_validator, model_validator
from torch import nn

from workembed.config import Config
from workembed.errors import ConfigError
from workembed.losses.adjacency import extend_adjacency
from workembed.losses.adjacency_infonce import AdjacencyInfoNCELoss
from workembed.losses.adjacency_triplet import AdjacencyTripletLoss
from workembed.losses.bipartite_infonce import BipartiteInfoNCELoss
from workembed.losses.output import LossOutput

LOSSES: dict[str, type[nn.Module]] = {
    "bipartite-infonce": BipartiteInfoNCELoss,
    "adjacency-infonce": AdjacencyInfoNCELoss,
    "adjacency-triplet": AdjacencyTripletLoss,
}


def build_loss(name: str, **params: Any) -> nn.Module:
    """The loss registered as ``name``, constructed with ``params``."""
    if name not in LOSSES:
        raise ConfigError(f"unknown loss '{name}' (known: {', '.join(LOSSES)})")
    cls = LOSSES[name]
    accepted = [key for key in inspect.signature(cls.__init__).parameters if key != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(
            f"loss '{name}' has no parameter {', '.join(unknown)} (it takes {', '.join(accepted)})"
        )
    return cls(**params)


class LossConfig(Config):
    """A training loss: its registered name and constructor arguments."""

    name: str = Field(description=f"Registered loss name: {', '.join(LOSSES)}.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Constructor arguments of the loss (e.g. temperature, weights, task_names, symmetric "
        "for bipartite-infonce; temperature for adjacency-infonce; margin for adjacency-triplet).",
    )

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in LOSSES:
            raise ValueError(f"unknown loss '{value}' (known: {', '.join(LOSSES)})")
        return value

    @model_validator(mode="after")
    def _buildable(self) -> LossConfig:
        self.build()
        return self

    def build(self) -> nn.Module:
        """The configured loss module."""
        return build_loss(self.name, **self.params)


__all__ = [
    "LOSSES",
    "AdjacencyInfoNCELoss",
    "AdjacencyTripletLoss",
    "BipartiteInfoNCELoss",
    "LossConfig",
    "LossOutput",
    "build_loss",
    "extend_adjacency",
]
