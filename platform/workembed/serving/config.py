"""Settings of the serving application (``serve/config.yaml``'s ``user_config``): the served model, target
spaces, request limits, request batching and the profile index."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from workembed.config import Config

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
ESCO_SPACES = ("esco-skills", "esco-occupations")
"""Target spaces every served model has (from the ESCO taxonomy)."""
SPACE_SUFFIXES = (".tsv", ".jsonl")
_SPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _default_esco() -> str:
    from workembed.taxonomy import default_esco_location

    return default_esco_location()


class LimitsConfig(Config):
    """Request limits; a request over them is answered 422 with a message naming the field."""

    max_items: int = Field(64, ge=1, description="Most texts (titles, sentences, sections) in one request.")
    max_text_chars: int = Field(
        2000, ge=1, description="Most characters of one text, title or sentence (after stripping)."
    )
    max_document_chars: int = Field(
        20000, ge=1, description="Most characters of one document: a job ad, a project document, a profile."
    )
    max_k: int = Field(100, ge=1, description="Largest k (results per query) a request may ask for.")
    max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Largest request body in bytes, by Content-Length or counted while a chunked body "
        "streams in; a larger one is answered 413 before it is parsed or its API key checked.",
    )
    max_payload_bytes: int = Field(
        8192,
        ge=2,
        description="Largest payload of one profile (/v1/profiles), as compact JSON in UTF-8 bytes.",
    )
    max_token_vectors: int = Field(
        2048,
        ge=1,
        description="Most token vectors one /v1/embed request with tokens=true may return (texts x tokens "
        "after truncation to max_length).",
    )

    @model_validator(mode="after")
    def _documents_hold_texts(self) -> LimitsConfig:
        if self.max_document_chars < self.max_text_chars:
            raise ValueError(
                f"max_document_chars ({self.max_document_chars}) must be at least max_text_chars "
                f"({self.max_text_chars})"
            )
        return self


class BatchingConfig(Config):
    """Request batching of the encoder (Serve's ``@serve.batch``)."""

    max_batch_size: int = Field(16, ge=1, description="Most requests the encoder serves in one batch.")
    batch_wait_timeout_s: float = Field(
        0.005, ge=0, description="Longest wait (seconds) for a batch to fill before it runs."
    )


class SpaceConfig(Config):
    """A custom target space: a file of ``id``, ``label`` and optionally ``text`` (embedded; the label when
    absent)."""

    path: str = Field(
        min_length=1,
        description="A .tsv file with the header 'id<TAB>label[<TAB>text]' or a .jsonl file of objects with "
        "'id', 'label' and optionally 'text'; a relative path resolves against the data root, then the "
        "current directory.",
    )
    description: str = Field("", description="What the space holds (shown by the API).")

    @field_validator("path")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if Path(value).suffix.lower() not in SPACE_SUFFIXES:
            raise ValueError(f"'{value}' must end in {' or '.join(SPACE_SUFFIXES)}")
        return value


class ProfileIndexConfig(Config):
    """Where profiles are indexed for ``/v1/match``: Qdrant in local mode (a folder, one process at a time)
    or a Qdrant server."""

    qdrant_path: str | None = Field(
        "~/.cache/workembed/qdrant",
        description="Folder of the local-mode Qdrant index (only one process may open it, so a local index "
        "forces a single match replica); dropped when qdrant_url is set.",
    )
    qdrant_url: str | None = Field(
        None, description="URL of a Qdrant server (e.g. http://qdrant:6333); replaces qdrant_path."
    )
    collection_prefix: str = Field(
        "profiles",
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Collections are named '<prefix>-<first 12 hex digits of sha256(model version)>', one "
        "per served model version.",
    )
    max_profiles_per_request: int = Field(256, ge=1, description="Most profiles one upsert request may hold.")

    @model_validator(mode="before")
    @classmethod
    def _url_replaces_default_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("qdrant_url") and "qdrant_path" not in data:
            return {**data, "qdrant_path": None}
        return data

    @model_validator(mode="after")
    def _one_location(self) -> ProfileIndexConfig:
        if self.qdrant_path and self.qdrant_url:
            raise ValueError("qdrant_path and qdrant_url are exclusive: set one of them (the other to null)")
        if not self.qdrant_path and not self.qdrant_url:
            raise ValueError("set qdrant_path (local mode) or qdrant_url (a Qdrant server)")
        return self

    @property
    def local(self) -> bool:
        """True for local mode (a folder), which one process at a time may open."""
        return self.qdrant_url is None


class ServeConfig(Config):
    """Settings of the serving application."""

    model: str = Field(
        "models:/workembed@champion",
        min_length=1,
        description="The default served model: an MLflow URI (models:/NAME@ALIAS, re-resolved every "
        "alias_poll_s; models:/NAME/VERSION; runs:/RUN_ID/PATH), 'minilm' or a model folder.",
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server of models:/ and runs:/ URIs; null: $MLFLOW_TRACKING_URI."
    )
    alias_poll_s: float = Field(
        30.0, gt=0, description="Seconds between re-resolutions of an alias URI (a promotion is picked up)."
    )
    max_models_per_replica: int = Field(
        3, ge=1, description="Model versions one replica holds at once (Serve model multiplexing)."
    )
    max_cached_versions: int = Field(
        5,
        ge=1,
        description="Downloaded model versions kept in the download cache ($WORKEMBED_MODEL_CACHE); beyond "
        "it the least recently used are deleted, never one a replica serves nor the last version an alias "
        "resolved to (the fallback while MLflow is unreachable).",
    )
    esco: str = Field(
        default_factory=_default_esco,
        min_length=1,
        description="ESCO taxonomy of the esco-skills and esco-occupations spaces: an export path relative "
        "to the data root, s3://..., or 'builtin' (877-skill ICT sample); default: ESCO v1.1.1 under the "
        "data root when present, else 'builtin'.",
    )
    spaces: dict[str, SpaceConfig] = Field(
        default_factory=dict,
        description="Custom target spaces by name, besides esco-skills and esco-occupations.",
    )
    cache_dir: str = Field(
        "~/.cache/workembed/serving",
        min_length=1,
        description="Target-space embeddings are cached here as .npy per (model version, space contents).",
    )
    max_length: int = Field(128, ge=8, description="Tokens per text; longer texts are truncated.")
    batch_size: int = Field(
        64, ge=1, description="Texts per encoder forward pass (when embedding a target space, for instance)."
    )
    device: str = Field("cpu", min_length=1, description="Torch device of the encoder ('cpu', 'cuda').")
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "torch",
        description="Encoder runtime: eager PyTorch, ONNX Runtime (fp32: the rankings of PyTorch, faster "
        "on CPU) or ONNX Runtime with int8 weights (fastest; reorders near-tied skills).",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="Intra-op threads of the encoder and of the scoring (BLAS) in each replica; null: the "
        "libraries' defaults. On small shared CPUs, 1 per replica gives the steadiest latency.",
    )
    auth: Literal["required", "disabled"] = Field(
        "required",
        description="'required': every /v1 route needs a valid X-API-Key header, and the application refuses "
        "to start without a key (from api_key_env or api_keys_file); 'disabled': the API is open to anyone "
        "who reaches it (a warning is logged at every start).",
    )
    api_key_env: str = Field(
        "WORKEMBED_API_KEY",
        description="Environment variable holding the valid API keys, separated by commas or newlines (set "
        "it from a secret, never in this file); unset or empty: no key from the environment.",
    )
    api_keys_file: str | None = Field(
        None,
        min_length=1,
        description="A file of valid API keys, one per line, '#' starts a comment (e.g. a mounted "
        "Kubernetes Secret); re-read when it changes, so keys rotate without a restart. Its keys add to "
        "those of api_key_env.",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Request limits.")
    batching: BatchingConfig = Field(default_factory=BatchingConfig, description="Encoder request batching.")
    profiles: ProfileIndexConfig = Field(
        default_factory=ProfileIndexConfig, description="The profile index of /v1/match and /v1/profiles."
    )

    @field_validator("spaces")
    @classmethod
    def _space_names(cls, value: dict[str, SpaceConfig]) -> dict[str, SpaceConfig]:
        for name in value:
            if name in ESCO_SPACES:
                raise ValueError(f"'{name}' is a built-in space: give the custom space another name")
            if not _SPACE_NAME.match(name):
                raise ValueError(f"space name '{name}' must be letters, digits, '.', '_' or '-'")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if not _ENV_NAME.match(value):
            raise ValueError(f"'{value}' is not an environment variable name")
        return value

    def effective_tracking_uri(self) -> str | None:
        """``tracking_uri``, else ``$MLFLOW_TRACKING_URI`` (read now), else None."""
        return self.tracking_uri or os.environ.get(TRACKING_URI_ENV) or None
