"""The trainable work encoder: a transformer backbone with a pooling head, saved as a self-describing folder.

A saved model folder holds the backbone and tokenizer in the Hugging Face layout (so that
:class:`workembed.models.Encoder` and any transformers tool load the backbone), the weights of a head with
parameters (``head.safetensors``: the per-side projections of ``projection``, the BiLSTM of
``bilstm-attention``) and ``workembed.json``: what the folder is (head, normalisation, sequence length), how
it was trained (the resolved config) and from which data (fingerprint), so an evaluation or a serving
replica knows exactly what it runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from workembed.models.folder import FORMAT_VERSION, resolve_model_path, save_head_weights, write_model_info
from workembed.models.heads import HeadConfig, build_head, masked_mean

POOLED_HEADS = ("mean", "projection", "bilstm-attention")
"""Heads that turn token outputs into one embedding per text (``late-interaction`` scores from the
backbone's tokens and pools targets by their mean)."""


class WorkEncoder(nn.Module):
    """Backbone token outputs → pooling head (mean by default) → (optionally) L2-normalised embedding."""

    def __init__(
        self,
        backbone: str | os.PathLike = "minilm",
        *,
        max_length: int = 64,
        normalize: bool = True,
        head: HeadConfig | None = None,
    ):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(backbone)
        self.source = str(backbone)
        self.max_length = max_length
        self.normalize = normalize
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        try:  # an unused pooler gets no gradient, which distributed training reports as an error
            self.backbone = AutoModel.from_pretrained(path, add_pooling_layer=False)
        except TypeError:
            self.backbone = AutoModel.from_pretrained(path)
        self.head_config = head or HeadConfig(name="mean", normalize=normalize)
        name = self.head_config.name
        self.head = (
            build_head(self.head_config, self.dim) if name in POOLED_HEADS and name != "mean" else None
        )

    @property
    def sides(self) -> list[str]:
        """The projection head's sides, in the order of their ids (empty for other heads)."""
        return list(self.head_config.sides) if self.head_config.name == "projection" else []

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def tokenize(self, texts: Sequence[str], tokens: bool = False) -> dict[str, Tensor]:
        """Input ids and attention mask of ``texts``, padded to the longest of them; with ``tokens``, padded
        to ``max_length`` (one shape on every worker) and with ``content_mask``: the tokens that are not
        [CLS]/[SEP] (a text with no other token keeps them)."""
        from workembed.models.heads import content_token_mask

        encoded = self.tokenizer(
            list(texts),
            padding="max_length" if tokens else True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_special_tokens_mask=tokens,
        )
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
        if tokens:
            inputs["content_mask"] = content_token_mask(
                encoded["attention_mask"], encoded["special_tokens_mask"]
            )
        return inputs

    def tokenize_sorted_chunks(
        self, texts: Sequence[str], chunk_size: int, sides: Sequence[int] | None = None
    ) -> tuple[list[dict[str, Tensor]], Tensor]:
        """``texts`` ordered by token count, in chunks of ``chunk_size`` each padded to its own longest text
        (similar lengths share a chunk: little compute is spent on padding), with each row's side id
        (``sides``, for a projection head) as ``side_ids``; and ``restore``: the representations of the
        chunks, concatenated, indexed by ``restore`` are in the order of ``texts``."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.tokenizer.pad_token_id or 0
        chunks = []
        for start in range(0, len(order), chunk_size):
            rows = order[start : start + chunk_size]
            input_ids = torch.full((len(rows), max(len(ids[i]) for i in rows)), pad, dtype=torch.long)
            attention_mask = torch.zeros_like(input_ids)
            for row, index in enumerate(rows):
                input_ids[row, : len(ids[index])] = torch.as_tensor(ids[index])
                attention_mask[row, : len(ids[index])] = 1
            chunk = {"input_ids": input_ids, "attention_mask": attention_mask}
            if sides is not None:
                chunk["side_ids"] = torch.as_tensor([sides[i] for i in rows], dtype=torch.long)
            chunks.append(chunk)
        restore = torch.empty(len(order), dtype=torch.long)
        restore[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
        return chunks, restore

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        content_mask: Tensor | None = None,
        side_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pooled embeddings ``[n, d]`` (a projection head maps row ``i`` through side ``side_ids[i]``);
        with ``content_mask``, token vectors ``[n, T, d]`` and that mask (as float) for late interaction."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if content_mask is not None:
            return hidden, content_mask.to(hidden.dtype)
        if self.head is None:
            pooled = masked_mean(hidden, attention_mask)
            return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled
        if self.sides:
            if side_ids is None:
                raise ValueError(f"a projection head needs side_ids per row (sides: {', '.join(self.sides)})")
            return self.head(hidden, attention_mask, side_ids)
        return self.head(hidden, attention_mask)

    def save(self, directory: str | os.PathLike, info: Mapping[str, Any] | None = None) -> Path:
        """Write the backbone, tokenizer and ``workembed.json`` (``info`` merged in) to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        if self.head is not None:
            save_head_weights(out, self.head)
        record = {
            "format_version": FORMAT_VERSION,
            "pooling": self.head_config.name if self.head is not None else "mean",
            "head": self.head_config.model_dump(mode="json"),
            "normalize": self.normalize,
            "max_length": self.max_length,
            "base_model": self.source,
            **(info or {}),
        }
        write_model_info(out, record)
        return out
