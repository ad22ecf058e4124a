"""Trainable heads over a transformer backbone's token outputs, chosen by name (:class:`HeadConfig`).

- ``mean`` :class:`MeanPooling`: ``(hidden, mask) → [B, H]``
- ``late-interaction`` :class:`SoftLateInteraction`: ``(hidden, mask, targets) → [B_q, B_t]``
- ``token-attention`` :class:`TokenAttentionMatch`: ``(hidden, mask, skills) → TokenAttentionOutput``
- ``projection`` :class:`AsymmetricProjection`: ``(hidden, mask, side) → [B, D_side]``
- ``section`` :class:`SectionEncoderHead`: ``(hidden, section_types, section_index) → [B, H]``, wrapped with a
  frozen backbone by :class:`SectionDocumentEncoder`: ``(documents) → [B, H]``
- ``bilstm-attention`` :class:`BiLSTMAttentionPooling`: ``(hidden, mask) → [B, 2·lstm_hidden_size]``

``hidden`` is the backbone's ``last_hidden_state [B, T, H]`` and ``mask`` its ``attention_mask [B, T]``.
"""

from workembed.models.heads.bilstm import BiLSTMAttentionPooling
from workembed.models.heads.late_interaction import (
    SoftLateInteraction,
    content_token_mask,
    token_attention,
    token_cosines,
)
from workembed.models.heads.pooling import MeanPooling, masked_mean
from workembed.models.heads.projection import AsymmetricProjection
from workembed.models.heads.registry import HEADS, HeadConfig, build_head, register_head
from workembed.models.heads.sections import (
    Document,
    SectionBatch,
    SectionDocumentEncoder,
    SectionEncoderHead,
    section_weighted_mean,
)
from workembed.models.heads.token_attention import TokenAttentionMatch, TokenAttentionOutput

__all__ = [
    "HEADS",
    "AsymmetricProjection",
    "BiLSTMAttentionPooling",
    "Document",
    "HeadConfig",
    "MeanPooling",
    "SectionBatch",
    "SectionDocumentEncoder",
    "SectionEncoderHead",
    "SoftLateInteraction",
    "TokenAttentionMatch",
    "TokenAttentionOutput",
    "build_head",
    "content_token_mask",
    "masked_mean",
    "register_head",
    "section_weighted_mean",
    "token_attention",
    "token_cosines",
]
