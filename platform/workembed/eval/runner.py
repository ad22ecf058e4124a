"""Run an encoder (and optionally the lexical baselines) over ranking datasets and report the metrics.

For each dataset and each system (the model's name, ``bm25``, ``tfidf``) the report holds ``n_queries``
(queries evaluated: those with a positive judgement), ``queries_without_positives`` and the means of
:data:`workembed.eval.metrics.METRICS` over the top ``k`` ranking (with ``k`` < 100, Recall@100 counts the
top ``k`` only); ``datasets`` gives each dataset's size (``queries``, ``targets``) and its ``language`` and
``direction`` from ``meta.json``. :func:`evaluate` returns unrounded values; :func:`run_eval` rounds them
(4 decimals), writes the JSON and Markdown report and the bar charts, and with a tracking URI logs the run
to MLflow: the resolved config as parameters, every number of ``results`` as ``dataset/system/metric``
(e.g. ``tiny/bm25/rp_at_5``) and the report files as artifacts.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, field_validator

from workembed.config import Config, resolve_data_path
from workembed.eval.baselines import BASELINES
from workembed.eval.metrics import mean_metrics
from workembed.eval.report import publish_report, write_report
from workembed.retrieval.ranking import Ranking, Scorer, encoder_ranking
from workembed.retrieval.ranking_dataset import RankingDataset, check_distinct_names, read_dataset
from workembed.retrieval.ray_embedding import RayEmbedding

if TYPE_CHECKING:
    from workembed.models import Encoder

logger = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = "~/.cache/workembed/targets"
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"


class EncoderEvalConfig(Config):
    """What every encoder evaluation shares: the model, how it runs, where the report goes and MLflow."""

    model: str = Field(
        "minilm",
        description="'minilm' (packaged all-MiniLM-L6-v2), a model directory or an MLflow model URI "
        "(models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH; needs MLFLOW_TRACKING_URI).",
    )
    batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    max_length: int = Field(256, ge=8, description="Tokens per text; longer texts are truncated.")
    device: str = Field("cpu", description="Torch device of the encoder ('cpu', 'cuda', 'cuda:1').")
    cache_dir: str | None = Field(
        DEFAULT_CACHE_DIR,
        description="Where target embeddings are cached per (model, target space); null disables the cache.",
    )
    out: str | None = Field(
        None, description="Write the JSON report here and a Markdown table beside it (same stem, .md)."
    )
    tracking_uri: str | None = Field(
        default_factory=lambda: os.environ.get(TRACKING_URI_ENV) or None,
        description="MLflow tracking URI to log the run to (config, metrics, report files); defaults to "
        "$MLFLOW_TRACKING_URI; null: no logging.",
    )
    experiment: str = Field("workembed-eval", min_length=1, description="MLflow experiment of the run.")

    @field_validator("out")
    @classmethod
    def _out_not_markdown(cls, value: str | None) -> str | None:
        if value is not None and Path(value).suffix == ".md":
            raise ValueError("must not end in .md: the Markdown table is written beside it with that suffix")
        return value

    def load_encoder(self) -> Encoder:
        """The text encoder of ``model``, run with this config's batch size, max length and device."""
        from workembed.models import Encoder

        return Encoder(self.model, max_length=self.max_length, batch_size=self.batch_size, device=self.device)


class EvalConfig(EncoderEvalConfig):
    """Settings of ``workembed eval``."""

    datasets: list[str] = Field(
        min_length=1,
        description="Ranking dataset folders (queries.tsv, corpus.tsv, qrels.tsv); relative paths resolve "
        "against the data root.",
    )
    baselines: bool = Field(False, description="Also rank with BM25 and character n-gram TF-IDF.")
    k: int = Field(100, ge=1, description="Targets kept per query; metrics are computed on this top k.")
    scorer: Scorer = Field(
        "cosine", description="'cosine' on pooled embeddings or 'late-interaction' (query tokens vs target)."
    )
    temperature: float = Field(
        0.05, gt=0, description="Softmax temperature over query tokens for the late-interaction scorer."
    )
    block_size: int = Field(1024, ge=1, description="Queries scored against all targets at a time.")
    ray: RayEmbedding | None = Field(
        None,
        description="Embed target spaces and query sets of at least ray.min_texts texts with Ray Data actors "
        "(ray.address, ray.num_actors, ray.num_cpus, ray.num_gpus); null embeds in this process.",
    )
    out: str | None = Field(
        None,
        description="Write the JSON report here, a Markdown table (same stem, .md) and bar charts "
        "(<stem>-<metric>.png) beside it.",
    )


