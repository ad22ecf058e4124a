"""Pooled embeddings of large text sets through Ray Data: one encoder per actor, results in input order.

The texts become a dataset of ``(index, text)`` blocks; ``map_batches`` runs :class:`EmbedBatches` on a
fixed pool of actors (each loads :class:`~workembed.models.Encoder` once), which emit
``(index, embedding)`` with L2-normalised mean-pooled vectors. The driver streams the output with
``iter_batches`` into one preallocated ``[n, dim]`` array, placing each row at its index, so the result is
in input order whatever order the blocks come back in.

The model is named by its alias (``minilm``) or an absolute directory that every node can read (a shared
or identical path). A Ray connection already open in this process is used; otherwise ``address`` is
joined (``auto``: the cluster named by ``RAY_ADDRESS`` or started on this machine with ``ray start``).
Nothing here starts or stops a cluster.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field, field_validator

from workembed.config import Config
from workembed.errors import ClusterError, ConfigError
from workembed.retrieval.scoring import l2_normalize

if TYPE_CHECKING:
    import ray.data

    from workembed.models import Encoder

logger = logging.getLogger(__name__)

INDEX = "index"
TEXT = "text"
EMBEDDING = "embedding"
LOCAL = "local"  # ray.init's address that starts a new local instance
BLOCKS_PER_ACTOR = 4  # enough blocks that every actor stays busy while others finish
MAX_ROWS_PER_BLOCK = 8192  # small blocks keep results streaming to the driver


class RayEmbedding(Config):
    """Where and how to embed target spaces and query sets with Ray Data actors."""

    address: str | None = Field(
        "auto",
        description="Ray cluster to join when this process has no Ray connection yet: 'auto' (RAY_ADDRESS "
        "or a cluster started on this machine), an address ('ray://host:10001', 'host:6379'), or null to "
        "require an open connection.",
    )
    num_actors: int = Field(2, ge=1, description="Encoder actors (each loads the model once).")
    num_cpus: float = Field(1.0, gt=0, description="CPUs reserved per actor (torch threads).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per actor; > 0 runs the encoder on 'cuda'.")
    min_texts: int = Field(
        10_000, ge=0, description="Text sets smaller than this are embedded in this process instead."
    )

    @field_validator("address")
    @classmethod
    def _joins_only(cls, value: str | None) -> str | None:
        if value is not None and value.strip() in ("", LOCAL):
            raise ValueError("must name a running cluster ('auto' or an address): embedding never starts one")
        return value

    def device(self, local_device: str) -> str:
        """The torch device inside an actor: ``cuda`` when it holds a GPU, else ``local_device``."""
        return "cuda" if self.num_gpus > 0 else local_device


class EmbedBatches:
    """Ray Data callable: ``{index, text}`` batches in, ``{index, embedding}`` (L2-normalised) out; ``kind``
    (input type of the texts) picks a projection model's side."""

    def __init__(self, model: str, batch_size: int, max_length: int, device: str, kind: str | None = None):
        from workembed.models import Encoder

        self._encoder = Encoder(model, batch_size=batch_size, max_length=max_length, device=device)
        self._kind = kind

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        vectors = l2_normalize(self._encoder.embed(batch[TEXT].tolist(), self._kind))
        return {INDEX: np.asarray(batch[INDEX], dtype=np.int64), EMBEDDING: vectors}


def model_reference(encoder: Encoder) -> str:
    """How actors load ``encoder``: its alias, else its absolute model directory."""
    from workembed.models.folder import MODEL_ALIASES

    return encoder.name if encoder.name in MODEL_ALIASES else str(Path(encoder.path).resolve())


def connect(address: str | None) -> None:
    """Use this process's Ray connection, else join the cluster at ``address``; never start one."""
    import ray

    if address == LOCAL:
        raise ConfigError("address 'local' would start a new Ray instance: give 'auto' or a cluster address")
    if ray.is_initialized():
        return
    if address is None:
        raise ClusterError(
            "embedding with Ray needs a Ray connection: call ray.init(...) first or give an address "
            "('auto' or 'host:port') of a running cluster"
        )
    try:
        ray.init(address=address)
    except ConnectionError as err:
        raise ClusterError(
            f"no running Ray cluster at '{address}': start one (ray start --head, workembed services up) "
            "or set ray.address"
        ) from err


