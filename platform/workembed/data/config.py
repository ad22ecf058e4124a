"""The typed config of the ingest job (``jobs/configs/ingest.yaml``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from workembed.config import Config
from workembed.data.matching import MatchingConfig
from workembed.taxonomy import EscoConfig


class ColumnMap(Config):
    """Which source fields fill the ``job_ads`` contract (null: the source has no such field)."""

    ad_id: str | None = Field(None, description="Field with the source's own ad id; null: a content hash.")
    title: str | None = Field(None, description="Field with the job title; null: ads have no title.")
    description: str = Field(..., description="Field with the ad text (HTML is converted to text).")
    posted_at: str | None = Field(None, description="Field with the posting date/time.")
    meta: list[str] = Field(
        default_factory=list, description="Fields kept verbatim in the JSON `meta` column."
    )


class SourceConfig(Config):
    """One job-ad set: files of one format and one column mapping."""

    name: str = Field(..., description="Short source name; prefixes ad ids and fills the `source` column.")
    paths: list[str] = Field(
        ..., min_length=1, description="Files or folders (data-root relative, or s3://)."
    )
    format: Literal["jsonl", "csv", "parquet"] = Field(description="File format of every path of the source.")
    columns: ColumnMap
    language: str | None = Field(None, description="ISO 639-1 code of every ad; null: detected per ad.")
    csv_delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator of CSV files.")
    max_line_bytes: int = Field(
        16 * 1024 * 1024,
        gt=0,
        description="JSONL lines and CSV records longer than this (bytes) are rejected while reading (stage "
        "read, reason too_long, raw: their first 4 KiB), never held whole: a reader holds at most this plus "
        "a 1 MiB chunk. Above validation.max_record_bytes, so that records between the two are quarantined "
        "by validate with their bytes kept whole.",
    )


class StorageConfig(Config):
    """S3 settings; unset fields fall back to the standard AWS environment variables.

    The keys are secrets: shown as ``**********`` and null in every dump that leaves the process
    (:func:`workembed.config.public_dump`); only :mod:`workembed.data.storage` reads them in clear.
    """

    endpoint_url: str | None = Field(None, description="e.g. http://127.0.0.1:9000 (else $AWS_ENDPOINT_URL).")
    region: str | None = Field(None, description="Else $AWS_DEFAULT_REGION.")
    access_key_id: SecretStr | None = Field(
        None, description="Else $AWS_ACCESS_KEY_ID. A secret: written out as null (files, MLflow)."
    )
    secret_access_key: SecretStr | None = Field(
        None, description="Else $AWS_SECRET_ACCESS_KEY. A secret: written out as null (files, MLflow)."
    )


class ValidationConfig(Config):
    """Quarantine rules: what makes a record unusable."""

    max_record_bytes: int = Field(1_000_000, gt=0, description="Records larger than this are quarantined.")
    min_description_chars: int = Field(30, ge=1, description="Shorter descriptions count as no usable text.")


class SegmentConfig(Config):
    """Sentence segmentation and language detection."""

    min_chars: int = Field(12, ge=1, description="Shorter fragments are not sentences.")
    max_chars: int = Field(600, ge=20, description="Longer sentences are split at whitespace.")
    detect_languages: list[str] = Field(
        default_factory=lambda: ["en", "fr", "de", "pl", "nl", "es", "it", "pt"],
        description="Languages the detector chooses from (for sources without a fixed language).",
    )


class DedupeConfig(Config):
    """Exact and near-duplicate removal of ads and exact removal of sentences."""

    near: bool = Field(True, description="Remove near-duplicate ads (MinHash LSH) besides exact ones.")
    threshold: float = Field(
        0.85, gt=0, le=1, description="Jaccard similarity above which ads are duplicates."
    )
    num_perm: int = Field(64, ge=16, le=512, description="MinHash permutations.")
    shingle_words: int = Field(5, ge=1, description="Word n-gram size of the shingles.")
    sentences: bool = Field(True, description="Drop sentences whose exact text was already seen.")


class EncoderConfig(Config):
    """The encoder of dense grounding."""

    model: str = Field("minilm", description="Encoder for dense grounding ('minilm' or a model directory).")
    languages: list[str] = Field(
        default_factory=lambda: ["en"], description="Languages the encoder supports."
    )
    batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    max_length: int = Field(128, ge=8, description="Tokens per text; longer texts are truncated.")
    device: str = Field("cpu", description="torch device of the grounding actors ('cuda' on GPU workers).")


class GroundConfig(Config):
    """Grounding of sentences and titles to ESCO: lexical label matches and dense nearest labels."""

    lexical: bool = Field(True, description="Match ESCO preferred/alt labels in sentences.")
    dense: bool = Field(True, description="Match sentence/title embeddings against ESCO label embeddings.")
    dense_sentences: bool = Field(
        True,
        description="With dense: embed every sentence too (the costly part on CPU); false: titles only, "
        "sentences matched lexically.",
    )
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    skill_threshold: float = Field(0.6, ge=-1, le=1, description="Minimum cosine for a dense skill match.")
    skill_top_k: int = Field(3, ge=1, description="Dense skill matches kept per sentence.")
    title_threshold: float = Field(0.6, ge=-1, le=1, description="Minimum cosine for a title → occupation.")
    min_label_chars: int = Field(3, ge=1, description="Labels up to this length match case-sensitively only.")
    concurrency: int = Field(1, ge=1, description="Grounding actors (each holds an encoder).")
    block_ads: int = Field(
        256, ge=1, description="Ads per grounding task: the stream is cut into blocks of this size before it."
    )
    num_cpus: float = Field(
        1, gt=0, description="CPUs per grounding actor (Ray sets its torch threads to match)."
    )
    num_gpus: float = Field(0, ge=0, description="GPUs per grounding actor (set with encoder.device=cuda).")
    cache_dir: str = Field(
        "~/.cache/workembed/embeddings",
        description="Cache of ESCO label embeddings on the driver (kept across runs and submitted jobs).",
    )


class GraphConfig(Config):
    """How grounded ads and ESCO relations become training edges."""

    essential_weight: float = Field(1.0, description="Weight of an essential occupation–skill edge.")
    optional_weight: float = Field(0.5, description="Weight of an optional occupation–skill edge.")
    unspecified_weight: float = Field(0.75, description="Weight when the source does not say which.")
    matching: bool = Field(True, description="Add project–profile edges from the matching data.")


class RayConfig(Config):
    """The Ray cluster a job joins or starts."""

    address: str | None = Field(None, description="Cluster to join; null: $RAY_ADDRESS or a new local one.")
    num_cpus: int | None = Field(
        6,
        ge=1,
        description="Logical CPUs of a new local instance: more than cores, so that actors (preparers, "
        "grounding, training workers) never take every slot and starve the read tasks.",
    )
    object_store_mb: int | None = Field(
        None,
        ge=64,
        description="Object store of a new local instance, in MiB; null: Ray's default (30% of memory). "
        "Ray Data keeps the blocks in flight within part of it, and the store's shared pages, once touched, "
        "stay resident: a smaller store bounds the memory a long stream holds.",
    )

    def connect(self) -> None:
        """Join the configured cluster (or ``$RAY_ADDRESS``, as in a submitted job), else start a local
        instance of ``num_cpus``; nothing when this process is already connected."""
        import os

        import ray

        if not ray.is_initialized():
            joining = self.address is not None or "RAY_ADDRESS" in os.environ
            local = not joining and self.object_store_mb is not None
            ray.init(
                address=self.address,
                num_cpus=None if joining else self.num_cpus,
                object_store_memory=self.object_store_mb * (1 << 20) if local else None,
            )


class IngestConfig(Config):
    """Job ads → job_ads, sentences, edges, rejects, skill edge counts and a summary."""

    run_id: str | None = Field(None, description="Output folder name; null: a new ingest-<UTC time> id.")
    output: str = Field("runs", description="Root of run outputs (local path or s3://bucket/prefix).")
    overwrite: bool = Field(
        False,
        description="Empty a run folder that already holds files (false: such a folder is an error; an "
        "empty one is reused).",
    )
    sources: list[SourceConfig] = Field(default_factory=list)
    esco: EscoConfig = Field(default_factory=EscoConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    ground: GroundConfig = Field(default_factory=GroundConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    matching: MatchingConfig = Field(default_factory=MatchingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    block_rows: int = Field(
        2000, ge=1, description="Records per block after reading (large Parquet files are cut to this size)."
    )
    prepare_actors: int = Field(
        2,
        ge=1,
        description="Actors that parse, validate, sign and segment records in parallel, all started up front "
        "(one per core: they do most of the work); each takes one logical CPU.",
    )

    @model_validator(mode="after")
    def _unique_source_names(self) -> IngestConfig:
        names = [source.name for source in self.sources]
        duplicated = sorted({name for name in names if names.count(name) > 1})
        if duplicated:
            raise ValueError(f"source names must be unique: {', '.join(duplicated)}")
        return self
