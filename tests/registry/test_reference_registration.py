"""The reference recipe's register step on the real MLflow server: the model is registered with a calibrated
threshold, promoted through the gate, recorded once, and the record is what ``make demo`` serves from."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from mlflow import MlflowClient

from workembed.demo import reference_champion
from workembed.models import resolve_model_path
from workembed.reference import EXTRACTION_SETS, REGISTRY_FILE, ReferenceConfig, register


def test_the_reference_model_is_registered_promoted_and_found_by_the_demo(
    mlflow_server, registry_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))  # the gate's target cache (~/.cache) stays in the test
    tasks = tmp_path / "eval-tasks"
    for name, folder in zip(EXTRACTION_SETS, registry_data["calibration"], strict=True):
        shutil.copytree(folder, tasks / "benchmarks" / name)
    for folder in registry_data["gate"]:
        shutil.copytree(folder, tasks / "gate" / Path(folder).name)
    out = tmp_path / "reports"
    out.mkdir()
    (out / "model.json").write_text(json.dumps({"results": {}}))
    name = f"ref-{uuid.uuid4().hex[:8]}"
    config = ReferenceConfig(
        tracking_uri=mlflow_server,
        registered_model=name,
        tasks=str(tasks),
        out=str(out),
        gate_sets=[f"gate/{Path(folder).name}" for folder in registry_data["gate"]],
    )
    record = register(config, resolve_model_path("minilm"), tasks, out)

    # minilm against the zero-shot minilm: equal on every gated metric, so the gate passes
    assert (record["decision"], record["holder"], record["version"]) == ("promoted", "minilm", "1")
    assert {row["verdict"] for row in record["gate"]} == {"ok"} and len(record["gate"]) == 4
    assert all(row["diff"] == 0 for row in record["gate"])
    client = MlflowClient(mlflow_server)
    version = client.get_model_version_by_alias(name, "champion")
    assert version.version == "1"
    assert float(version.tags["workembed.extraction_threshold"]) == record["threshold"]
    assert json.loads((out / REGISTRY_FILE).read_text()) == record

    assert register(config, Path("/nonexistent"), tasks, out) == record  # recorded: not redone
    assert len(client.search_model_versions(f"name = '{name}'")) == 1

    assert reference_champion(out / REGISTRY_FILE) == record
    assert reference_champion(tmp_path / "absent.json") is None
    refused = tmp_path / "refused.json"
    refused.write_text(json.dumps(record | {"decision": "refused"}))
    assert reference_champion(refused) is None
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(record | {"alias": "never-set"}))
    assert reference_champion(stale) is None
