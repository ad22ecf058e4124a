"""An ingest job killed (SIGKILL) in the middle of its run and run again with the same run id: the output
holds every input record exactly once, as an ad or as a reject, and nothing of the killed attempt."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
from tests.reliability.conftest import REPO, group_alive, wait_until

from workembed.config import data_root

ADS = 240
BROKEN = b'{"job_id": "broken", "title": "cut short'
RUN = "killed"


def sample(path: Path) -> list[bytes]:
    """``ADS`` real job ads (the Built In set, or built-in sample ads without the shared data), an exact
    copy of the first and one broken record, as JSONL lines; every line's id is distinct."""
    root = data_root()
    if root is not None and (root / "job_ads" / "builtin_ai_en.jsonl").is_file():
        with open(root / "job_ads" / "builtin_ai_en.jsonl", "rb") as handle:
            records = [json.loads(next(handle)) for _ in range(ADS)]
    else:
        from workembed.sample_ads import sample_ads
        from workembed.taxonomy import EscoConfig, load_esco_config

        ads = sample_ads(load_esco_config(EscoConfig(location="builtin")), n_ads=ADS)
        records = [{"job_id": ad["id"], "title": ad["title"], "description": ad["description"]} for ad in ads]
    copy = dict(records[0], job_id="copy-of-first")
    lines = [json.dumps(record).encode() for record in [*records, copy]] + [BROKEN]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def ingest_config(tmp_path: Path, source: Path) -> Path:
    config = {
        "output": str(tmp_path / "runs"),
        "esco": {"location": "builtin"},
        "sources": [
            {
                "name": "ads",
                "paths": [str(source)],
                "format": "jsonl",
                "language": "en",
                "columns": {"ad_id": "job_id", "title": "title", "description": "description"},
            }
        ],
        "ground": {"dense": False, "cache_dir": str(tmp_path / "cache")},
        "graph": {"matching": False},
        "block_rows": 20,  # the stream writes a file per block: output appears early
        "prepare_actors": 1,
        "ray": {"num_cpus": 4},
    }
    path = tmp_path / "ingest.json"
    path.write_text(json.dumps(config))
    return path


def start_ingest(config: Path, log: Path, *settings: str) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.ingest", "-c", str(config), "--set", f"run_id={RUN}", *settings],
            cwd=REPO,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


def test_an_ingest_killed_mid_run_and_run_again_holds_every_record_once(tmp_path):
    source = tmp_path / "ads.jsonl"
    lines = sample(source)
    config = ingest_config(tmp_path, source)
    run = tmp_path / "runs" / RUN
    log = tmp_path / "ingest.log"

    killed = start_ingest(config, log)
    try:
        wait_until(lambda: any((run / "_stream").glob("*.parquet")), 300, "the first streamed output")
    finally:  # the job and the local Ray instance it started, as when its pod or machine goes away
        os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    wait_until(lambda: not group_alive(killed.pid), 30, "the killed job's processes to exit", every_s=0.2)
    left = files(run)
    assert killed.returncode == -signal.SIGKILL
    assert left and "summary.json" not in left

    rerun = start_ingest(config, log, "--set", "overwrite=true")
    try:
        assert rerun.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        try:
            os.killpg(rerun.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    summary = json.loads((run / "summary.json").read_text())
    ads = pq.read_table(run / "job_ads").column("ad_id").to_pylist()
    rejects = pq.read_table(run / "rejects").to_pylist()
    ids = [str(json.loads(line)["job_id"]) if line != BROKEN else "broken" for line in lines]
    seen = Counter(ad.split(":", 1)[1] for ad in ads)
    seen.update(ids[reject["record_index"]] for reject in rejects)  # rejects name their input line
    assert [r["raw"] for r in rejects if ids[r["record_index"]] == "broken"] == [BROKEN]
    expected = Counter(ids)
    assert seen == expected and set(seen.values()) == {1}
    assert summary["records"] == len(lines) == len(ads) + len(rejects)
    assert not (left & files(run)), "files of the killed attempt are left"
