"""The trainable work encoder: a transformer backbone with mean pooling, saved as a self-describing folder.

A saved model folder holds the backbone and tokenizer in the Hugging Face layout (so that
:class:`workembed.models.Encoder` and any transformers tool load it) and ``workembed.json``: what the
folder is (pooling, normalisation, sequence length), how it was trained (the resolved config) and from which
data (fingerprint), so an evaluation or a serving replica knows exactly what it runs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from workembed.models.encoder import resolve_model_path

MODEL_INFO_FILE = "workembed.json"
FORMAT_VERSION = 1


class WorkEncoder(nn.Module):
    """Backbone token outputs → masked mean → (optionally) L2-normalised embedding."""

    def __init__(
        self, backbone: str | os.PathLike = "minilm", *, max_length: int = 64, normalize: bool = True
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

    def tokenize_chunks(self, texts: Sequence[str], chunk_size: int) -> list[dict[str, Tensor]]:
        """:meth:`tokenize` per chunk of ``chunk_size`` texts, each padded to its own longest text (no
        compute spent on another chunk's padding)."""
        return [
            self.tokenize(texts[start : start + chunk_size]) for start in range(0, len(texts), chunk_size)
        ]

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, content_mask: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pooled embeddings ``[n, d]``; with ``content_mask``, token vectors ``[n, T, d]`` and that mask (as
        float) for late interaction."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if content_mask is not None:
            return hidden, content_mask.to(hidden.dtype)
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def save(self, directory: str | os.PathLike, info: Mapping[str, Any] | None = None) -> Path:
        """Write the backbone, tokenizer and ``workembed.json`` (``info`` merged in) to ``directory``."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        record = {
            "format_version": FORMAT_VERSION,
            "pooling": "mean",
            "normalize": self.normalize,
            "max_length": self.max_length,
            "base_model": self.source,
            **(info or {}),
        }
        (out / MODEL_INFO_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
        return out


def read_model_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``workembed.json`` of a saved model folder (empty for a plain transformers folder)."""
    path = Path(directory) / MODEL_INFO_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
