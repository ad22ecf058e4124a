"""Section-structured document encoder (Malt; Jouanneau et al., "Skill matching at scale: freelancer-project
alignment for efficient multilingual candidate retrieval", 2024).

A document is a list of sections ``(section_type, text)``. Each section is encoded alone by a frozen
backbone; its token outputs h get the learned embedding of its section type; the document's section tokens,
concatenated, pass through a small transformer encoder, and a skip connection adds the backbone tokens back:

    u = TransformerEncoder(h + E[type]) + h

Pooling is section-length weighted: with m̄_s the mean of section s's vectors u and n_s its token count,

    z = Σ_s n_s · m̄_s / Σ_s n_s

(every token counts once, so long sections weigh more). An empty section is encoded as the tokenizer's
special tokens only ([CLS][SEP]), so its type still reaches the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from workembed.errors import ConfigError, InputError
from workembed.models.heads.registry import HeadConfig, register_head

Section = tuple[int, str]
Document = Sequence[Section]


def section_weighted_mean(tokens: Tensor, section_index: Tensor) -> Tensor:
    """``[B, H]``: Σ_s n_s · m̄_s / Σ_s n_s for tokens ``[B, T, H]`` whose section within their document is
    ``section_index [B, T]`` (-1 for padding, which never reaches the result)."""
    if tokens.dim() != 3 or section_index.shape != tokens.shape[:2]:
        raise ValueError(
            f"section_index {tuple(section_index.shape)} does not match tokens {tuple(tokens.shape)}"
        )
    real = section_index >= 0
    n_sections = int(section_index.max()) + 1 if real.any() else 0
    member = (section_index.unsqueeze(-1) == torch.arange(n_sections, device=tokens.device)).to(tokens.dtype)
    counts = member.sum(dim=1)  # [B, S]: n_s
    sums = torch.einsum("bts,bth->bsh", member, tokens.masked_fill(~real.unsqueeze(-1), 0))
    means = sums / counts.clamp(min=1).unsqueeze(-1)
    weights = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    return (weights.unsqueeze(-1) * means).sum(dim=1)


@register_head("section")
class SectionEncoderHead(nn.Module):
    """The trainable head over the concatenated section tokens of each document.

    ``forward(hidden [B, T, H], section_types [B, T], section_index [B, T]) → [B, H]``: ``section_types``
    holds each token's section type id, ``section_index`` its section's position in the document (-1 marks
    padding; any type id there is ignored).
    """

    config_fields: ClassVar[tuple[str, ...]] = (
        "num_section_types",
        "transformer_layers",
        "attention_heads",
        "feedforward_size",
        "dropout",
        "normalize",
    )
    required_fields: ClassVar[tuple[str, ...]] = ("num_section_types",)

    def __init__(
        self,
        hidden_size: int,
        num_section_types: int,
        num_layers: int = 2,
        num_attention_heads: int = 4,
        feedforward_size: int | None = None,
        dropout: float = 0.1,
        normalize: bool = True,
    ):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ConfigError(
                f"attention_heads ({num_attention_heads}) must divide the hidden size ({hidden_size})"
            )
        self.num_section_types = num_section_types
        self.output_dim = hidden_size
        self.normalize = normalize
        self.section_embedding = nn.Embedding(num_section_types, hidden_size)
        layer = nn.TransformerEncoderLayer(
            hidden_size,
            num_attention_heads,
            dim_feedforward=feedforward_size or 4 * hidden_size,
            dropout=dropout,
            batch_first=True,
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)

    @classmethod
    def from_config(cls, config: HeadConfig, hidden_size: int) -> SectionEncoderHead:
        return cls(
            hidden_size,
            num_section_types=config.num_section_types,
            num_layers=config.transformer_layers,
            num_attention_heads=config.attention_heads,
            feedforward_size=config.feedforward_size,
            dropout=config.dropout,
            normalize=config.normalize,
        )

    def forward(self, hidden: Tensor, section_types: Tensor, section_index: Tensor) -> Tensor:
        shape = hidden.shape[:2]
        if hidden.dim() != 3 or section_types.shape != shape or section_index.shape != shape:
            raise ValueError(
                f"section_types {tuple(section_types.shape)} and section_index {tuple(section_index.shape)} "
                f"must both be [batch, tokens] of the token outputs {tuple(hidden.shape)}"
            )
        real = section_index >= 0
        empty = (~real.any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"documents {empty} have no section tokens")
        types = section_types.masked_fill(~real, 0)
        if int(types.min()) < 0 or int(types.max()) >= self.num_section_types:
            raise ValueError(
                f"section type ids must lie in [0, {self.num_section_types}), got {int(types.min())}.."
                f"{int(types.max())}"
            )
        hidden = hidden.masked_fill(~real.unsqueeze(-1), 0)
        mixed = self.transformer(hidden + self.section_embedding(types), src_key_padding_mask=~real)
        pooled = section_weighted_mean(mixed + hidden, section_index)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled


@dataclass(frozen=True)
class SectionBatch:
    """The tokenised sections of a batch of documents, flattened in document order."""

    inputs: dict[str, Tensor]  # tokenizer output: input_ids, attention_mask (, token_type_ids) [S, L]
    section_types: list[int]  # [S]
    document_index: list[int]  # [S]: the document each section belongs to


class SectionDocumentEncoder(nn.Module):
    """A frozen backbone (``transformers.AutoModel``) with its tokenizer and a :class:`SectionEncoderHead`:
    ``forward(documents) → [len(documents), H]`` for documents given as lists of ``(section_type, text)``.

    The backbone never trains: its parameters have ``requires_grad=False`` and it stays in eval mode
    (dropout off) even when this module is put in training mode; only the head learns.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tokenizer: Any,
        head: SectionEncoderHead,
        max_section_length: int = 128,
        backbone_batch_size: int = 64,
    ):
        super().__init__()
        if max_section_length < 2 or backbone_batch_size < 1:
            raise ConfigError("max_section_length must be at least 2 and backbone_batch_size at least 1")
        hidden_size = backbone.config.hidden_size
        if hidden_size != head.output_dim:
            raise ConfigError(
                f"the head expects {head.output_dim}-d tokens, the backbone gives {hidden_size}"
            )
        self.backbone = backbone.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.head = head
        self.max_section_length = max_section_length
        self.backbone_batch_size = backbone_batch_size

    def train(self, mode: bool = True) -> SectionDocumentEncoder:
        super().train(mode)
        self.backbone.eval()
        return self

    def tokenize(self, documents: Sequence[Document]) -> SectionBatch:
        """Tokenise every section alone (truncated to ``max_section_length``); an empty or blank text gives
        the special tokens only ([CLS][SEP])."""
        if isinstance(documents, str):
            raise TypeError("documents must be a list of documents, each a list of (section_type, text)")
        texts, types, owners = [], [], []
        for doc, sections in enumerate(documents):
            if not sections:
                raise InputError(f"document {doc} has no sections")
            for position, (section_type, text) in enumerate(sections):
                if not 0 <= section_type < self.head.num_section_types:
                    raise InputError(
                        f"document {doc}, section {position}: section type {section_type} is outside "
                        f"[0, {self.head.num_section_types})"
                    )
                texts.append(text)
                types.append(int(section_type))
                owners.append(doc)
        inputs = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_section_length, return_tensors="pt"
        )
        return SectionBatch(inputs=dict(inputs), section_types=types, document_index=owners)

    def forward(self, documents: Sequence[Document]) -> Tensor:
        batch = self.tokenize(documents)
        sections = self.section_tokens(batch)
        weight = self.head.section_embedding.weight
        tokens: list[list[Tensor]] = [[] for _ in documents]
        types: list[list[Tensor]] = [[] for _ in documents]
        index: list[list[Tensor]] = [[] for _ in documents]
        for row, (doc, section_type) in enumerate(
            zip(batch.document_index, batch.section_types, strict=True)
        ):
            tokens[doc].append(sections[row])
            length = len(tokens[doc][-1])
            types[doc].append(torch.full((length,), section_type, dtype=torch.long))
            index[doc].append(torch.full((length,), len(index[doc]), dtype=torch.long))
        return self.head(
            pad_sequence([torch.cat(t) for t in tokens], batch_first=True).to(weight.device, weight.dtype),
            pad_sequence([torch.cat(t) for t in types], batch_first=True).to(weight.device),
            pad_sequence([torch.cat(i) for i in index], batch_first=True, padding_value=-1).to(weight.device),
        )

    def section_tokens(self, batch: SectionBatch) -> list[Tensor]:
        """The backbone's token vectors ``[n_tokens, H]`` of each section of ``batch`` (padding removed)."""
        hidden = self._backbone_tokens(batch.inputs)
        real = batch.inputs["attention_mask"].bool().to(hidden.device)
        return [hidden[row][real[row]] for row in range(len(hidden))]

    def _backbone_tokens(self, inputs: dict[str, Tensor]) -> Tensor:
        """``last_hidden_state`` of all sections, computed without gradient in batches."""
        device = next(self.backbone.parameters()).device
        parts = []
        with torch.no_grad():
            for start in range(0, len(inputs["input_ids"]), self.backbone_batch_size):
                chunk = {k: v[start : start + self.backbone_batch_size].to(device) for k, v in inputs.items()}
                parts.append(self.backbone(**chunk).last_hidden_state)
        return torch.cat(parts)
