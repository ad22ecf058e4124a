"""Project → profile matching evaluation: rank every profile for every project, report the Malt metrics.

Each system ranks all profiles for each project (project text → profile text) and keeps the top
``max(ks)``; :func:`~workembed.eval.matching_metrics.matching_metrics` scores the rankings against the
labelled pairs. Systems: the encoder (named by the model; cosine of pooled, L2-normalised embeddings, queries
scored in blocks against all profiles, see :func:`~workembed.retrieval.ranking.encoder_ranking`) and, with
``baselines``, ``bm25``, ``tfidf`` (:mod:`workembed.eval.baselines`) and ``random``
(:func:`~workembed.eval.matching_metrics.random_rankings`).

The report holds ``model``, ``ks``, ``dataset`` (``projects``, ``profiles``, ``positives``, ``negatives``,
``projects_with_positive``) and ``results``: per system the metrics of ``matching_metrics`` and the
ranking time in ``seconds``. :func:`evaluate_matching` returns unrounded values; :func:`run_matching_eval`
reads the matching data (labels derived by :func:`~workembed.retrieval.matching_dataset.matching_dataset`),
rounds the values (4 decimals) and writes the JSON and Markdown report.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, PositiveInt, field_validator, model_validator

from workembed.data.matching import MatchingConfig
from workembed.errors import DatasetError
from workembed.eval.baselines import BASELINES
from workembed.eval.matching_metrics import matching_metrics, random_rankings
from workembed.eval.report import DIGITS, format_cell, publish_report, write_json_and_markdown
from workembed.eval.runner import EncoderEvalConfig
from workembed.retrieval.matching_dataset import Interaction, Item, matching_dataset, matching_folder
from workembed.retrieval.ranking import encoder_ranking

if TYPE_CHECKING:
    from workembed.models import Encoder
    from workembed.models.document_model import DocumentModel

logger = logging.getLogger(__name__)

RANDOM = "random"
Rankings = dict[str, list[str]]


class MatchingEvalConfig(EncoderEvalConfig):
    """Settings of ``workembed eval matching``."""

    model: str | None = Field(
        "minilm",
        description="'minilm' (packaged all-MiniLM-L6-v2), a model directory, an MLflow model URI, or null "
        "(baselines only).",
    )
    data: str = Field(
        "matching",
        description="The matching folder (upwork_projects.csv, resumes.csv) or a data root holding it as "
        "`matching.directory`; relative paths resolve against the data root.",
    )
    matching: MatchingConfig = Field(
        default_factory=MatchingConfig,
        description="The rules that derive the labelled pairs (the graph stage's `matching` section).",
    )
    ks: list[PositiveInt] = Field(
        [10, 100], min_length=1, description="Cut-offs K of every metric; systems rank the top max(ks)."
    )
    held_out: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Evaluate only the projects a section-head training run held apart with this share "
        "(`data.matching.held_out`) and `held_out_seed`; null: every project.",
    )
    held_out_seed: int = Field(0, description="`data.matching.split_seed` of that training run.")
    baselines: bool = Field(False, description="Also rank with BM25, character n-gram TF-IDF and at random.")
    seed: int = Field(0, description="Seed of the random baseline.")
    block_size: int = Field(1024, ge=1, description="Projects scored against all profiles at a time.")

    @field_validator("ks")
    @classmethod
    def _distinct_ks(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"cut-offs must be distinct, got {value}")
        return value

    @model_validator(mode="after")
    def _something_to_rank(self) -> MatchingEvalConfig:
        if self.model is None and not self.baselines:
            raise ValueError("nothing to evaluate: give a model or set baselines")
        return self


def evaluate_matching(
    projects: Sequence[Item],
    profiles: Sequence[Item],
    interactions: Sequence[Interaction],
    config: MatchingEvalConfig,
    encoder: Encoder | DocumentModel | None = None,
) -> dict[str, Any]:
    """Rank ``profiles`` for each of ``projects`` with ``config.model`` (a text encoder on the texts, or a
    section document model on the project and profile sections; ``encoder``, already loaded, stands in for
    it) and, with ``config.baselines``, BM25, TF-IDF and at random; the matching metrics of each system at
    each ``K`` of ``config.ks``, unrounded."""
    queries, corpus = _texts(projects, "project"), _texts(profiles, "profile")
    _check_interactions(interactions, queries, corpus)
    if encoder is None and config.model is not None:
        encoder = load_matching_encoder(config)
    ks, block_size = config.ks, config.block_size
    k = max(ks)
    rankers: dict[str, Callable[[], Rankings]] = {}
    if encoder is not None and is_document_model(encoder):
        rankers[encoder.name] = lambda: document_rankings(encoder, projects, profiles, k, block_size)
    elif encoder is not None:
        rankers[encoder.name] = lambda: encoder_ranking(
            encoder,
            queries,
            corpus,
            k=k,
            cache_dir=config.cache_dir,
            block_size=block_size,
            query_kind="brief_string",
            target_kind="candidate_profile_string",
        ).as_dict()
    if config.baselines:
        for name, rank in BASELINES.items():
            rankers[name] = lambda rank=rank: rank(queries, corpus, k=k, block_size=block_size).as_dict()
        rankers[RANDOM] = lambda: random_rankings(list(queries), list(corpus), k=k, seed=config.seed)
    labels = [edge.label for edge in interactions]
    report: dict[str, Any] = {
        "model": encoder.name if encoder is not None else None,
        "ks": list(ks),
        "dataset": {
            "projects": len(queries),
            "profiles": len(corpus),
            "positives": labels.count(1),
            "negatives": labels.count(-1),
            "projects_with_positive": len({edge.project_id for edge in interactions if edge.label == 1}),
        },
        "results": {},
    }
    logger.info("%d projects x %d profiles, top %d", len(queries), len(corpus), k)
    for name, ranker in rankers.items():
        logger.info("ranking with %s", name)
        started = time.perf_counter()
        rankings = ranker()
        seconds = time.perf_counter() - started
        values = matching_metrics(projects, profiles, interactions, rankings, ks=ks)
        report["results"][name] = {**values, "seconds": seconds}
    return report


def run_matching_eval(config: MatchingEvalConfig) -> dict[str, Any]:
    """Evaluate as ``config`` says, write the report files when ``config.out`` is set and log the run to
    MLflow when ``config.tracking_uri`` is set; return the rounded report (with ``data`` naming the matching
    folder, ``out`` and ``markdown`` the files written, and ``mlflow_run_id``)."""
    folder = matching_folder(config.data, config.matching.directory)
    logger.info("deriving the labelled pairs from %s", folder)
    projects, profiles, interactions = matching_dataset(
        folder, config.matching.model_copy(update={"directory": "."})
    )
    if config.held_out is not None:
        from workembed.data.matching import held_out_projects

        kept = held_out_projects([p.id for p in projects], config.held_out, config.held_out_seed)
        projects = [p for p in projects if p.id in kept]
        interactions = [edge for edge in interactions if edge.project_id in kept]
        logger.info(
            "%d held-out projects (share %s, seed %s)", len(projects), config.held_out, config.held_out_seed
        )
    report = {"data": str(folder), **evaluate_matching(projects, profiles, interactions, config)}
    return publish_report(report, config, _write_files, "matching.json")


# ------------------------------------------------------------------------------------------- report


def matching_markdown(report: dict[str, Any], digits: int = DIGITS) -> str:
    """One row per system, one column per metric and cut-off."""
    sizes, results = report["dataset"], report["results"]
    columns = [name for name in next(iter(results.values()), {}) if "@" in name]
    lines = [
        f"Project → profile matching: {sizes['projects']} projects ({sizes['projects_with_positive']} with a "
        f"positive), {sizes['profiles']} profiles, {sizes['positives']} positive and {sizes['negatives']} "
        "negative pairs; " + (f"model `{report['model']}`." if report["model"] else "baselines only."),
        "",
        "| " + " | ".join(["system", *columns]) + " |",
        "| " + " | ".join(["---"] + ["---:"] * len(columns)) + " |",
    ]
    for system, values in results.items():
        lines.append(
            "| " + " | ".join([system, *(format_cell(values.get(name), digits) for name in columns)]) + " |"
        )
    return "\n".join(lines) + "\n"


def write_matching_report(report: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``out`` (rounded JSON) and ``out`` with suffix ``.md`` (Markdown table); return both paths."""
    return write_json_and_markdown(report, out, matching_markdown(report))


