"""The ingest job end to end on a local Ray instance: quarantine, balance, dedupe, grounding, S3."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workembed.config import load_config
from workembed.data.config import IngestConfig
from workembed.data.ingest import format_summary, run_ingest
from workembed.errors import ClusterError, RunFolderError

GOOD = [
    {
        "id": "a1",
        "title": "Database Administrator",
        "body": "<p>We are hiring a database administrator.</p><ul><li>You will maintain PostgreSQL "
        "databases and tune slow SQL queries.</li><li>Experience with Linux servers is required.</li></ul>",
        "date": "2024-05-01",
    },
    {
        "id": "a2",
        "title": "Python developer",
        "body": "Our team builds data pipelines. You write clean Python code and review pull requests "
        "from colleagues every day.",
        "date": "2024-05-02",
    },
    {
        "id": "a3",
        "title": "Network security engineer",
        "body": "You protect our network from cyber attacks.\nYou configure firewalls and monitor intrusion "
        "detection systems around the clock.",
        "date": "not a date",
    },
]
NEAR_COPY = dict(GOOD[1], id="a4", body=GOOD[1]["body"] + " Apply now.")
EXACT_COPY = dict(GOOD[2], id="a5")


def _line(record: dict) -> bytes:
    return json.dumps(record).encode()


@pytest.fixture
def crafted(tmp_path):
    """A JSONL file with good ads, every kind of bad row, duplicates; a CSV; a corrupt Parquet file."""
    lines = [
        _line(GOOD[0]),
        b'{"id": "broken", "title": "x", "body": ',  # broken JSON
        _line({"id": "e1", "title": "", "body": "   ", "date": None}),  # no usable text
        b'{"id": "bad-bytes", "title": "caf\xe9", "body": "' + b"x" * 60 + b'"}',  # invalid UTF-8
        _line({"id": "huge", "title": "big", "body": "word " * 1_000_000}),  # 5 MB description
        _line({"id": "m1", "title": "no description column"}),  # missing column
        _line({"id": "t1", "title": ["a", "list"], "body": "y" * 80}),  # wrong type
        b"[1, 2, 3]",  # not an object
        _line(GOOD[1]),
        _line(GOOD[2]),
        _line(NEAR_COPY),
        _line(EXACT_COPY),
    ]
    jsonl = tmp_path / "ads.jsonl"
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    csv_path = tmp_path / "ads.csv"
    csv_path.write_text(
        "title,text\n"
        '"Data analyst","You analyse sales data with SQL and build dashboards in Tableau for managers."\n'
        '"only two","fields","but three here"\n'
    )
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not really parquet")
    good_parquet = tmp_path / "good.parquet"
    pq.write_table(
        pa.table(
            {
                "ref": ["p1"],
                "name": ["Nurse"],
                "text": ["You care for patients on a busy hospital ward with a friendly team."],
            }
        ),
        good_parquet,
    )
    return {"jsonl": jsonl, "csv": csv_path, "parquet": [corrupt, good_parquet], "lines": lines}


def _config(tmp_path, crafted, **overrides) -> IngestConfig:
    raw = {
        "output": str(tmp_path / "runs"),
        "run_id": "test",
        "esco": {"location": "builtin"},
        "sources": [
            {
                "name": "crafted",
                "paths": [str(crafted["jsonl"])],
                "format": "jsonl",
                "language": "en",
                "columns": {"ad_id": "id", "title": "title", "description": "body", "posted_at": "date"},
            },
            {
                "name": "sheet",
                "paths": [str(crafted["csv"])],
                "format": "csv",
                "language": "en",
                "columns": {"title": "title", "description": "text"},
            },
            {
                "name": "pq",
                "paths": [str(p) for p in crafted["parquet"]],
                "format": "parquet",
                "language": "en",
                "columns": {"ad_id": "ref", "title": "name", "description": "text"},
            },
        ],
        "ground": {"cache_dir": str(tmp_path / "cache")},
        "graph": {"matching": False},
        "prepare_actors": 1,  # the shared test instance declares 4 logical CPUs
    }
    for key, value in overrides.items():
        raw[key] = value
    return IngestConfig.model_validate(raw)


def _read(path):
    return pq.read_table(path).to_pylist()


def test_bad_rows_are_quarantined_and_counts_balance(ray_session, tmp_path, crafted, caplog):
    caplog.set_level(logging.INFO, logger="workembed")
    summary = run_ingest(_config(tmp_path, crafted))
    table = [r.getMessage() for r in caplog.records if r.name == "workembed.data.ingest"][-1]
    assert table == format_summary(summary) and table.startswith("stage")  # the balance, logged at the end
    out = tmp_path / "runs" / "test"
    # 12 JSONL records + 2 CSV records + 1 corrupt Parquet file + 1 Parquet row
    assert summary["records"] == 16
    stages = {row["stage"]: row for row in summary["stages"]}
    for row in summary["stages"]:
        assert row["in"] == row["out"] + row["rejected"]
    assert stages["read"]["reasons"] == {"corrupt file": 1}
    assert stages["parse"]["reasons"] == {"invalid_csv": 1, "invalid_json": 2, "invalid_utf8": 1}
    assert stages["validate"]["reasons"] == {"no_text": 1, "schema": 2, "too_large": 1}
    assert stages["dedupe"]["reasons"] == {"duplicate_exact": 1, "duplicate_near": 1}
    assert stages["dedupe"]["out"] == summary["ads"] == 5

    ads = {row["ad_id"]: row for row in _read(out / "job_ads")}
    assert set(ads) == {
        "crafted:a1",
        "crafted:a2",
        "crafted:a3",
        "pq:p1",
        *[k for k in ads if k.startswith("sheet:")],
    }
    assert ads["crafted:a1"]["description"].splitlines()[0] == "We are hiring a database administrator."
    assert ads["crafted:a1"]["posted_at"].startswith("2024-05-01")
    assert ads["crafted:a3"]["posted_at"] is None

    rejects = _read(out / "rejects")
    assert len(rejects) == sum(row["rejected"] for row in summary["stages"]) == 11
    by_reason = {row["reason"].split(":")[0]: row for row in rejects}
    assert by_reason["invalid_utf8"]["raw"] == crafted["lines"][3]  # untouched bytes
    assert by_reason["too_large"]["raw"] == crafted["lines"][4]
    near = [row for row in rejects if row["reason"].startswith("duplicate_near")]
    assert near[0]["reason"] == "duplicate_near: similar to crafted:a2"
    exact = [row for row in rejects if row["reason"].startswith("duplicate_exact")]
    assert exact[0]["reason"] == "duplicate_exact: same text as crafted:a3"
    assert {row["stage"] for row in rejects} == {"read", "parse", "validate", "dedupe"}
    assert json.loads((out / "summary.json").read_text())["records"] == 16


def test_sentences_grounding_and_edges(ray_session, tmp_path, crafted):
    summary = run_ingest(_config(tmp_path, crafted))
    out = tmp_path / "runs" / "test"
    sentences = _read(out / "sentences")
    assert summary["sentences"]["sentences"] == len(sentences)
    texts = {row["text"]: row for row in sentences}
    postgres = texts["You will maintain PostgreSQL databases and tune slow SQL queries."]
    postgres_uri = "http://data.europa.eu/esco/skill/a8d07b5a-c1a1-42c6-9d53-db9c7a2ca996"
    assert postgres_uri in postgres["skill_uris"]
    assert postgres["skill_methods"][postgres["skill_uris"].index(postgres_uri)] == "lexical"
    edges = _read(out / "edges")
    sv = [e for e in edges if e["task"] == "skill-sentence"]
    assert len(sv) == sum(len(row["skill_uris"]) for row in sentences)
    assert all(e["origin"] == "vacancy" for e in sv)
    esco_sj = [e for e in edges if e["task"] == "skill-job" and e["origin"] == "esco"]
    assert len(esco_sj) == 969  # every relation of the built-in sample
    counts = _read(out / "skill_edge_counts")
    assert sum(row["count()"] for row in counts if row["task"] == "skill-sentence") == len(sv)


def test_language_without_dense_support_is_skipped(ray_session, tmp_path, crafted):
    config = _config(tmp_path, crafted)
    config.sources[0].language = "de"
    summary = run_ingest(config)
    assert summary["grounding"]["ads_skipped_language"] == 3  # a1, a2, a3 of the JSONL source
    sentences = _read(tmp_path / "runs" / "test" / "sentences")
    german = [row for row in sentences if row["ad_id"].startswith("crafted:")]
    assert german and all(row["skill_uris"] == [] for row in german)
    edges = _read(tmp_path / "runs" / "test" / "edges")
    assert not [e for e in edges if e["task"] == "skill-sentence" and e["left_id"].startswith("crafted:")]


def test_reads_and_writes_s3(ray_session, tmp_path, crafted, s3_server):
    import s3fs

    fs = s3fs.S3FileSystem()
    bucket = s3_server["bucket"]
    fs.put(str(crafted["jsonl"]), f"{bucket}/input/ads.jsonl")
    config = _config(tmp_path, crafted, output=f"s3://{bucket}/runs")
    config.sources = config.sources[:1]
    config.sources[0].paths = [f"s3://{bucket}/input/"]
    summary = run_ingest(config)
    assert summary["records"] == 12
    assert summary["output"] == f"s3://{bucket}/runs/test"
    written = fs.ls(f"{bucket}/runs/test")
    assert {p.rsplit("/", 1)[1] for p in written} >= {
        "job_ads",
        "sentences",
        "edges",
        "rejects",
        "summary.json",
    }
    with fs.open(f"{bucket}/runs/test/summary.json") as handle:
        assert json.load(handle)["ads"] == 3


def test_config_file_parses_every_shipped_source():
    config = load_config(IngestConfig, "jobs/configs/ingest.yaml")
    assert {s.name for s in config.sources} == {
        "nhs_uk",
        "france_travail",
        "de_jobs_site1",
        "de_jobs_site3",
        "de_jobs_site4",
        "builtin_ai",
        "pl_kzis",
    }
    gpu = load_config(IngestConfig, "jobs/configs/ingest.yaml", profile="gpu")
    assert gpu.ground.num_gpus == 1 and gpu.ground.encoder.device == "cuda"


def test_a_run_folder_that_holds_files_is_refused_unless_overwrite(ray_session, tmp_path, crafted):
    """The common run-folder policy (:mod:`workembed.runs`): refused before any work; overwrite empties it."""
    stale = tmp_path / "runs" / "test" / "_stream" / "old.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    with pytest.raises(RunFolderError, match=r"run folder .*/runs/test already holds files"):
        run_ingest(_config(tmp_path, crafted))
    assert stale.read_bytes() == b"stale"

    config = _config(tmp_path, crafted, overwrite=True)
    config.sources = config.sources[:1]
    summary = run_ingest(config)
    assert summary["records"] == 12 and not stale.exists()
    assert json.loads((tmp_path / "runs" / "test" / "summary.json").read_text()) == summary


def test_too_few_cluster_cpus_is_a_clear_error(tmp_path, crafted):
    from workembed.data.ingest import check_cluster_cpus, required_cpus

    config = _config(tmp_path, crafted)
    assert required_cpus(config) == 3.25  # preparer 1 + dedupe 0.25 + grounder 1 + reader 1
    check_cluster_cpus(config, 4)
    assert required_cpus(IngestConfig()) == 4.25  # the defaults: 2 preparers, within a local instance's 6
    check_cluster_cpus(IngestConfig(), IngestConfig().ray.num_cpus)
    config.ground.num_cpus = 2
    config.ground.concurrency = 2
    with pytest.raises(ClusterError, match="has 4 logical CPUs; this ingest needs at least 6.25"):
        check_cluster_cpus(config, 4)
