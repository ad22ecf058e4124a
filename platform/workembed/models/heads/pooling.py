"""Masked mean pooling of token outputs."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from workembed.models.heads.registry import HeadConfig, register_head


def check_tokens(hidden: Tensor, mask: Tensor) -> Tensor:
    """Validate ``hidden [B, T, H]`` against ``mask [B, T]``; return the mask as bool."""
    if hidden.dim() != 3:
        raise ValueError(f"token outputs must be [batch, tokens, hidden], got shape {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not match token outputs {tuple(hidden.shape)}"
        )
    return mask.bool()


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """``[B, H]``: m̄ = Σ_t m_t·h_t / Σ_t m_t over the tokens with ``mask`` m_t = 1.

    Padded positions are zeroed first, so their values (even NaN) never reach the result; a row without
    tokens gives zeros.
    """
    keep = check_tokens(hidden, mask).unsqueeze(-1)
    total = hidden.masked_fill(~keep, 0).sum(1)
    return total / keep.sum(1).clamp(min=1).to(hidden.dtype)


@register_head("mean")
class MeanPooling(nn.Module):
    """Masked mean of the token outputs, optionally L2-normalised: ``[B, T, H], [B, T] → [B, H]``."""

    config_fields: ClassVar[tuple[str, ...]] = ("normalize",)
    required_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, hidden_size: int, normalize: bool = True):
        super().__init__()
        self.output_dim = hidden_size
        self.normalize = normalize

    @classmethod
    def from_config(cls, config: HeadConfig, hidden_size: int) -> MeanPooling:
        return cls(hidden_size, normalize=config.normalize)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        pooled = masked_mean(hidden, mask)
        return torch.nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
