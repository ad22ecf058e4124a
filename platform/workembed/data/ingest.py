"""The ingest job: job ads → ``job_ads``, ``sentences``, ``edges``, ``rejects``, ``skill_edge_counts``.

One streaming Ray Data pass reads, parses, validates, detects languages, dedupes, segments and grounds the
ads, and writes every input record exactly once — as an ad or as a rejected row — to ``<run>/_stream``.
Cheap streaming passes over that Parquet then write the contract datasets. Nothing is collected to the driver
except counts.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from workembed.config import resolve_data_path
from workembed.data.config import DedupeConfig, IngestConfig, SourceConfig
from workembed.data.dedupe import AdDeduplicator, MinHashSigner, SentenceDeduplicator
from workembed.data.graph import EDGE_SCHEMA, VacancyEdges, esco_edges_table
from workembed.data.ground import Grounder, embed_space, occupation_space, skill_space
from workembed.data.read import RawRecordDatasource
from workembed.data.records import STREAM_SCHEMA, RecordParser, is_reject, to_table
from workembed.data.storage import filesystem_for, join, list_files
from workembed.data.text import split_sentences
from workembed.errors import ClusterError, ConfigError
from workembed.runs import open_run, sum_counts
from workembed.taxonomy import Taxonomy, load_esco_config

logger = logging.getLogger(__name__)

STAGE_ORDER = ("read", "parse", "validate", "dedupe")
# The dedupe indexes live in one actor doing cheap look-ups: a fraction of a CPU, so that it never takes the
# slot the readers, the preparers and the grounding actors need (a full CPU starves the readers of a 4-CPU
# local instance and the stream stalls).
INDEX_ACTOR_CPUS = 0.25
JOB_AD_COLUMNS = [
    "ad_id",
    "title",
    "description",
    "language",
    "source",
    "posted_at",
    "meta",
    "occupation_uri",
    "occupation_score",
    "grounding",
]
REJECT_COLUMNS = ["stage", "reason", "raw", "source", "path", "record_index"]
SENTENCE_SCHEMA = pa.schema(
    [
        ("ad_id", pa.string()),
        ("sent_idx", pa.int32()),
        ("text", pa.string()),
        ("language", pa.string()),
        ("skill_uris", pa.list_(pa.string())),
        ("skill_scores", pa.list_(pa.float32())),
        ("skill_methods", pa.list_(pa.string())),
    ]
)


# ------------------------------------------------------------------------------------ streaming pass


def read_source(source: SourceConfig, config: IngestConfig):
    """A Ray dataset of raw records for one source: one row per record, bad records and unreadable files
    (Parquet row groups included) reported as rows (:mod:`workembed.data.read`)."""
    import ray

    paths = [resolve_data_path(p) for p in source.paths]
    fs = filesystem_for(paths[0], config.storage)
    datasource = RawRecordDatasource(
        list_files(paths, fs),
        source=source.name,
        fmt=source.format,
        csv_delimiter=source.csv_delimiter,
        max_line_bytes=source.max_line_bytes,
        filesystem=fs,
    )
    return ray.data.read_datasource(datasource)


class AdPreparer:
    """Parse and validate, MinHash-sign and segment each record: the per-record work, in one parallel stage.

    Fusing the three steps converts each block between Arrow and Python once, not three times; the lingua
    detector is built once per actor.
    """

    def __init__(self, config: IngestConfig):
        self._parser = RecordParser(config.sources, config.validation, config.segment.detect_languages)
        self._signer = MinHashSigner(config.dedupe)
        self._min, self._max = config.segment.min_chars, config.segment.max_chars

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table(self.prepare(batch.to_pylist()))

    def prepare(self, raw_rows: list[dict]) -> list[dict]:
        rows = [self._parser.parse(row) for row in raw_rows]
        self._signer.sign(rows)
        for row in rows:
            if not is_reject(row):
                row["sentences"] = split_sentences(row["description"], self._min, self._max)
                row["n_segmented"] = len(row["sentences"])
                row["n_sentence_duplicates"] = 0
        return rows


class Deduplicator:
    """Quarantines duplicate ads, then drops sentences seen before: the stream's one stateful stage."""

    def __init__(self, config: DedupeConfig):
        self._ads = AdDeduplicator(config)
        self._sentences = SentenceDeduplicator() if config.sentences else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        return to_table(self.dedupe(batch.to_pylist()))

    def dedupe(self, rows: list[dict]) -> list[dict]:
        rows = [self._ads.check(row) for row in rows]
        if self._sentences is not None:
            self._sentences.dedupe(rows)
        return rows