def text_dataset(texts: Sequence[str], rows_per_block: int) -> ray.data.Dataset:
    """``(index, text)`` rows in blocks of ``rows_per_block`` (Arrow columns, no per-row objects)."""
    import pyarrow as pa
    import ray.data

    table = pa.table(
        {
            INDEX: pa.array(np.arange(len(texts), dtype=np.int64)),
            TEXT: pa.array(texts, type=pa.large_string()),
        }
    )
    return ray.data.from_arrow(
        [table.slice(start, rows_per_block) for start in range(0, len(texts), rows_per_block)]
    )


def embed_dataset(
    dataset: ray.data.Dataset,
    model: str,
    *,
    batch_size: int,
    max_length: int,
    device: str,
    num_actors: int,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    kind: str | None = None,
) -> ray.data.Dataset:
    """``(index, embedding)`` rows of an ``(index, text)`` dataset, on a pool of ``num_actors`` encoders."""
    from ray.data import ActorPoolStrategy

    return dataset.map_batches(
        EmbedBatches,
        fn_constructor_kwargs={
            "model": model,
            "batch_size": batch_size,
            "max_length": max_length,
            "device": device,
            "kind": kind,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=num_actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
    )


def collect_in_order(embedded: ray.data.Dataset, n_rows: int) -> np.ndarray:
    """Stream ``(index, embedding)`` batches into a ``[n_rows, dim]`` array, row ``i`` from index ``i``."""
    out: np.ndarray | None = None
    filled = np.zeros(n_rows, dtype=bool)
    for batch in embedded.iter_batches(batch_size=None, batch_format="numpy"):
        index, vectors = batch[INDEX], batch[EMBEDDING]
        if out is None:
            out = np.empty((n_rows, vectors.shape[1]), dtype=np.float32)
        if index.size and (index.min() < 0 or index.max() >= n_rows or filled[index].any()):
            raise RuntimeError("Ray embedding returned an index out of range or twice")
        out[index] = vectors
        filled[index] = True
    if out is None or not filled.all():
        raise RuntimeError(f"Ray embedding returned {int(filled.sum())} of {n_rows} rows")
    return out


def embed_with_ray(
    model: str,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 256,
    device: str = "cpu",
    num_actors: int = 2,
    ray_address: str | None = None,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
    rows_per_block: int | None = None,
    kind: str | None = None,
) -> np.ndarray:
    """L2-normalised pooled embeddings ``[len(texts), dim]`` of ``texts`` (of input ``kind``), in input
    order, computed by ``num_actors`` Ray Data actors that each load ``model`` (an alias or a directory
    every node reads).

    Blocks hold ``rows_per_block`` texts (default: about ``BLOCKS_PER_ACTOR`` blocks per actor, at least one
    encoder batch and at most ``MAX_ROWS_PER_BLOCK`` texts each).
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to embed")
    if num_actors < 1 or batch_size < 1:
        raise ValueError("num_actors and batch_size must be at least 1")
    if rows_per_block is None:
        per_actor = math.ceil(len(texts) / (num_actors * BLOCKS_PER_ACTOR))
        rows_per_block = min(max(batch_size, per_actor), MAX_ROWS_PER_BLOCK)
    elif rows_per_block < 1:
        raise ValueError("rows_per_block must be at least 1")
    connect(ray_address)
    logger.info("embedding %d texts with %s on %d Ray actor(s)", len(texts), model, num_actors)
    embedded = embed_dataset(
        text_dataset(texts, rows_per_block),
        model,
        batch_size=batch_size,
        max_length=max_length,
        device=device,
        num_actors=num_actors,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        kind=kind,
    )
    return collect_in_order(embedded, len(texts))
