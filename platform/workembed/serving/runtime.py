"""One served model version: its encoder, its calibrated extraction settings and its target-space
embeddings, with the operations of the HTTP API (embed, rank, normalise titles, extract).

A model URI is pinned when the model loads: ``models:/NAME@ALIAS`` becomes the ``models:/NAME/VERSION``
holding the alias now, so a :class:`ServedModel` always serves exactly one version (a moved alias needs a
new one). Target spaces are embedded on first use (or by :meth:`ServedModel.warm`) with
:func:`~workembed.retrieval.embedding.target_embeddings`, cached on disk under ``cache_dir`` per (model, space
contents) and held in memory as float32 L2-normalised matrices. Ranking is cosine on pooled embeddings in
blocked matrix products (:func:`~workembed.retrieval.scoring.dense_top_k`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from workembed.errors import InputError, NotFoundError, RegistryError
from workembed.retrieval.embedding import target_embeddings
from workembed.retrieval.scoring import dense_top_k, l2_normalize
from workembed.serving.config import ServeConfig
from workembed.serving.spaces import SpaceCatalog, UnknownSpaceError
from workembed.serving.span_extraction import extract_with_spans, locate_sentences, segment_ad

if TYPE_CHECKING:
    from workembed.models import Encoder

__all__ = ["NoThresholdError", "ServedModel", "UnknownSpaceError", "load_encoder", "pin_model"]

SKILLS = "esco-skills"
OCCUPATIONS = "esco-occupations"


class NoThresholdError(RegistryError, RuntimeError):
    """The model version has no calibrated extraction threshold (no ``extraction.json``; HTTP 409)."""


def pin_model(uri: str, tracking_uri: str | None) -> tuple[str, Path]:
    """The pinned version of ``uri`` and its local model folder.

    ``models:/NAME@ALIAS`` → ``models:/NAME/VERSION`` (the alias holder now); other MLflow URIs stay as they
    are; ``minilm`` stays ``minilm``; a folder becomes its absolute path.
    """
    from workembed.models import resolve_model_path
    from workembed.models.folder import MODEL_ALIASES
    from workembed.models.mlflow_models import download_model, is_mlflow_uri, pinned_uri

    if is_mlflow_uri(uri):
        if not tracking_uri:
            raise NotFoundError(
                f"model '{uri}' is an MLflow URI: set tracking_uri in the serve config or MLFLOW_TRACKING_URI"
            )
        version = pinned_uri(uri, tracking_uri)
        return version, download_model(version, tracking_uri)
    path = resolve_model_path(uri)
    return (uri if uri in MODEL_ALIASES else str(path.resolve())), path


def load_encoder(path: Path, config: ServeConfig) -> Encoder:
    """The encoder of the model folder ``path`` in the configured runtime (and thread count)."""
    if config.threads is not None:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=config.threads)  # BLAS of the scoring, for the whole process
    if config.runtime in ("onnx", "onnx-int8"):
        from workembed.models.onnx_encoder import OnnxEncoder

        return OnnxEncoder(
            path,
            max_length=config.max_length,
            batch_size=config.batch_size,
            quantize=config.runtime == "onnx-int8",
            threads=config.threads,
        )
    import torch

    from workembed.models import Encoder

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    return Encoder(path, max_length=config.max_length, batch_size=config.batch_size, device=config.device)


class ServedModel:
    """A pinned model version ready to serve: encoder, extraction settings, target-space embeddings."""

    def __init__(self, uri: str, config: ServeConfig, catalog: SpaceCatalog | None = None):
        from workembed.models.extraction_settings import read_extraction_settings
        from workembed.models.folder import read_model_info

        self.uri = uri
        self.config = config
        self.version, self.path = pin_model(uri, config.effective_tracking_uri())
        self.encoder = load_encoder(self.path, config)
        self.settings = read_extraction_settings(self.path)
        self.info: dict[str, Any] = {
            **read_model_info(self.path),
            "extraction_threshold": self.settings.threshold if self.settings else None,
            "dim": self.encoder.output_dim,
            "runtime": config.runtime,
        }
        self.catalog = catalog or SpaceCatalog.from_config(config)
        self._targets: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def dim(self) -> int:
        return self.encoder.output_dim

    def spaces(self) -> list[str]:
        """Names of the target spaces this model ranks."""
        return self.catalog.names()

    def targets(self, space: str) -> np.ndarray:
        """``[len(space), dim]`` L2-normalised float32 embeddings of ``space`` (computed once, cached on
        disk); :class:`UnknownSpaceError` for an unknown space."""
        if space not in self._targets:
            target_space = self.catalog.get(space)
            with self._lock:
                if space not in self._targets:
                    cache = Path(self.config.cache_dir).expanduser() / "targets" / self.config.runtime
                    vectors = target_embeddings(
                        self.encoder, target_space.corpus(), cache, kind=target_space.kind
                    )
                    self._targets[space] = l2_normalize(vectors.astype(np.float32))
        return self._targets[space]

    def warm(self) -> None:
        """Embed every target space (esco-skills, esco-occupations, the custom ones) now."""
        for space in self.spaces():
            self.targets(space)

    def embed(self, texts: list[str], tokens: bool = False, kind: str | None = None) -> list[dict[str, Any]]:
        """Per text ``{"embedding": [...]}`` (mean pooled, L2-normalised); with ``tokens`` also
        ``"tokens": [{"token", "start", "end", "embedding"}]`` for the non-special tokens (L2-normalised;
        the pooled vector is then their mean over all tokens, from the same forward pass)."""
        if not tokens:
            return [{"embedding": row.tolist()} for row in l2_normalize(self.encoder.embed(texts, kind))]
        out = []
        for output in self.encoder.embed_tokens(texts):
            pooled = l2_normalize(output.vectors.mean(axis=0, keepdims=True))[0]
            normalized = l2_normalize(output.vectors)
            out.append(
                {
                    "embedding": pooled.tolist(),
                    "tokens": [
                        {"token": token, "start": start, "end": end, "embedding": vector.tolist()}
                        for token, (start, end), vector, special in zip(
                            output.tokens, output.offsets, normalized, output.special, strict=True
                        )
                        if not special
                    ],
                }
            )
        return out

    def rank(
        self, texts: list[str], space: str, k: int, kind: str | None = None
    ) -> list[list[dict[str, Any]]]:
        """Per text (of input ``kind``) the ``k`` best targets of ``space`` by cosine:
        ``[{"id", "label", "score"}]``, best first."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        targets = self.targets(space)
        target_space = self.catalog.get(space)
        if not texts:
            return []
        indices, scores = dense_top_k(l2_normalize(self.encoder.embed(texts, kind)), targets, k)
        return [
            [
                {"id": target_space.ids[j], "label": target_space.labels[j], "score": float(score)}
                for j, score in zip(row_indices, row_scores, strict=True)
            ]
            for row_indices, row_scores in zip(indices, scores, strict=True)
        ]

    def normalize_titles(self, titles: list[str], k: int) -> list[list[dict[str, Any]]]:
        """The ``k`` best ESCO occupations of each job title."""
        return self.rank(titles, OCCUPATIONS, k, kind="job_title")

    def extract(self, sentences: list[str]) -> list[list[dict[str, Any]]]:
        """Per sentence the ESCO skills above the calibrated threshold that survive the redundancy filter,
        best first: ``[{"id", "label", "score", "spans": [{"start", "end", "text"}]}]`` (spans index the
        sentence). :class:`NoThresholdError` when the model has no calibrated threshold."""
        if self.settings is None:
            raise NoThresholdError(
                f"model {self.version} has no calibrated extraction threshold (no extraction.json): "
                "register it with a calibration before extracting with it"
            )
        if not sentences:
            return []
        skills = self.targets(SKILLS)
        tokens = self.encoder.embed_tokens(sentences)
        return extract_with_spans(sentences, tokens, skills, self.catalog.get(SKILLS), self.settings)

    def extract_ad(self, text: str) -> list[dict[str, Any]]:
        """A whole job ad: its sentences (:func:`~workembed.serving.span_extraction.segment_ad`) with their
        position in ``text`` (``start``/``end``, None when a sentence is not there verbatim, e.g. rendered
        from HTML) and their extracted ``skills``."""
        sentences = segment_ad(text)
        skills = self.extract(sentences)
        return [
            {
                "sentence": sentence,
                "start": place[0] if place else None,
                "end": place[1] if place else None,
                "skills": found,
            }
            for sentence, place, found in zip(
                sentences, locate_sentences(text, sentences), skills, strict=True
            )
        ]