def raw_stream(config: IngestConfig):
    """The raw records of every configured source, cut into blocks of ``block_rows``; lazy."""
    if not config.sources:
        raise ConfigError("ingest: no sources configured (sources: [...])")
    datasets = [read_source(source, config) for source in config.sources]
    ds = datasets[0].union(*datasets[1:]) if len(datasets) > 1 else datasets[0]
    # Streaming (no shuffle): a large file read as one block would go to a single preparer. Strict, so that
    # Ray does not fuse reading, cutting and preparing into one task per file.
    return ds.repartition(target_num_rows_per_block=config.block_rows, strict=True)


def clean_stream(config: IngestConfig):
    """Read → parse/validate, sign, segment → dedupe ads and sentences; lazy (runs when consumed)."""
    from ray.data import ActorPoolStrategy

    ds = raw_stream(config).map_batches(
        AdPreparer,
        fn_constructor_kwargs={"config": config},
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=config.prepare_actors),
    )
    return ds.map_batches(
        Deduplicator,
        fn_constructor_kwargs={"config": config.dedupe},
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=1),
        num_cpus=INDEX_ACTOR_CPUS,
    )


def ground_stream(ds, config: IngestConfig, taxonomy: Taxonomy):
    """Adds ESCO grounding to a stream of segmented ads (label embeddings are computed or read once here)."""
    from ray.data import ActorPoolStrategy

    skills, occupations = skill_space(taxonomy), occupation_space(taxonomy)
    if config.ground.dense:
        embed_space(skills, config.ground)
        embed_space(occupations, config.ground)
    skill_labels = [
        (label, s.uri) for s in taxonomy.skills.values() for label in (s.preferred_label, *s.alt_labels)
    ]
    # Small blocks keep the stream moving: a grounding task over thousands of ads would emit nothing for
    # longer than Ray Data's no-progress timeout on CPU.
    ds = ds.repartition(target_num_rows_per_block=config.ground.block_ads)
    ds = ds.map_batches(
        Grounder,
        fn_constructor_kwargs={
            "config": config.ground,
            "skill_labels": skill_labels,
            "skills": skills,
            "occupations": occupations,
        },
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=config.ground.concurrency),
        batch_size=config.ground.block_ads,
        num_cpus=config.ground.num_cpus,
        num_gpus=config.ground.num_gpus or None,
    )
    return ds


# ------------------------------------------------------------------------------------ derived passes


def _ads_only(batch: pa.Table) -> pa.Table:
    return batch.filter(pc.is_null(batch["reject_stage"]))


def _job_ads(batch: pa.Table) -> pa.Table:
    ads = _ads_only(batch)
    return ads.select(JOB_AD_COLUMNS).append_column("n_sentences", pc.list_value_length(ads["sentences"]))


def _rejects(batch: pa.Table) -> pa.Table:
    rejected = batch.filter(pc.is_valid(batch["reject_stage"]))
    return rejected.select(
        ["reject_stage", "reject_reason", "raw", "source", "path", "record_index"]
    ).rename_columns(REJECT_COLUMNS)


def _sentences(batch: pa.Table) -> pa.Table:
    rows = []
    for ad in _ads_only(batch).to_pylist():
        matches = ad["sentence_skills"] or [[] for _ in ad["sentences"] or []]
        for index, (text, found) in enumerate(zip(ad["sentences"] or [], matches, strict=True)):
            rows.append(
                {
                    "ad_id": ad["ad_id"],
                    "sent_idx": index,
                    "text": text,
                    "language": ad["language"],
                    "skill_uris": [m["uri"] for m in found],
                    "skill_scores": [m["score"] for m in found],
                    "skill_methods": [m["method"] for m in found],
                }
            )
    return pa.Table.from_pylist(rows, schema=SENTENCE_SCHEMA)


