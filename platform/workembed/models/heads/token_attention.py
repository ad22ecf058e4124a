"""ConTeXT-match token attention (Decorte et al., "Efficient text encoders for labor market analysis", 2025).

The match score of a sentence and a skill is the soft late interaction score
s(x, y) = Σ_i softmax_i(c_i / τ) · c_i with c_i = cos(x_i, y), the score that
:func:`workembed.retrieval.skill_extraction.token_attention_scores`
thresholds. Besides the scores, the head returns
what serving and the redundancy filter need: the attention weights of each token per skill (which tokens
matched) and each token's best skill ``argmax_j c_{i,j}`` (ties: the lower skill index).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from workembed.models.heads.late_interaction import TemperatureHead, token_attention, token_cosines
from workembed.models.heads.pooling import check_tokens
from workembed.models.heads.registry import register_head


@dataclass(frozen=True)
class TokenAttentionOutput:
    """Match scores of ``B`` sentences (``T`` token positions) against ``N`` skills."""

    scores: Tensor  # [B, N]: Σ_i w_i · c_i
    weights: Tensor  # [B, T, N]: softmax over each sentence's tokens, 0 outside the mask
    cosines: Tensor  # [B, T, N]: c_i, the token scores of the redundancy filter
    best_skill: Tensor  # [B, T], int64: argmax_j c_{i,j}; -1 outside the mask


@register_head("token-attention")
class TokenAttentionMatch(TemperatureHead):
    """Sentence token outputs ``[B, T, H]`` (``mask [B, T]``) against skill vectors ``[N, H]``."""

    def forward(self, hidden: Tensor, mask: Tensor, skills: Tensor) -> TokenAttentionOutput:
        keep = check_tokens(hidden, mask)
        cosines = token_cosines(hidden, skills)
        scores, weights = token_attention(cosines, keep, self.temperature)
        best = cosines.argmax(dim=-1).masked_fill(~keep, -1)
        return TokenAttentionOutput(scores=scores, weights=weights, cosines=cosines, best_skill=best)
