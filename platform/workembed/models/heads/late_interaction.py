"""Soft late interaction (UWE): query tokens against pooled targets, differentiable.

With the query's L2-normalised token vectors x̂_i (the tokens in its mask) and an L2-normalised pooled
target ŷ_t,

    c_i = x̂_i · ŷ_t,        s(q, t) = Σ_i softmax_i(c_i / τ) · c_i        (softmax over the query's tokens)

the torch counterpart of :func:`workembed.retrieval.scoring.late_interaction_scores`. To score as the
evaluation does, leave [CLS]/[SEP] out of the mask with :func:`content_token_mask`.
"""

from __future__ import annotations

from typing import ClassVar, Self

import torch
from torch import Tensor, nn

from workembed.models.heads.pooling import check_tokens
from workembed.models.heads.registry import HeadConfig, register_head


def content_token_mask(attention_mask: Tensor, special_tokens_mask: Tensor) -> Tensor:
    """The real tokens that are not special ([CLS], [SEP]); a row with no other token keeps its special
    tokens (as :func:`workembed.retrieval.embedding.query_token_vectors` does)."""
    real = attention_mask.bool()
    content = real & ~special_tokens_mask.bool()
    empty = ~content.any(dim=1, keepdim=True)
    return torch.where(empty, real, content)


def token_cosines(hidden: Tensor, targets: Tensor) -> Tensor:
    """``[B, T, N]``: c[b, i, t] = x̂_{b,i} · ŷ_t for token outputs ``[B, T, H]`` and targets ``[N, H]``."""
    if targets.dim() != 2 or targets.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"targets must be [n_targets, {hidden.shape[-1]}] to match the tokens, got {tuple(targets.shape)}"
        )
    tokens = nn.functional.normalize(hidden, dim=-1)
    return torch.einsum("bih,th->bit", tokens, nn.functional.normalize(targets, dim=-1))


def token_attention(cosines: Tensor, mask: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Scores ``[B, N]`` = Σ_i w_i · c_i and weights ``[B, T, N]`` w = softmax_i(c_i / τ) over the tokens in
    ``mask`` (0 elsewhere)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    keep = mask.bool()
    empty = (~keep.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"query rows {empty} have no token in the mask")
    keep = keep.unsqueeze(-1)
    weights = torch.softmax((cosines / temperature).masked_fill(~keep, float("-inf")), dim=1)
    scores = (weights * cosines.masked_fill(~keep, 0)).sum(dim=1)
    return scores, weights


class TemperatureHead(nn.Module):
    """A parameter-free token head whose one setting is the softmax temperature τ."""

    config_fields: ClassVar[tuple[str, ...]] = ("temperature",)
    required_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    @classmethod
    def from_config(cls, config: HeadConfig, hidden_size: int) -> Self:
        return cls(config.temperature)


@register_head("late-interaction")
class SoftLateInteraction(TemperatureHead):
    """Scores ``[B_q, B_t]`` of query token outputs ``[B_q, T, H]`` (``mask [B_q, T]``) against pooled
    targets ``[B_t, H]``: s(q, t) = Σ_i softmax_i(c_i / τ) · c_i with c_i = cos(x_i, y_t)."""

    def forward(self, hidden: Tensor, mask: Tensor, targets: Tensor) -> Tensor:
        keep = check_tokens(hidden, mask)
        scores, _ = token_attention(token_cosines(hidden, targets), keep, self.temperature)
        return scores