def _write_files(report: dict[str, Any], out: Path) -> dict[str, Any]:
    """:func:`write_matching_report`'s files, named as :func:`~workembed.eval.report.publish_report` takes
    them."""
    json_path, md_path = write_matching_report(report, out)
    return {"out": str(json_path), "markdown": str(md_path)}


# ------------------------------------------------------------------------------------------ helpers


def is_document_model(model: object) -> bool:
    from workembed.models.document_model import DocumentModel

    return isinstance(model, DocumentModel)


def load_matching_encoder(config: MatchingEvalConfig) -> Encoder | DocumentModel:
    """The model of ``config``: a section document model (two towers over project and profile sections)
    when its folder says so, else a text encoder."""
    from workembed.models.document_model import DocumentModel
    from workembed.models.folder import read_model_info, resolve_model_path

    path = resolve_model_path(config.model)
    if read_model_info(path).get("pooling") == "section":
        model = DocumentModel.load(path)
        model.name = str(config.model)
        return model
    return config.load_encoder()


def document_rankings(
    model: DocumentModel, projects: Sequence[Item], profiles: Sequence[Item], k: int, block_size: int
) -> Rankings:
    """The top ``k`` profiles of each project by cosine of the section model's document embeddings."""
    from workembed.models.document_model import profile_document, project_document
    from workembed.retrieval.scoring import dense_top_k

    queries = model.embed([project_document(item) for item in projects])
    targets = model.embed([profile_document(item) for item in profiles])
    indices, _ = dense_top_k(queries, targets, k, block_size)
    return {item.id: [profiles[j].id for j in row] for item, row in zip(projects, indices, strict=True)}


def _texts(items: Sequence[Item], kind: str) -> dict[str, str]:
    """``{id: text}``; an empty set or a repeated id is an error."""
    if not items:
        raise DatasetError(f"no {kind}s to evaluate: the {kind} set is empty")
    texts = {item.id: item.text for item in items}
    if len(texts) != len(items):
        repeated = sorted(key for key, n in Counter(item.id for item in items).items() if n > 1)
        raise DatasetError(f"{kind} ids must be unique; repeated: {', '.join(repeated[:5])}")
    return texts


def _check_interactions(
    interactions: Sequence[Interaction], projects: dict[str, str], profiles: dict[str, str]
) -> None:
    for edge in interactions:
        if edge.label not in (1, -1):
            raise DatasetError(f"interaction ({edge.project_id}, {edge.profile_id}): label must be +1 or -1")
        if edge.project_id not in projects or edge.profile_id not in profiles:
            raise DatasetError(
                f"interaction ({edge.project_id}, {edge.profile_id}) names a project or profile that is not "
                "in the evaluated sets"
            )
