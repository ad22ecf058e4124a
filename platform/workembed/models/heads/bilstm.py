"""BiLSTM with additive attention pooling over the backbone's token outputs (the skill encoder of
arXiv 2601.09119).

A bidirectional LSTM reads the real tokens of each row (packed, so padding never enters either direction)
giving states h_t = [→h_t; ←h_t]; additive attention pools them:

    e_t = vᵀ tanh(W h_t + b),      α = softmax(e) over the real tokens,      z = Σ_t α_t h_t
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from workembed.models.heads.pooling import check_tokens
from workembed.models.heads.registry import HeadConfig, register_head


@register_head("bilstm-attention")
class BiLSTMAttentionPooling(nn.Module):
    """``[B, T, H], [B, T] → [B, 2·lstm_hidden_size]``; the mask must be right-padded (1…1 0…0)."""

    config_fields: ClassVar[tuple[str, ...]] = ("lstm_hidden_size", "lstm_layers", "dropout", "normalize")
    required_fields: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        hidden_size: int,
        lstm_hidden_size: int | None = None,
        num_layers: int = 1,
        dropout: float = 0.0,
        normalize: bool = True,
    ):
        super().__init__()
        width = lstm_hidden_size or max(hidden_size // 2, 1)
        self.lstm = nn.LSTM(
            hidden_size,
            width,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.output_dim = 2 * width
        self.attention = nn.Sequential(
            nn.Linear(self.output_dim, self.output_dim), nn.Tanh(), nn.Linear(self.output_dim, 1, bias=False)
        )
        self.normalize = normalize

    @classmethod
    def from_config(cls, config: HeadConfig, hidden_size: int) -> BiLSTMAttentionPooling:
        return cls(
            hidden_size,
            lstm_hidden_size=config.lstm_hidden_size,
            num_layers=config.lstm_layers,
            dropout=config.dropout,
            normalize=config.normalize,
        )

    def pool(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled vectors ``[B, 2·lstm_hidden_size]`` (not normalised) and the attention weights
        ``[B, T]`` (0 on padding)."""
        keep = check_tokens(hidden, mask)
        lengths = keep.sum(dim=1)
        positions = torch.arange(keep.shape[1], device=keep.device)
        if not torch.equal(keep, positions < lengths.unsqueeze(1)):
            raise ValueError("the mask must be right-padded: each row's tokens first, then padding")
        if int(lengths.min()) == 0:
            raise ValueError(f"rows {(lengths == 0).nonzero().flatten().tolist()} have no token in the mask")
        packed = pack_padded_sequence(hidden, lengths.cpu(), batch_first=True, enforce_sorted=False)
        states, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=keep.shape[1])
        logits = self.attention(states).squeeze(-1).masked_fill(~keep, float("-inf"))
        weights = torch.softmax(logits, dim=1)
        return (weights.unsqueeze(-1) * states).sum(dim=1), weights

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        pooled, _ = self.pool(hidden, mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
