"""`workembed.runs`: run ids, output roots, the one existing-folder policy (local and on a real S3 server),
``summary.json`` and the summing of per-batch counters."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from workembed.errors import RunFolderError, WorkembedError
from workembed.runs import SUMMARY_FILE, new_run_id, open_run, output_root, sum_counts


def test_new_run_id_is_prefix_and_utc_time():
    before = time.gmtime()
    run_id = new_run_id("ingest")
    match = re.fullmatch(r"ingest-(\d{8}-\d{6})", run_id)
    assert match, run_id
    stamped = time.strptime(match.group(1), "%Y%m%d-%H%M%S")
    assert time.mktime(before) - 1 <= time.mktime(stamped) <= time.mktime(time.gmtime()) + 1


def test_output_root_makes_local_paths_absolute_and_keeps_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert output_root("runs/x/") == str(tmp_path.resolve() / "runs" / "x")
    assert output_root("s3://bucket/prefix/") == "s3://bucket/prefix"
    assert output_root("file:///tmp/runs") == "file:///tmp/runs"


def test_a_missing_run_folder_is_created_under_a_new_id(tmp_path):
    run = open_run(str(tmp_path / "runs"), None, "synthesize")
    assert re.fullmatch(r"synthesize-\d{8}-\d{6}", run.run_id)
    assert run.path == str(tmp_path / "runs" / run.run_id)
    assert Path(run.path).is_dir() and not any(Path(run.path).iterdir())


def test_an_empty_run_folder_is_reused(tmp_path):
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    run = open_run(str(tmp_path / "runs"), "r1", "ingest")
    assert (run.run_id, run.path) == ("r1", str(tmp_path / "runs" / "r1"))
    assert Path(run.path).is_dir()


def test_a_run_folder_with_files_is_refused_unless_overwrite(tmp_path):
    stale = tmp_path / "runs" / "r1" / "edges" / "part-0.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    (tmp_path / "runs" / "r1" / SUMMARY_FILE).write_text("{}")
    folder = tmp_path / "runs" / "r1"
    with pytest.raises(RunFolderError) as refused:
        open_run(str(tmp_path / "runs"), "r1", "ingest")
    assert str(folder) in str(refused.value) and "overwrite=true" in str(refused.value)
    assert isinstance(refused.value, WorkembedError) and isinstance(refused.value, ValueError)
    assert stale.read_bytes() == b"stale"  # refused: nothing touched

    run = open_run(str(tmp_path / "runs"), "r1", "ingest", overwrite=True)
    assert run.path == str(folder) and folder.is_dir() and not any(folder.iterdir())


def test_overwrite_of_a_missing_or_empty_folder_is_harmless(tmp_path):
    assert not any(Path(open_run(str(tmp_path), "new", "x", overwrite=True).path).iterdir())
    assert not any(Path(open_run(str(tmp_path), "new", "x", overwrite=True).path).iterdir())


def test_a_file_in_place_of_the_run_folder_is_refused(tmp_path):
    (tmp_path / "r1").write_text("not a folder")
    with pytest.raises(RunFolderError, match=f"run folder {re.escape(str(tmp_path / 'r1'))} is a file"):
        open_run(str(tmp_path), "r1", "ingest", overwrite=True)


def test_summary_round_trip(tmp_path):
    run = open_run(str(tmp_path), "r1", "extract")
    summary = {"run_id": "r1", "rows_in": 3, "rows_out": 2, "rows_rejected": 1, "stages": [{"in": 3}]}
    location = run.write_summary(summary)
    assert location == str(tmp_path / "r1" / SUMMARY_FILE)
    assert json.loads(Path(location).read_text(encoding="utf-8")) == summary
    assert run.read_summary() == summary
    assert run.write_json("extra.json", {"a": [1, 2]}) == str(tmp_path / "r1" / "extra.json")
    assert run.read_json("extra.json") == {"a": [1, 2]}


def test_file_uri_output(tmp_path):
    run = open_run(f"file://{tmp_path}/runs", "r1", "ingest")
    assert run.path == f"file://{tmp_path}/runs/r1"
    run.write_summary({"ok": True})
    assert json.loads((tmp_path / "runs" / "r1" / SUMMARY_FILE).read_text()) == {"ok": True}


def test_the_policy_on_s3(s3_server):
    import pyarrow.fs as pafs

    bucket = s3_server["bucket"]
    root = f"s3://{bucket}/runs-policy/"
    run = open_run(root, "r1", "ingest")  # missing: created
    assert (run.run_id, run.path) == ("r1", f"s3://{bucket}/runs-policy/r1")
    fs = run.filesystem
    assert isinstance(fs, pafs.S3FileSystem)
    assert fs.get_file_info(f"{bucket}/runs-policy/r1").type == pafs.FileType.Directory
    assert open_run(root, "r1", "ingest").path == run.path  # empty: reused

    summary = {"run_id": "r1", "records": 16, "edges": {"skill-job/esco": 4}}
    assert run.write_summary(summary) == f"s3://{bucket}/runs-policy/r1/{SUMMARY_FILE}"
    assert run.read_summary() == summary
    with fs.open_input_stream(f"{bucket}/runs-policy/r1/{SUMMARY_FILE}") as handle:
        assert json.loads(handle.read()) == summary
    with fs.open_output_stream(f"{bucket}/runs-policy/r1/edges/part-0.parquet") as handle:
        handle.write(b"stale")

    with pytest.raises(RunFolderError, match=f"run folder s3://{bucket}/runs-policy/r1 already holds files"):
        open_run(root, "r1", "ingest")
    assert fs.get_file_info(f"{bucket}/runs-policy/r1/edges/part-0.parquet").type == pafs.FileType.File

    emptied = open_run(root, "r1", "ingest", overwrite=True)
    listing = fs.get_file_info(pafs.FileSelector(f"{bucket}/runs-policy/r1", recursive=True))
    assert emptied.path == run.path and listing == []
    assert open_run(root, None, "synthesize").run_id.startswith("synthesize-")


def test_sum_counts_of_dicts_and_json_strings():
    rows = [
        {"counts": {"records": 3, "ads": 2}, "other": "{}"},
        {"counts": json.dumps({"records": 5, "rejected": 1})},
        {"counts": "{}"},
        {"counts": {"ads": 4, "records": 0}},
    ]
    assert sum_counts(rows, "counts") == {"records": 8, "ads": 6, "rejected": 1}
    assert sum_counts([], "counts") == {}
    with pytest.raises(KeyError):
        sum_counts([{"tasks": "{}"}], "counts")