def _counts(batch: pa.Table) -> pa.Table:
    """Per-batch counters (summed on the driver)."""
    ads = _ads_only(batch)
    rejected = batch.filter(pc.is_valid(batch["reject_stage"]))
    reasons: dict[str, int] = {}
    for stage, reason in zip(
        rejected["reject_stage"].to_pylist(), rejected["reject_reason"].to_pylist(), strict=True
    ):
        key = f"{stage}\x1f{reason.split(':', 1)[0]}"
        reasons[key] = reasons.get(key, 0) + 1
    grounding = ads["grounding"].to_pylist()
    languages: dict[str, int] = {}
    for language in ads["language"].to_pylist():
        languages[language] = languages.get(language, 0) + 1
    lengths = pc.list_value_length(ads["sentences"]).to_pylist()
    sentence_matches = ads["sentence_skills"].to_pylist()
    counts = {
        "records": batch.num_rows,
        "ads": ads.num_rows,
        "sentences_segmented": int(pc.sum(ads["n_segmented"]).as_py() or 0),
        "sentences_duplicate": int(pc.sum(ads["n_sentence_duplicates"]).as_py() or 0),
        "sentences": int(sum(n or 0 for n in lengths)),
        "ads_without_sentences": sum(1 for n in lengths if not n),
        "ads_grounded": grounding.count("grounded"),
        "ads_skipped_language": grounding.count("skipped_language"),
        "sentences_skipped_language": sum(
            n or 0 for n, g in zip(lengths, grounding, strict=True) if g == "skipped_language"
        ),
        "sentences_with_skill": sum(1 for per_ad in sentence_matches if per_ad for m in per_ad if m),
        "titles_grounded": int(pc.sum(pc.is_valid(ads["occupation_uri"])).as_py() or 0),
    }
    row = {"counts": json.dumps(counts), "reasons": json.dumps(reasons), "languages": json.dumps(languages)}
    return pa.Table.from_pylist([row])


def stage_table(records: int, reasons: dict[str, int]) -> list[dict[str, Any]]:
    """Rows in = rows out + rows rejected, per stage of the ad stream."""
    table, remaining = [], records
    for stage in STAGE_ORDER:
        rejected = {key.split("\x1f")[1]: n for key, n in reasons.items() if key.split("\x1f")[0] == stage}
        total = sum(rejected.values())
        table.append(
            {
                "stage": stage,
                "in": remaining,
                "out": remaining - total,
                "rejected": total,
                "reasons": dict(sorted(rejected.items())),
            }
        )
        remaining -= total
    return table


def required_cpus(config: IngestConfig) -> float:
    """Logical CPUs the stream holds at once: the preparers, the dedupe actor, the grounding actors and one
    reader. With fewer, the actors take every slot, the readers never start and the stream stalls."""
    grounding = config.ground.concurrency * config.ground.num_cpus
    return config.prepare_actors + INDEX_ACTOR_CPUS + grounding + 1


def check_cluster_cpus(config: IngestConfig, available: float) -> None:
    needed = required_cpus(config)
    if available < needed:
        raise ClusterError(
            f"the Ray cluster has {available:g} logical CPUs; this ingest needs at least {needed:g} "
            f"({config.prepare_actors} preparer(s) + {INDEX_ACTOR_CPUS:g} dedupe + "
            f"{config.ground.concurrency} grounding actor(s) × {config.ground.num_cpus:g} + 1 reader): "
            "raise ray.num_cpus (a local instance may declare more "
            "CPUs than cores) or lower prepare_actors / ground.num_cpus / ground.concurrency"
        )