def evaluate(config: EvalConfig, encoder: Encoder | None = None) -> dict[str, Any]:
    """Evaluate ``config.model`` and, with ``config.baselines``, BM25 and TF-IDF on each of
    ``config.datasets``; the report, unrounded. A loaded ``encoder`` stands in for ``config.model`` (and its
    batch size, max length and device)."""
    datasets = read_datasets(config.datasets)
    if encoder is None:
        encoder = config.load_encoder()
    report: dict[str, Any] = {
        "model": encoder.name,
        "scorer": config.scorer,
        "k": config.k,
        "datasets": {},
        "results": {},
    }
    if config.scorer == "late-interaction":
        report["temperature"] = config.temperature
    for dataset in datasets:
        evaluable = dataset.evaluable_queries()
        queries = {qid: dataset.queries[qid] for qid in evaluable}
        report["datasets"][dataset.name] = {
            "queries": len(dataset.queries),
            "targets": len(dataset.corpus),
            "queries_without_positives": dataset.queries_without_positives,
            **{key: dataset.meta[key] for key in ("language", "direction") if key in dataset.meta},
        }
        logger.info("%s: %d queries x %d targets", dataset.name, len(queries), len(dataset.corpus))
        rankers: dict[str, Callable[[], Ranking]] = {
            encoder.name: partial(
                encoder_ranking,
                encoder,
                queries,
                dataset.corpus,
                k=config.k,
                scorer=config.scorer,
                temperature=config.temperature,
                cache_dir=config.cache_dir,
                ray=config.ray,
                block_size=config.block_size,
                **dict(zip(("query_kind", "target_kind"), input_kinds(dataset.meta), strict=True)),
            )
        }
        if config.baselines:
            for name, rank in BASELINES.items():
                rankers[name] = partial(
                    rank, queries, dataset.corpus, k=config.k, block_size=config.block_size
                )
        systems: dict[str, Any] = {}
        for name, ranker in rankers.items():
            if name != encoder.name:
                logger.info("%s: %s", dataset.name, name)
            started = time.perf_counter()
            ranking = ranker() if queries else None  # no query with a positive: nothing to rank
            systems[name] = _summary(dataset, ranking, time.perf_counter() - started)
        report["results"][dataset.name] = systems
    return report


INPUT_KIND_WORDS = (
    ("sentence", "skill_sentence"),
    ("skill", "skill_name"),
    ("occupation", "job_title"),
    ("job title", "job_title"),
    ("project", "brief_string"),
    ("profile", "candidate_profile_string"),
)


def input_kinds(meta: dict[str, Any]) -> tuple[str | None, str | None]:
    """The WorkRB input types of a dataset's queries and targets: ``meta["input_types"]`` (``{query,
    target}``) when given, else read from its ``direction`` (e.g. ``job title -> occupation``: ``job_title``
    both); None where neither says."""
    given = meta.get("input_types") or {}
    sides = [part.strip().lower() for part in str(meta.get("direction", "")).split("->")]
    derived = [None, None]
    if len(sides) == 2:
        for position, text in enumerate(sides):
            derived[position] = next((kind for word, kind in INPUT_KIND_WORDS if text.startswith(word)), None)
    return given.get("query", derived[0]), given.get("target", derived[1])


def run_eval(config: EvalConfig) -> dict[str, Any]:
    """Evaluate as ``config`` says, write the report files when ``config.out`` is set and log the run to
    MLflow when ``config.tracking_uri`` is set (the files then go to a temporary folder when ``out`` is
    unset); return the rounded report (with ``out``, ``markdown`` and ``plots`` naming the files written,
    and ``mlflow_run_id``)."""
    return publish_report(evaluate(config), config, _write_files, "eval.json")


def read_datasets(locations: Sequence[str]) -> list[RankingDataset]:
    """The ranking datasets in the folders ``locations`` (relative paths resolve against the data root);
    their names must be distinct."""
    datasets = [read_dataset(resolve_data_path(location)) for location in locations]
    check_distinct_names(datasets)
    return datasets


def _write_files(report: Mapping[str, Any], out: Path) -> dict[str, Any]:
    """:func:`write_report`'s files, named as :func:`publish_report` takes them."""
    files = write_report(report, out)
    plots = {metric: str(path) for metric, path in files.items() if metric not in ("json", "markdown")}
    return {"out": str(files["json"]), "markdown": str(files["markdown"]), "plots": plots}


def _summary(dataset: RankingDataset, ranking: Ranking | None, seconds: float) -> dict[str, Any]:
    means, evaluated = mean_metrics(ranking.as_dict() if ranking is not None else {}, dataset.qrels)
    return {
        "n_queries": evaluated,
        "queries_without_positives": dataset.queries_without_positives,
        **means,
        "seconds": seconds,
    }
