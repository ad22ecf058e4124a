"""Hugging Face encoders loaded from a local directory: pooled and token-level embeddings.

Models are named as :mod:`workembed.models.folder` says (``minilm``, ``models:/...``, ``runs:/...`` or a
directory that ``transformers.AutoModel`` can load). No model hub is contacted.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from workembed.errors import InputError
from workembed.models.folder import (
    MINILM,
    has_head_weights,
    load_head_weights,
    read_model_info,
    resolve_model_path,
)
from workembed.models.heads.pooling import masked_mean


def length_sorted_batches(texts: Sequence[str], batch_size: int) -> Iterator[list[int]]:
    """Indices of ``texts`` in batches of similar length (less padding), shortest first."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    order = sorted(range(len(texts)), key=lambda i: (len(texts[i]), i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def encode_batch(tokenizer, texts: Sequence[str], max_length: int, offsets: bool, tensors: str):
    """Tokenize one batch: padded to its longest text, truncated to ``max_length``; with ``offsets`` also
    character offsets and the special-token mask; ``tensors``: ``"pt"`` or ``"np"``."""
    return tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors=tensors,
        return_offsets_mapping=offsets,
        return_special_tokens_mask=offsets,
    )


def token_embeddings(tokenizer, encoded, row: int, length: int, vectors: np.ndarray) -> TokenEmbeddings:
    """Row ``row`` of a tokenizer output (with offsets and special-token mask) and its ``length`` token
    vectors as :class:`TokenEmbeddings`."""
    return TokenEmbeddings(
        tokens=tokenizer.convert_ids_to_tokens(encoded["input_ids"][row, :length].tolist()),
        offsets=[tuple(pair) for pair in encoded["offset_mapping"][row, :length].tolist()],
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        special=[bool(flag) for flag in encoded["special_tokens_mask"][row, :length].tolist()],
    )


@dataclass(frozen=True)
class TokenEmbeddings:
    """Token-level output for one text: word pieces, their character spans and vectors."""

    tokens: list[str]
    offsets: list[tuple[int, int]]  # (start, end) in the input text; (0, 0) for special tokens
    vectors: np.ndarray  # [n_tokens, dim], float32
    special: list[bool]  # True for [CLS], [SEP] and other special tokens


class Encoder:
    """A transformer encoder with its pooling head (mean, or the trained head a workembed model folder
    holds); batched, deterministic, inference only."""

    def __init__(
        self,
        name: str | os.PathLike = MINILM,
        *,
        max_length: int = 256,
        batch_size: int = 64,
        device: str = "cpu",
        normalize: bool = True,
    ):
        from transformers import AutoModel, AutoTokenizer

        self.name = str(name)
        self.path = resolve_model_path(name)
        self.max_length = max_length
        self.batch_size = batch_size
        self.normalize = normalize
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(self.device).eval()
        self.head, self.input_sides = load_head(self.path, self.dim, self.device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def output_dim(self) -> int:
        """Width of :meth:`embed`'s vectors (the head's, when it has one)."""
        return self.dim if self.head is None else int(self.head.output_dim)

    def side(self, kind: str | None) -> str | None:
        """The projection side that encodes texts of input ``kind`` (a WorkRB input type such as
        ``job_title``; None: unstated), or None for a model without sides."""
        if not isinstance(getattr(self.head, "sides", None), dict):
            return None
        side = self.input_sides.get(kind or "default", self.input_sides.get("default"))
        if side is None:
            raise InputError(
                f"this model projects each kind of text through its own side; it has none for kind "
                f"'{kind}' (input_sides: {self.input_sides}; add a 'default')"
            )
        return side

    def embed(self, texts: Sequence[str], kind: str | None = None) -> np.ndarray:
        """Pooled embeddings ``[len(texts), output_dim]`` (L2-normalised when ``normalize``); ``kind``
        picks the side of a projection head (see :meth:`side`)."""
        side = self.side(kind)
        out = np.zeros((len(texts), self.output_dim), dtype=np.float32)
        for index, hidden, mask, _ in self._batches(texts):
            with torch.inference_mode():
                if self.head is None:
                    pooled = masked_mean(hidden, mask)
                elif side is not None:
                    pooled = self.head(hidden, mask, side)
                else:
                    pooled = self.head(hidden, mask)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out[index] = pooled.float().cpu().numpy()
        return out

    def embed_tokens(self, texts: Sequence[str]) -> list[TokenEmbeddings]:
        """Per-token embeddings (padding removed) with their character offsets."""
        results: list[TokenEmbeddings | None] = [None] * len(texts)
        for index, hidden, mask, encoded in self._batches(texts, offsets=True):
            for row, text_index in enumerate(index):
                length = int(mask[row].sum())
                vectors = hidden[row, :length].float().cpu().numpy()
                results[text_index] = token_embeddings(self.tokenizer, encoded, row, length, vectors)
        return results  # type: ignore[return-value]

    def _batches(self, texts: Sequence[str], offsets: bool = False):
        """Yield (original indices, last hidden state, attention mask, encoding) per length-sorted batch."""
        for index in length_sorted_batches(texts, self.batch_size):
            encoded = encode_batch(self.tokenizer, [texts[i] for i in index], self.max_length, offsets, "pt")
            model_inputs = {
                k: v.to(self.device)
                for k, v in encoded.items()
                if k not in ("offset_mapping", "special_tokens_mask")
            }
            with torch.inference_mode():
                hidden = self.model(**model_inputs).last_hidden_state
            yield index, hidden, model_inputs["attention_mask"], encoded


def load_head(path: Path, hidden_size: int, device: torch.device) -> tuple[torch.nn.Module | None, dict]:
    """The trained pooling head of a workembed model folder (None for mean pooling) and its input sides."""
    from workembed.models.heads import HeadConfig, build_head

    info = read_model_info(path).get("head")
    if not info or not has_head_weights(path):
        return None, {}
    config = HeadConfig.model_validate(info)
    if config.name == "section":
        raise InputError(
            f"{path} is a section document model (projects and profiles as sections): load it with "
            "workembed.models.document_model.DocumentModel or evaluate it with `workembed eval matching`"
        )
    head = build_head(config, hidden_size)
    head.load_state_dict(load_head_weights(path))
    return head.to(device).eval(), dict(config.input_sides)
