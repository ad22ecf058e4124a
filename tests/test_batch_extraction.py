"""`workembed run extract`: Ray Data actors extract skills and occupations from job ads with a pinned model;
ads without text are quarantined and rows in = rows out + rows rejected."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workembed.batch_extraction import BatchExtractConfig, run_batch_extract
from workembed.errors import RunFolderError
from workembed.models import resolve_model_path
from workembed.models.extraction_settings import ExtractionSettings, write_extraction_settings

PYTHON_SKILL = "http://data.europa.eu/esco/skill/ccd0a1d9-afda-43d9-b901-96344886e14d"


@pytest.fixture(scope="module")
def calibrated_minilm(tmp_path_factory):
    """A copy of the packaged MiniLM with a calibrated extraction threshold."""
    folder = tmp_path_factory.mktemp("model") / "minilm"
    shutil.copytree(resolve_model_path("minilm"), folder)
    write_extraction_settings(folder, ExtractionSettings(threshold=0.6))
    return folder


def test_batch_extract_writes_spans_and_quarantines(ray_session, calibrated_minilm, tmp_path):
    ads = pa.table(
        {
            "id": ["a1", "a2", "a3"],
            "name": ["Python developer", "", "Data engineer"],
            "text": ["You know Python programming well.\nWe offer a friendly team.", "   ", ""],
        }
    )
    pq.write_table(ads, tmp_path / "ads.parquet")
    config = BatchExtractConfig(
        model=str(calibrated_minilm),
        input=str(tmp_path / "ads.parquet"),
        columns={"ad_id": "id", "title": "name", "description": "text"},
        output=str(tmp_path / "out"),
        run_id="nightly",
        esco="builtin",
        cache_dir=str(tmp_path / "cache"),
        ray={"address": "auto"},
    )
    summary = run_batch_extract(config)
    assert (summary["rows_in"], summary["rows_out"], summary["rows_rejected"]) == (3, 2, 1)
    assert summary["balanced"] and summary["model_version"] == str(calibrated_minilm.resolve())
    assert json.loads((tmp_path / "out/nightly/summary.json").read_text()) == summary

    rows = {row["ad_id"]: row for row in pq.read_table(tmp_path / "out/nightly/extractions").to_pylist()}
    assert set(rows) == {"a1", "a3"}
    first = rows["a1"]
    assert first["model_version"] == str(calibrated_minilm.resolve())
    assert [s["sentence"] for s in first["sentences"]] == [
        "You know Python programming well.",
        "We offer a friendly team.",
    ]
    python = [skill for skill in first["sentences"][0]["skills"] if skill["id"] == PYTHON_SKILL]
    assert python and python[0]["score"] >= 0.6
    assert any(span["text"].startswith("Python") for span in python[0]["spans"])
    assert first["sentences"][1]["skills"] == []
    assert (
        len(first["occupations"]) == 3
        and first["occupations"][0]["score"] >= first["occupations"][1]["score"]
    )
    assert rows["a3"]["sentences"] == [] and len(rows["a3"]["occupations"]) == 3  # title only

    (reject,) = pq.read_table(tmp_path / "out/nightly/rejects").to_pylist()
    assert reject["stage"] == "extract" and "no usable text" in reject["reason"]
    assert json.loads(reject["raw"]) == {"ad_id": "a2", "title": "", "description": "   "}


def test_a_run_folder_that_holds_files_is_refused_before_any_work(calibrated_minilm, tmp_path):
    stale = tmp_path / "out" / "nightly" / "extractions" / "old.parquet"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    config = BatchExtractConfig(
        model=str(calibrated_minilm),
        input=str(tmp_path / "none.parquet"),
        output=str(tmp_path / "out"),
        run_id="nightly",
        esco="builtin",
        cache_dir=str(tmp_path / "cache"),
    )
    with pytest.raises(RunFolderError, match="run folder .*/out/nightly already holds files"):
        run_batch_extract(config)
    assert stale.read_bytes() == b"stale"


@pytest.mark.integration
def test_a_model_without_threshold_is_refused_before_any_work(tmp_path):
    config = BatchExtractConfig(model="minilm", input=str(tmp_path / "none.parquet"), esco="builtin")
    with pytest.raises(ValueError, match="no calibrated extraction threshold"):
        run_batch_extract(config)
