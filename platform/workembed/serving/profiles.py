"""The profile index behind ``/v1/match``: profile embeddings in Qdrant, searched with hard filters.

Qdrant runs in local mode (a folder; one process at a time may open it) or as a server (``qdrant_url``).
Each served model version has its own collection, ``<collection_prefix>-<sha256(version)[:12]>`` (cosine
distance), since vectors of two versions are not comparable. Qdrant point ids are integers or UUIDs, so a
profile's point id is ``uuid5(PROFILE_NAMESPACE, profile id)`` and the profile id is kept in the payload:
``{"id", "category", "language", "location", "payload": {...}}``; on a server, ``category``, ``language``
and ``location`` have keyword indexes (local mode has no payload indexes).

Filters: ``{"category" | "language" | "location" | "payload.<field>": value}``, all of which must hold; a
value is a string, integer or boolean (equality) or a non-empty list of strings or of integers (any of).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workembed.errors import ConfigError, InputError
from workembed.serving.config import ProfileIndexConfig

PROFILE_NAMESPACE = uuid.UUID("6f1b7a52-3c1e-5b8e-9a57-0c2d4f7e8a10")
FILTER_FIELDS = ("category", "language", "location")
PAYLOAD_PREFIX = "payload."


def collection_name(prefix: str, version: str) -> str:
    """``<prefix>-<first 12 hex digits of sha256(version)>``."""
    return f"{prefix}-{hashlib.sha256(version.encode()).hexdigest()[:12]}"


def point_id(profile_id: str) -> str:
    """The Qdrant point id of a profile: ``uuid5(PROFILE_NAMESPACE, profile_id)``."""
    return str(uuid.uuid5(PROFILE_NAMESPACE, profile_id))


def check_filters(filters: Mapping[str, Any]) -> dict[str, Any]:
    """``filters`` when every key and value is allowed (see the module docstring); else a ValueError
    naming the key."""
    for key, value in filters.items():
        if key not in FILTER_FIELDS and not (
            key.startswith(PAYLOAD_PREFIX) and len(key) > len(PAYLOAD_PREFIX)
        ):
            raise InputError(
                f"unknown filter '{key}': use {', '.join(FILTER_FIELDS)} or payload.<field> "
                "for a payload field"
            )
        if isinstance(value, list):
            if not value:
                raise InputError(f"filter '{key}': the list of values is empty")
            if not (all(isinstance(v, str) for v in value) or all(_is_int(v) for v in value)):
                raise InputError(f"filter '{key}': a list must hold only strings or only integers")
        elif not isinstance(value, str | bool | int):
            raise InputError(
                f"filter '{key}': expected a string, integer, boolean or a list, got {type(value).__name__}"
            )
    return dict(filters)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def qdrant_filter(filters: Mapping[str, Any]):
    """The Qdrant ``Filter`` of :func:`check_filters`-valid ``filters`` (None when there are none)."""
    from qdrant_client import models

    conditions = [
        models.FieldCondition(
            key=key,
            match=models.MatchAny(any=value) if isinstance(value, list) else models.MatchValue(value=value),
        )
        for key, value in check_filters(filters).items()
    ]
    return models.Filter(must=conditions) if conditions else None


class ProfileIndex:
    """Profiles of one model version in Qdrant: upsert their vectors, search them with filters."""

    def __init__(self, config: ProfileIndexConfig, dim: int, version: str):
        from qdrant_client import QdrantClient

        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.config = config
        self.dim = dim
        self.version = version
        self.collection = collection_name(config.collection_prefix, version)
        if config.qdrant_url:
            self.client = QdrantClient(url=config.qdrant_url)
        else:
            folder = Path(config.qdrant_path).expanduser()
            folder.mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(folder))
        self._ensure_collection()

    def _ensure_collection(self) -> None:
        from qdrant_client import models

        if not self.client.collection_exists(self.collection):
            try:
                self.client.create_collection(
                    self.collection,
                    vectors_config=models.VectorParams(size=self.dim, distance=models.Distance.COSINE),
                )
            except Exception:  # another replica created it meanwhile
                if not self.client.collection_exists(self.collection):
                    raise
            if not self.config.local:  # local mode has no payload indexes
                for field in FILTER_FIELDS:
                    self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD)
        size = self.client.get_collection(self.collection).config.params.vectors.size
        if size != self.dim:
            raise ConfigError(
                f"collection '{self.collection}' holds {size}-dimensional vectors, the model gives {self.dim}"
            )

    def upsert(self, profiles: Sequence[Mapping[str, Any]], vectors: np.ndarray) -> int:
        """Insert or replace profiles (``{"id", "category"?, "language"?, "location"?, "payload"?}``;
        other keys such as ``text`` are not stored) with their vectors ``[len(profiles), dim]``; returns
        how many."""
        from qdrant_client import models

        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (len(profiles), self.dim):
            raise ValueError(
                f"vectors of shape {vectors.shape} for {len(profiles)} profiles of dim {self.dim}"
            )
        points = []
        for index, (profile, vector) in enumerate(zip(profiles, vectors, strict=True)):
            profile_id = profile.get("id")
            if not isinstance(profile_id, str) or not profile_id:
                raise InputError(f"profiles[{index}].id must be a non-empty string")
            payload = {"id": profile_id, "payload": dict(profile.get("payload") or {})}
            payload.update({field: profile.get(field) for field in FILTER_FIELDS})
            points.append(
                models.PointStruct(id=point_id(profile_id), vector=vector.tolist(), payload=payload)
            )
        if points:
            self.client.upsert(self.collection, points=points, wait=True)
        return len(points)

    def search(self, vector: np.ndarray, k: int, filters: Mapping[str, Any] | None = None) -> list[dict]:
        """The ``k`` profiles most similar (cosine) to ``vector`` that pass ``filters``, best first:
        ``[{"id", "score", "category", "language", "location", "payload"}]``."""
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        query = np.asarray(vector, dtype=np.float32).ravel()
        if query.shape != (self.dim,):
            raise ValueError(f"query vector of shape {query.shape}, the index holds dim {self.dim}")
        hits = self.client.query_points(
            self.collection,
            query=query.tolist(),
            limit=k,
            query_filter=qdrant_filter(filters or {}),
            with_payload=True,
        ).points
        return [
            {
                "id": hit.payload["id"],
                "score": float(hit.score),
                **{field: hit.payload.get(field) for field in FILTER_FIELDS},
                "payload": hit.payload.get("payload") or {},
            }
            for hit in hits
        ]

    def count(self) -> int:
        """Profiles in the collection."""
        return int(self.client.count(self.collection, exact=True).count)

    def close(self) -> None:
        """Release the client (in local mode, the folder's lock)."""
        self.client.close()
