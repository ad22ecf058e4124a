"""The ConTeXT-match skill-extraction benchmark: the algorithm of :mod:`workembed.retrieval.skill_extraction`
scored with :mod:`workembed.eval.extraction_metrics` on skill-extraction ranking datasets (queries =
sentences, corpus = the skill label space, qrels = gold skills; see :mod:`workembed.eval.converters`).

Per dataset, only the queries with a gold skill are used, split in two parts by a seed:

- calibration part: the ``round(f · n)`` queries (at least 1, at most ``n − 1``) with the smallest
  SHA-256 of ``"<seed>\\0<query id>"``; the threshold is the grid value with the best micro F1 on it
  (lowest among ties), and its threshold table (micro P/R/F1 per grid value) is reported for plotting;
- test part: the other queries, on which every metric is reported: the threshold's micro and macro
  P/R/F1, F1@K of the top K skills by match score (macro and micro), the number of predictions, the
  redundancy filter's share of removed predictions ``1 − Σ|F(P_s)| / Σ|P_s|``, the mean pairwise cosine of
  a sentence's predicted skills before and after the filter, and P/R/F1 after the filter.

Both parts keep file order. The split depends only on the seed and the ids (not on the file order);
adding queries can move others between the parts, since the part sizes follow ``n``.

Skills are embedded pooled (cached via :func:`~workembed.retrieval.embedding.target_embeddings`), sentences
as tokens without special tokens (:func:`~workembed.retrieval.embedding.query_token_vectors`), a block of
sentences at a time; a sentence's ``[n_tokens, n_skills]`` cosines serve its match scores and its filter
and are dropped before the next sentence. :func:`run_extraction_eval` rounds the report (4 decimals) and
writes it as JSON, a Markdown table beside it and one PNG per dataset (``<stem>-<dataset>-threshold.png``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from workembed.config import resolve_data_path
from workembed.errors import ConfigError, DatasetError, NotFoundError
from workembed.eval.extraction_benchmark_plots import plot_threshold_curve
from workembed.eval.extraction_metrics import (
    DEFAULT_GRID,
    calibrate_threshold,
    f1_at_k,
    mean_pairwise_similarity,
    precision_recall_f1,
)
from workembed.eval.report import DIGITS, format_cell, publish_report, write_json_and_markdown
from workembed.eval.runner import EncoderEvalConfig, read_datasets
from workembed.retrieval.embedding import query_token_vectors, target_embeddings
from workembed.retrieval.ranking_dataset import RankingDataset
from workembed.retrieval.scoring import l2_normalize
from workembed.retrieval.skill_extraction import Among, rank_skills, redundancy_filter, token_attention_scores

if TYPE_CHECKING:
    from workembed.models import Encoder

logger = logging.getLogger(__name__)

SENTENCE_BLOCK = 256
"""Sentences whose token vectors are computed (and held) at a time."""
PRF_KEYS = ("precision", "recall", "f1", "macro_precision", "macro_recall", "macro_f1")
TokenSource = Callable[[Sequence[str]], list[np.ndarray]]


class ExtractionEvalConfig(EncoderEvalConfig):
    """Settings of ``workembed eval extraction``."""

    datasets: list[str] = Field(
        min_length=1,
        description="Skill-extraction ranking dataset folders (sentences → skill label space, qrels = gold "
        "skills); relative paths resolve against the data root.",
    )
    calibration_fraction: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="Share of each dataset's labelled queries that calibrate the threshold: the round(f·n) "
        "(at least 1, at most n−1) with the smallest SHA-256 of '<seed>\\0<query id>'; the rest are the "
        "test part, on which the metrics are reported.",
    )
    seed: int = Field(0, description="Seed of the calibration/test split.")
    grid: int = Field(
        100,
        ge=1,
        description="Threshold steps over [0, 1]: grid + 1 evenly spaced values (100: steps of 0.01).",
    )
    temperature: float = Field(0.05, gt=0, description="Softmax temperature over a sentence's tokens.")
    k: int = Field(5, ge=1, description="K of F1@K: the K best-scoring skills of each test sentence.")
    among: Among = Field(
        "all",
        description="Redundancy filter: a predicted skill survives if it is some token's best skill among "
        "'all' skills or among the sentence's 'candidates' (its predictions).",
    )
    skill_filter: str | None = Field(
        None,
        description="Also report the test part with a non-skill sentence filter on (a dropped sentence "
        "predicts no skill): the folder of its skill_filter.json (`workembed run filter`), 'model' for the "
        "model folder's own; null: no filter.",
    )
    out: str | None = Field(
        None,
        description="Write the JSON report here, a Markdown table beside it (same stem, .md) and one PNG "
        "per dataset (<stem>-<dataset>-threshold.png).",
    )

    def thresholds(self) -> np.ndarray:
        """The threshold grid: ``grid + 1`` evenly spaced values over [0, 1]."""
        return np.linspace(0.0, 1.0, self.grid + 1)

    def protocol(self) -> ExtractionProtocol:
        """How :func:`evaluate_extraction` evaluates each dataset under these settings."""
        settings = self.model_dump(include={"calibration_fraction", "seed", "temperature", "k", "among"})
        return ExtractionProtocol(grid=self.thresholds(), cache_dir=self.cache_dir, **settings)


@dataclass(frozen=True, eq=False)  # grid may be an array: no field-wise ==
class ExtractionProtocol:
    """How :func:`evaluate_extraction` evaluates one dataset: the split (``calibration_fraction``, ``seed``),
    the threshold ``grid`` (any ascending values; :meth:`ExtractionEvalConfig.protocol` gives the
    config's), the softmax ``temperature``, the K of F1@K, the redundancy filter's ``among`` and the
    target-embedding ``cache_dir`` (None: no cache); see :class:`ExtractionEvalConfig`."""

    calibration_fraction: float = 0.5
    seed: int = 0
    grid: Sequence[float] | np.ndarray = field(default_factory=lambda: DEFAULT_GRID)
    temperature: float = 0.05
    k: int = 5
    among: Among = "all"
    cache_dir: str | Path | None = None

    def __post_init__(self) -> None:  # calibration_fraction: checked by calibration_split
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {self.temperature}")
        if self.k < 1:
            raise ConfigError(f"k must be at least 1, got {self.k}")
        if self.among not in ("all", "candidates"):
            raise ConfigError(f"among must be 'all' or 'candidates', got '{self.among}'")


# ------------------------------------------------------------------------------------------ split


def calibration_split(
    query_ids: Sequence[str], fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(calibration ids, test ids): the ``round(fraction · n)`` ids (at least 1, at most ``n − 1``) with
    the smallest SHA-256 of ``"<seed>\\0<id>"`` calibrate; each part keeps the input order."""
    if not 0 < fraction < 1:
        raise ConfigError(f"calibration_fraction must be in (0, 1), got {fraction}")
    ids = list(query_ids)
    if len(ids) < 2:
        raise DatasetError(f"a calibration/test split needs at least 2 queries, got {len(ids)}")
    size = min(max(round(fraction * len(ids)), 1), len(ids) - 1)
    ranked = sorted(ids, key=lambda qid: (hashlib.sha256(f"{seed}\0{qid}".encode()).digest(), qid))
    chosen = set(ranked[:size])
    return [qid for qid in ids if qid in chosen], [qid for qid in ids if qid not in chosen]


# ------------------------------------------------------------------------------------- evaluation


def evaluate_extraction(
    dataset: RankingDataset,
    protocol: ExtractionProtocol | None = None,
    encoder: Encoder | None = None,
    *,
    token_vectors: Mapping[str, np.ndarray] | None = None,
    skill_vectors: np.ndarray | None = None,
    keep: Callable[[Sequence[str]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Calibrate the threshold on one dataset's calibration part and report on its test part (unrounded),
    as ``protocol`` says (default: :class:`ExtractionProtocol`'s defaults).

    Sentence tokens come from ``token_vectors`` (``{query id: [n_tokens, dim]}``) when given, else from
    ``encoder``; skill vectors from ``skill_vectors`` (rows in corpus order) when given, else from
    ``encoder`` (cached in ``protocol.cache_dir``). With ``keep`` (sentence texts → bool per sentence, a
    non-skill sentence filter), the test part is also reported with the dropped sentences predicting nothing
    (``with_skill_filter``). Raises DatasetError for a dataset with fewer than 2 labelled queries.
    """
    if protocol is None:
        protocol = ExtractionProtocol()
    temperature, k = protocol.temperature, protocol.k
    labelled = dataset.evaluable_queries()
    if len(labelled) < 2:
        raise DatasetError(
            f"dataset '{dataset.name}' needs at least 2 queries with a gold skill (a positive qrel) for a "
            f"calibration and a test part; it has {len(labelled)}"
        )
    calibration, test = calibration_split(labelled, protocol.calibration_fraction, protocol.seed)
    skill_ids = list(dataset.corpus)
    targets = _skill_vectors(dataset, encoder, skill_vectors, protocol.cache_dir)
    tokens_of = _token_source(dataset, labelled, encoder, token_vectors, targets.shape[1])
    gold = {qid: set(dataset.positives(qid)) for qid in labelled}
    logger.info("%s: %d calibration + %d test sentences", dataset.name, len(calibration), len(test))

    calibration_scores = np.empty((len(calibration), len(skill_ids)), dtype=np.float32)
    for row, cosines in enumerate(_sentence_cosines(calibration, tokens_of, targets)):
        calibration_scores[row] = token_attention_scores(cosines, temperature)
    threshold, table = calibrate_threshold(
        calibration_scores, [gold[q] for q in calibration], protocol.grid, skill_ids
    )
    logger.info("%s: threshold %.4f", dataset.name, threshold)

    predicted, kept, ranked = [], [], []
    for cosines in _sentence_cosines(test, tokens_of, targets):
        scores = token_attention_scores(cosines, temperature)
        candidates = np.flatnonzero(scores >= np.float64(threshold))  # compared in float64, as calibrated
        predicted.append({skill_ids[j] for j in candidates})
        kept.append({skill_ids[j] for j in redundancy_filter(cosines, candidates, protocol.among)})
        ranked.extend(rank_skills(scores[None, :], k, skill_ids))
    test_gold = [gold[q] for q in test]
    n_predicted, n_kept = sum(map(len, predicted)), sum(map(len, kept))
    screened = {}
    if keep is not None:
        passes = np.asarray(keep([dataset.queries[q] for q in test]), dtype=bool)
        screened = {
            "with_skill_filter": {
                **_prf([p if ok else set() for p, ok in zip(predicted, passes, strict=True)], test_gold),
                "dropped_sentences": int((~passes).sum()),
            }
        }
    return {
        "queries": len(dataset.queries),
        "skills": len(skill_ids),
        "queries_without_positives": dataset.queries_without_positives,
        "calibration_queries": len(calibration),
        "test_queries": len(test),
        "threshold": threshold,
        "calibration_f1": float(table["f1"].max()),
        "test": {
            **_prf(predicted, test_gold),
            f"macro_f1@{k}": f1_at_k(ranked, test_gold, k, "macro"),
            f"micro_f1@{k}": f1_at_k(ranked, test_gold, k, "micro"),
        },
        "filtered": _prf(kept, test_gold),
        "redundancy": 1.0 - n_kept / n_predicted if n_predicted else 0.0,
        "mean_pairwise_similarity": {
            "before": mean_pairwise_similarity(predicted, targets, skill_ids),
            "after": mean_pairwise_similarity(kept, targets, skill_ids),
        },
        "threshold_table": {key: values.tolist() for key, values in table.items()},
        **screened,
    }


def run_extraction_eval(config: ExtractionEvalConfig) -> dict[str, Any]:
    """Evaluate every dataset as ``config`` says, write the report files when ``config.out`` is set and log
    the run to MLflow when ``config.tracking_uri`` is set; return the rounded report (with ``out``,
    ``markdown`` and ``plots`` naming the files written, and ``mlflow_run_id``)."""
    datasets = read_datasets(config.datasets)
    encoder = config.load_encoder()
    keep = sentence_filter(encoder, config.skill_filter) if config.skill_filter else None
    protocol = config.protocol()
    report: dict[str, Any] = {
        "model": encoder.name,
        **config.model_dump(include={"temperature", "k", "among", "calibration_fraction", "seed", "grid"}),
        "results": {},
    }
    for dataset in datasets:
        report["results"][dataset.name] = evaluate_extraction(dataset, protocol, encoder, keep=keep)
    return publish_report(report, config, write_extraction_report, "extraction.json")


def sentence_filter(encoder: Encoder, location: str) -> Callable[[Sequence[str]], np.ndarray]:
    """The non-skill sentence filter in ``location`` (``model``: the model folder) as ``texts → keep``."""
    from workembed.models.skill_filter import read_skill_filter

    folder = encoder.path if location == "model" else Path(resolve_data_path(location))
    found = read_skill_filter(folder)
    if found is None:
        raise NotFoundError(
            f"no skill_filter.json in {folder}: fit one with `workembed run filter` (model {encoder.name})"
        )
    return lambda texts: found.keep(encoder.embed(list(texts), "skill_sentence"))


# ---------------------------------------------------------------------------------------- reports


def write_extraction_report(report: Mapping[str, Any], out: str | Path) -> dict[str, Any]:
    """Write ``out`` (rounded JSON), ``out`` with suffix ``.md`` (Markdown tables) and per dataset
    ``<stem>-<dataset>-threshold.png`` beside it; return ``{"out", "markdown", "plots": {dataset: path}}``."""
    json_path, md_path = write_json_and_markdown(report, out, extraction_markdown(report))
    plots = {}
    for name, result in report["results"].items():
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
        path = json_path.with_name(f"{json_path.stem}-{slug}-threshold.png")
        title = f"{name}: calibration part ({result['calibration_queries']} sentences)"
        plots[name] = str(plot_threshold_curve(result["threshold_table"], result["threshold"], path, title))
    return {"out": str(json_path), "markdown": str(md_path), "plots": plots}


def extraction_markdown(report: Mapping[str, Any], digits: int = DIGITS) -> str:
    """Two tables, one row per dataset: the thresholded predictions on the test part, then the
    redundancy filter's effect; a third with the non-skill sentence filter on, when it was."""
    k = report.get("k", 5)
    main = ["dataset", "calibration", "test", "threshold", "P", "R", "F1", "macro P", "macro R", "macro F1"]
    main += [f"F1@{k} macro", f"F1@{k} micro", "predictions"]
    side = ["dataset", "redundancy", "P filtered", "R filtered", "F1 filtered", "predictions filtered"]
    side += ["similarity before", "similarity after"]
    lines = [
        f"Model `{report.get('model')}`, temperature {report.get('temperature')}, filter among "
        f"`{report.get('among')}`; metrics on the test part, threshold calibrated on the other part.",
        "",
        *_table_head(main),
    ]
    for name, result in report["results"].items():
        test = result["test"]
        cells = [result["threshold"], *(test[key] for key in PRF_KEYS)]
        cells += [test[f"macro_f1@{k}"], test[f"micro_f1@{k}"]]
        counts = [str(result["calibration_queries"]), str(result["test_queries"])]
        lines.append(
            _row([name, *counts, *(format_cell(v, digits) for v in cells), str(test["predictions"])])
        )
    lines += ["", *_table_head(side)]
    for name, result in report["results"].items():
        filtered, similarity = result["filtered"], result["mean_pairwise_similarity"]
        cells = [result["redundancy"], *(filtered[key] for key in ("precision", "recall", "f1"))]
        tail = [similarity["before"], similarity["after"]]
        row = [name, *(format_cell(v, digits) for v in cells), str(filtered["predictions"])]
        lines.append(_row(row + [format_cell(v, digits) for v in tail]))
    screened = {
        name: r["with_skill_filter"] for name, r in report["results"].items() if "with_skill_filter" in r
    }
    if screened:
        lines += [
            "",
            *_table_head(["dataset", "sentences dropped", "P", "R", "F1", "macro F1", "predictions"]),
        ]
        for name, result in screened.items():
            cells = [format_cell(result[key], digits) for key in ("precision", "recall", "f1", "macro_f1")]
            lines.append(_row([name, str(result["dropped_sentences"]), *cells, str(result["predictions"])]))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- helpers


def _skill_vectors(
    dataset: RankingDataset,
    encoder: Encoder | None,
    given: np.ndarray | None,
    cache_dir: str | Path | None,
) -> np.ndarray:
    if given is None:
        if encoder is None:
            raise ValueError("give an encoder or skill_vectors to embed the skill space")
        return target_embeddings(encoder, dataset.corpus, cache_dir, kind="skill_name")
    if given.ndim != 2 or len(given) != len(dataset.corpus):
        raise ValueError(
            f"skill_vectors of shape {given.shape} for the {len(dataset.corpus)} skills of '{dataset.name}'"
        )
    return l2_normalize(given)


def _token_source(
    dataset: RankingDataset,
    query_ids: Sequence[str],
    encoder: Encoder | None,
    given: Mapping[str, np.ndarray] | None,
    dim: int,
) -> TokenSource:
    """A function from query ids to their token vectors: from ``given`` (checked here) or the encoder."""
    if given is None:
        if encoder is None:
            raise ValueError("give an encoder or token_vectors to embed the sentences")
        return lambda ids: query_token_vectors(encoder, [dataset.queries[qid] for qid in ids])
    for qid in query_ids:
        vectors = given.get(qid)
        if vectors is None:
            raise ValueError(f"token_vectors lack query '{qid}' of dataset '{dataset.name}'")
        if vectors.ndim != 2 or len(vectors) == 0 or vectors.shape[1] != dim:
            raise ValueError(
                f"token_vectors of query '{qid}' have shape {vectors.shape}, need [n ≥ 1, {dim}]"
            )
    return lambda ids: [given[qid] for qid in ids]


def _sentence_cosines(
    query_ids: Sequence[str], tokens_of: TokenSource, targets: np.ndarray
) -> Iterator[np.ndarray]:
    """Per query, in order, its ``[n_tokens, n_skills]`` token × skill cosines (one sentence at a time)."""
    for start in range(0, len(query_ids), SENTENCE_BLOCK):
        for tokens in tokens_of(query_ids[start : start + SENTENCE_BLOCK]):
            yield l2_normalize(tokens) @ targets.T


def _prf(predicted: Sequence[set[str]], gold: Sequence[set[str]]) -> dict[str, Any]:
    values = precision_recall_f1(predicted, gold)
    return {
        **{key: values[key] for key in PRF_KEYS},
        "predictions": sum(map(len, predicted)),
        "predicted_per_sentence": values["predicted_per_sentence"],
    }


def _table_head(header: Sequence[str]) -> list[str]:
    return [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"
