"""``workembed run extract``: skill extraction and title normalisation over job ads, through Ray Data.

What a job board runs nightly over its ads with the champion model. The model URI is pinned once on the
driver (``models:/NAME@ALIAS`` → ``models:/NAME/VERSION``), so every actor serves the same version even if
the alias moves mid-run, and each output row records it. The driver embeds the ESCO target spaces once
(cached on disk per model version), then an actor pool runs :meth:`ServedModel.extract_ad` and
:meth:`ServedModel.normalize_titles` per batch of ads.

Output under ``<output>/<run_id>/``: ``extractions`` (Parquet: ``ad_id``, ``title``, ``model_version``,
``occupations`` (top-k: id, label, score), ``sentences`` (sentence, start, end, skills with id, label, score
and character spans)), ``rejects`` (Parquet: stage, reason, raw) for ads without text or that fail, and
``summary.json``, where rows in = rows out + rows rejected. The run folder is opened by
:func:`workembed.runs.open_run`: one that holds files is refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow as pa
from pydantic import Field

from workembed.config import Config, resolve_data_path
from workembed.data.config import RayConfig
from workembed.errors import ConfigError, DatasetError, RegistryError
from workembed.runs import open_run

logger = logging.getLogger(__name__)

STAGE = "extract"
_HIT = [("id", pa.string()), ("label", pa.string()), ("score", pa.float64())]
_SPAN = pa.struct([("start", pa.int64()), ("end", pa.int64()), ("text", pa.string())])
_SKILL = pa.struct([*_HIT, ("spans", pa.list_(_SPAN))])
_SENTENCE = pa.struct(
    [("sentence", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("skills", pa.list_(_SKILL))]
)
OUTPUT_SCHEMA = pa.schema(
    [
        ("ad_id", pa.string()),
        ("title", pa.string()),
        ("model_version", pa.string()),
        ("occupations", pa.list_(pa.struct(_HIT))),
        ("sentences", pa.list_(_SENTENCE)),
        ("error", pa.string()),
        ("raw", pa.string()),
    ]
)
"""One actor output batch: the extraction columns, plus ``error`` and ``raw`` for the quarantine."""


class BatchExtractConfig(Config):
    """Settings of ``workembed run extract``."""

    model: str = Field(
        "models:/workembed@champion",
        description="Model: an MLflow URI (models:/NAME@ALIAS is pinned to its version at start), a model "
        "folder or 'minilm'. Extraction needs a version with a calibrated threshold (extraction.json).",
    )
    tracking_uri: str | None = Field(None, description="MLflow server; null: $MLFLOW_TRACKING_URI.")
    input: str = Field(
        description="Job ads in the job_ads contract (ad_id, title, description): a Parquet file or folder, "
        "e.g. an ingest run's job_ads, local or s3://; relative paths resolve against the data root.",
    )
    input_format: str = Field("parquet", pattern="^(parquet|jsonl)$", description="'parquet' or 'jsonl'.")
    columns: dict[str, str] = Field(
        default_factory=lambda: {"ad_id": "ad_id", "title": "title", "description": "description"},
        description="Contract column → input column, for inputs that name them differently.",
    )
    output: str = Field(
        "runs/extract", description="Output root (local or s3://); results in <output>/<run_id>."
    )
    run_id: str | None = Field(None, description="Output folder name; null: a new extract-<UTC time> id.")
    overwrite: bool = Field(
        False,
        description="Empty a run folder that already holds files (false: such a folder is an error; an "
        "empty one is reused).",
    )
    esco: str | None = Field(None, description="Taxonomy of the target spaces; null: the serving default.")
    title_k: int = Field(3, ge=1, description="ESCO occupations kept per ad title.")
    max_length: int = Field(128, ge=8, description="Tokens per sentence; longer ones are truncated.")
    encoder_batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    cache_dir: str = Field(
        "~/.cache/workembed/serving", description="Target-space embeddings cache (shared with serving)."
    )
    device: str = Field("cpu", description="Torch device of the actors' encoders.")
    runtime: str = Field(
        "torch", pattern="^(torch|onnx|onnx-int8)$", description="Encoder runtime: torch, onnx or onnx-int8."
    )
    batch_size: int = Field(32, ge=1, description="Ads per Ray Data batch.")
    concurrency: int = Field(1, ge=1, description="Extraction actors.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per actor.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (GPU clusters).")
    ray: RayConfig = Field(default_factory=RayConfig)

    def serve_config(self, model: str) -> Any:
        """The serving settings the actors' :class:`ServedModel` runs with."""
        from workembed.serving.config import ServeConfig

        values: dict[str, Any] = {
            "model": model,
            "tracking_uri": self.tracking_uri,
            "cache_dir": self.cache_dir,
            "max_length": self.max_length,
            "batch_size": self.encoder_batch_size,
            "device": self.device,
            "runtime": self.runtime,
        }
        if self.esco is not None:
            values["esco"] = self.esco
        return ServeConfig.model_validate(values)


