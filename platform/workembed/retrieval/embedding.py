"""Embeddings of target spaces and query sets with an encoder, and their on-disk cache.

Target embeddings are cached as ``.npy`` per (model, target-space fingerprint). With a
:class:`~workembed.retrieval.ray_embedding.RayEmbedding`, pooled embeddings of target spaces and query sets of
at least ``min_texts`` texts are computed by Ray Data actors (same cache file and key); late-interaction
query tokens are always embedded in this process.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from workembed.retrieval.ray_embedding import RayEmbedding, embed_with_ray, model_reference
from workembed.retrieval.scoring import l2_normalize

if TYPE_CHECKING:
    from workembed.models import Encoder

logger = logging.getLogger(__name__)


def pooled_embeddings(
    encoder: Encoder,
    texts: Sequence[str],
    ray: RayEmbedding | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """L2-normalised pooled embeddings of ``texts`` (of input ``kind``, which picks a projection model's
    side): by Ray Data actors when ``ray`` is given and there are at least ``ray.min_texts`` texts, else by
    ``encoder`` in this process."""
    if ray is None or len(texts) == 0 or len(texts) < ray.min_texts:
        return l2_normalize(encoder.embed(texts, kind))
    return embed_with_ray(
        model_reference(encoder),
        texts,
        batch_size=encoder.batch_size,
        max_length=encoder.max_length,
        device=ray.device(str(encoder.device)),
        num_actors=ray.num_actors,
        ray_address=ray.address,
        num_cpus=ray.num_cpus,
        num_gpus=ray.num_gpus,
        kind=kind,
    )


def query_token_vectors(encoder: Encoder, texts: Sequence[str]) -> list[np.ndarray]:
    """L2-normalised token embeddings of each text, special tokens excluded ([CLS]/[SEP] only when the
    text has no other token)."""
    vectors = []
    for tokens in encoder.embed_tokens(texts):
        keep = [i for i, special in enumerate(tokens.special) if not special] or list(
            range(len(tokens.special))
        )
        vectors.append(l2_normalize(tokens.vectors[keep]))
    return vectors


# ----------------------------------------------------------------------------------- target cache


def model_fingerprint(encoder: Encoder) -> str:
    """Hash of what decides the target embeddings: model files (name, size, mtime), max length, pooling."""
    digest = hashlib.sha256()
    digest.update(
        f"{encoder.name}\0{Path(encoder.path).resolve()}\0{encoder.max_length}\0{encoder.normalize}".encode()
    )
    for path in sorted(Path(encoder.path).rglob("*")):
        if path.is_file():
            stat = path.stat()
            digest.update(f"\0{path.relative_to(encoder.path)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def corpus_fingerprint(corpus: Mapping[str, str]) -> str:
    """Hash of the target space: ids and texts, in order."""
    digest = hashlib.sha256()
    for key, text in corpus.items():
        digest.update(f"{key}\0{text}\n".encode())
    return digest.hexdigest()


def target_cache_path(
    encoder: Encoder, corpus: Mapping[str, str], cache_dir: str | Path, side: str | None = None
) -> Path:
    """``<cache_dir>/<model>-<model hash>/<corpus hash>[.<side>].npy`` (``side``: a projection model's side
    that encoded the corpus)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(encoder.name).name or "model")
    folder = Path(cache_dir).expanduser() / f"{slug}-{model_fingerprint(encoder)[:16]}"
    suffix = f".{side}" if side else ""
    return folder / f"{corpus_fingerprint(corpus)[:32]}{suffix}.npy"


def target_embeddings(
    encoder: Encoder,
    corpus: Mapping[str, str],
    cache_dir: str | Path | None = None,
    *,
    ray: RayEmbedding | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """Pooled, L2-normalised embeddings of the corpus texts (of input ``kind``), read from / written to the
    cache when given (computed as :func:`pooled_embeddings` says when not cached)."""
    side = encoder.side(kind)
    path = target_cache_path(encoder, corpus, cache_dir, side) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            cached = None
        if cached is not None and cached.shape == (len(corpus), encoder.output_dim):
            logger.info("target embeddings from cache %s", path)
            return cached
    logger.info("embedding %d targets with %s", len(corpus), encoder.name)
    vectors = pooled_embeddings(encoder, list(corpus.values()), ray, kind)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, vectors)
        os.replace(partial, path)
    return vectors