def run_ingest(config: IngestConfig) -> dict[str, Any]:
    """Run the job (``workembed run ingest``); returns (and writes to ``<run>/summary.json``) the summary,
    whose per-stage balance it logs as a table at the end."""
    import ray

    from workembed.data.matching import build_matching_edges

    config.ray.connect()
    check_cluster_cpus(config, ray.cluster_resources().get("CPU", 0))
    run = open_run(config.output, config.run_id, "ingest", overwrite=config.overwrite, storage=config.storage)
    run_id, out, fs = run.run_id, run.path, run.filesystem
    started = time.monotonic()
    taxonomy = load_esco_config(config.esco)
    logger.info("ingest run %s: %d source(s) → %s", run_id, len(config.sources), out)

    ground_stream(clean_stream(config), config, taxonomy).write_parquet(join(out, "_stream"), filesystem=fs)
    streamed = ray.data.read_parquet(join(out, "_stream"), filesystem=fs, schema=STREAM_SCHEMA)
    streamed.map_batches(_job_ads, batch_format="pyarrow").write_parquet(join(out, "job_ads"), filesystem=fs)
    streamed.map_batches(_sentences, batch_format="pyarrow").write_parquet(
        join(out, "sentences"), filesystem=fs
    )
    streamed.map_batches(_rejects, batch_format="pyarrow").write_parquet(join(out, "rejects"), filesystem=fs)
    counts = streamed.map_batches(_counts, batch_format="pyarrow").take_all()
    totals, reasons, languages = (sum_counts(counts, key) for key in ("counts", "reasons", "languages"))

    skill_labels = {s.uri: s.preferred_label for s in taxonomy.skills.values()}
    occupation_labels = {o.uri: o.preferred_label for o in taxonomy.occupations.values()}
    edge_parts = [
        streamed.map_batches(VacancyEdges(skill_labels, occupation_labels), batch_format="pyarrow"),
        ray.data.from_arrow(esco_edges_table(taxonomy, config.graph)),
    ]
    matching_summary: dict[str, Any] = {}
    if config.graph.matching:
        matching_edges, matching_rejects, matching_summary = build_matching_edges(
            config.matching, resolve_data_path(config.matching.directory)
        )
        edge_parts.append(
            ray.data.from_pandas(matching_edges).map_batches(
                lambda b: b.cast(EDGE_SCHEMA), batch_format="pyarrow"
            )
        )
        if len(matching_rejects):
            ray.data.from_pandas(matching_rejects).write_parquet(join(out, "rejects_matching"), filesystem=fs)
    edges = edge_parts[0].union(*edge_parts[1:])
    edges.write_parquet(join(out, "edges"), filesystem=fs)

    written = ray.data.read_parquet(join(out, "edges"), filesystem=fs)
    edge_counts = written.groupby(["task", "origin"]).count().take_all()
    per_skill = (
        written.map_batches(_skill_rows, batch_format="pyarrow")
        .groupby(["skill_uri", "task", "origin"])
        .count()
    )
    per_skill.write_parquet(join(out, "skill_edge_counts"), filesystem=fs)

    summary = {
        "run_id": run_id,
        "output": out,
        "seconds": round(time.monotonic() - started, 1),
        "esco": taxonomy.source,
        "records": totals.get("records", 0),
        "stages": stage_table(totals.get("records", 0), reasons),
        "ads": totals.get("ads", 0),
        "languages": dict(sorted(languages.items())),
        "sentences": {
            k: totals.get(k, 0)
            for k in (
                "sentences_segmented",
                "sentences_duplicate",
                "sentences",
                "sentences_with_skill",
                "sentences_skipped_language",
            )
        },
        "grounding": {
            k: totals.get(k, 0)
            for k in ("ads_grounded", "ads_skipped_language", "titles_grounded", "ads_without_sentences")
        },
        "esco_relations_dangling": len(taxonomy.dangling_relations()),
        "edges": {
            f"{r['task']}/{r['origin']}": r["count()"]
            for r in sorted(edge_counts, key=lambda r: (r["task"], r["origin"]))
        },
        "matching": matching_summary,
    }
    run.write_summary(summary)
    logger.info("%s", format_summary(summary))
    return summary


def _skill_rows(batch: pa.Table) -> pa.Table:
    """ESCO-skill targets of edges, for per-skill edge counts (the long tail feeds synthetic generation)."""
    mask = pc.starts_with(batch["right_id"], "http://data.europa.eu/esco/skill/")
    chosen = batch.filter(mask)
    return pa.table({"skill_uri": chosen["right_id"], "task": chosen["task"], "origin": chosen["origin"]})


def format_summary(summary: dict[str, Any]) -> str:
    """The per-stage balance as a fixed-width table."""
    lines = [f"{'stage':<10}{'in':>10}{'out':>10}{'rejected':>10}  reasons"]
    for row in summary["stages"]:
        reasons = ", ".join(f"{k}={v}" for k, v in row["reasons"].items())
        lines.append(f"{row['stage']:<10}{row['in']:>10}{row['out']:>10}{row['rejected']:>10}  {reasons}")
    sentences = summary["sentences"]
    lines.append(
        f"sentences: {sentences['sentences_segmented']} segmented, "
        f"{sentences['sentences_duplicate']} duplicate, "
        f"{sentences['sentences']} kept, {sentences['sentences_with_skill']} with a skill, "
        f"{sentences['sentences_skipped_language']} skipped (language)"
    )
    lines.append("edges: " + ", ".join(f"{k}={v}" for k, v in summary["edges"].items()))
    return "\n".join(lines)