class AdExtractor:
    """Ray Data actor: one :class:`ServedModel` of the pinned version; extracts a batch of ads."""

    def __init__(self, serve_config: dict[str, Any], title_k: int):
        from workembed.serving.config import ServeConfig
        from workembed.serving.runtime import ServedModel

        config = ServeConfig.model_validate(serve_config)
        self.model = ServedModel(config.model, config)
        self.title_k = title_k

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        rows: dict[str, list] = {
            name: []
            for name in ("ad_id", "title", "model_version", "occupations", "sentences", "error", "raw")
        }
        for ad_id, title, description in zip(
            batch["ad_id"], batch["title"], batch["description"], strict=True
        ):
            raw = json.dumps({"ad_id": ad_id, "title": title, "description": description}, ensure_ascii=False)
            title_text = (title or "").strip()
            text = (description or "").strip()
            error, sentences, occupations = None, [], []
            if not text and not title_text:
                error = "no usable text (empty title and description)"
            else:
                try:
                    sentences = self.model.extract_ad(text) if text else []
                    if title_text:
                        occupations = self.model.normalize_titles([title_text], self.title_k)[0]
                except Exception as err:  # a bad ad is quarantined, never fatal to the run
                    error = f"{type(err).__name__}: {err}"
            rows["ad_id"].append(ad_id)
            rows["title"].append(title)
            rows["model_version"].append(self.model.version)
            rows["occupations"].append(occupations)
            rows["sentences"].append(sentences)
            rows["error"].append(error)
            rows["raw"].append(raw)
        return pa.Table.from_pydict(rows, schema=OUTPUT_SCHEMA)


def run_batch_extract(config: BatchExtractConfig) -> dict[str, Any]:
    """Extract skills and normalise titles of every ad; returns the summary (also written as JSON)."""
    from workembed.serving.runtime import ServedModel

    started = time.perf_counter()
    model = ServedModel(config.model, config.serve_config(config.model))  # pins the version
    if model.settings is None:
        raise RegistryError(
            f"model {model.version} has no calibrated extraction threshold (extraction.json): register it "
            "with `workembed models register` (which calibrates it) before extracting with it"
        )
    version = model.version
    run = open_run(config.output, config.run_id, "extract", overwrite=config.overwrite)
    run_id, out = run.run_id, run.path
    logger.info("extracting with %s (threshold %.3f) into %s", version, model.settings.threshold, out)
    model.warm()  # target spaces embedded once here; the actors read them from the disk cache
    del model

    config.ray.connect()
    extracted = (
        _read_ads(config)
        .map_batches(
            AdExtractor,
            fn_constructor_kwargs={
                "serve_config": config.serve_config(version).model_dump(mode="json"),
                "title_k": config.title_k,
            },
            batch_size=config.batch_size,
            concurrency=config.concurrency,
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus or None,
            batch_format="numpy",
        )
        .materialize()
    )
    good = extracted.filter(lambda row: row["error"] is None).drop_columns(["error", "raw"])
    bad = extracted.filter(lambda row: row["error"] is not None).map(
        lambda row: {"stage": STAGE, "reason": row["error"], "raw": row["raw"]}
    )
    rows_in, rows_out, rejected = extracted.count(), good.count(), bad.count()
    good.write_parquet(run.join("extractions"))
    if rejected:
        bad.write_parquet(run.join("rejects"))
    summary = {
        "run_id": run_id,
        "output": out,
        "model": config.model,
        "model_version": version,
        "rows_in": rows_in,
        "rows_out": rows_out,
        "rows_rejected": rejected,
        "balanced": rows_in == rows_out + rejected,
        "seconds": round(time.perf_counter() - started, 1),
    }
    run.write_summary(summary)
    logger.info(
        "extract: %d ads in = %d out + %d rejected (%s s)", rows_in, rows_out, rejected, summary["seconds"]
    )
    return summary


def _read_ads(config: BatchExtractConfig):
    """The input as a Ray dataset with the contract columns ad_id, title, description."""
    import ray

    location = resolve_data_path(config.input)
    wanted = {"ad_id", "title", "description"}
    missing = wanted - set(config.columns)
    if missing:
        raise ConfigError(f"columns: map every contract column ({', '.join(sorted(missing))} missing)")
    reader = ray.data.read_parquet if config.input_format == "parquet" else ray.data.read_json
    ads = reader(location)
    names = set(ads.schema().names)
    absent = sorted({config.columns[c] for c in wanted} - names)
    if absent:
        raise DatasetError(
            f"input {location} has no column(s) {', '.join(absent)} (columns: {sorted(names)})"
        )
    source = {config.columns[c]: c for c in wanted}
    renames = {old: new for old, new in source.items() if old != new}
    ads = ads.select_columns(list(source))
    return ads.rename_columns(renames) if renames else ads
