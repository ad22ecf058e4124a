"""The gate's comparison and table on hand-written scores, and the registry config's validation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from workembed.config import ConfigError, load_config, project_root
from workembed.registry import RegistryConfig
from workembed.registry.gate import compare, markdown
from workembed.registry.lineage import canonical_hash, config_hash

HOLDER = {"jobs": {"map": 0.5, "mrr": 0.8}, "skills": {"map": 0.25, "mrr": 0.25}}
CANDIDATE = {"jobs": {"map": 0.495, "mrr": 0.7}, "skills": {"map": 0.5, "mrr": 0.24}}


def test_a_drop_beyond_the_tolerance_regresses_and_one_within_it_does_not():
    rows = compare(HOLDER, CANDIDATE, ["map", "mrr"], tolerance=0.0075)
    assert [(r["dataset"], r["metric"], r["verdict"]) for r in rows] == [
        ("jobs", "map", "ok"),  # −0.005
        ("jobs", "mrr", "regressed"),  # −0.1
        ("skills", "map", "ok"),  # +0.25
        ("skills", "mrr", "regressed"),  # −0.01
    ]
    assert [r["diff"] for r in rows] == pytest.approx([-0.005, -0.1, 0.25, -0.01])
    assert markdown(rows).splitlines() == [
        "| dataset | metric | holder | candidate | diff | verdict |",
        "| --- | --- | ---: | ---: | ---: | --- |",
        "| jobs | map | 0.5000 | 0.4950 | -0.0050 | ok |",
        "| jobs | mrr | 0.8000 | 0.7000 | -0.1000 | regressed |",
        "| skills | map | 0.2500 | 0.5000 | +0.2500 | ok |",
        "| skills | mrr | 0.2500 | 0.2400 | -0.0100 | regressed |",
    ]
    assert all(r["verdict"] == "ok" for r in compare(HOLDER, HOLDER, ["map", "mrr"], tolerance=0.0))


def test_config_needs_a_tracking_server_and_known_metrics(monkeypatch):
    with pytest.raises(ConfigError, match="tracking_uri: .*set MLFLOW_TRACKING_URI or tracking_uri"):
        load_config(RegistryConfig)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    config = load_config(RegistryConfig, overrides=["gate.tolerance=0.01"])
    assert (config.tracking_uri, config.name, config.gate.tolerance) == (
        "http://127.0.0.1:5000",
        "workembed",
        0.01,
    )
    assert config.gate.metrics == ["map", "mrr"]
    with pytest.raises(ConfigError, match=r"gate.metrics \(from --set\): .*unknown metric\(s\) f1"):
        load_config(RegistryConfig, overrides=["gate.metrics=[map, f1]"])


def test_the_job_config_loads_with_its_gpu_profile(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    config = load_config(RegistryConfig, project_root() / "jobs/configs/registry.yaml", profile="gpu")
    assert (config.gate.tolerance, config.gate.device, config.calibration.max_length) == (0.005, "cuda", 128)
    assert [Path(path).name for path in config.gate.datasets] == [
        "job-skill",
        "skill-job",
        "skill-normalization",
        "job-normalization",
    ]


def test_config_hash_is_the_canonical_json_hash_of_the_training_section():
    training = {"seed": 1, "data": {"esco": "x"}}
    assert config_hash({"pooling": "mean", "training": training}) == canonical_hash(
        {"data": {"esco": "x"}, "seed": 1}
    )
    assert config_hash({"pooling": "mean"}) == canonical_hash({"pooling": "mean"})
    assert config_hash({}) == "unknown"
    assert (
        canonical_hash({"b": 1, "a": [1, 2]}) == "sha256:" + hashlib.sha256(b'{"a":[1,2],"b":1}').hexdigest()
    )
