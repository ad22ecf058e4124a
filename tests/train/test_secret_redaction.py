"""S3 keys set in a training config reach the filesystem and nothing else: no MLflow parameter, tag or
artifact, no file of the model folder or of the checkpoints, no summary, no model card holds them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.train.test_trainer import make_config
from workembed.data.storage import filesystem_for, strip_scheme
from workembed.model_card import CardInputs, model_card
from workembed.reference import _mlflow_run, training_record
from workembed.train.trainer import run_train

pytestmark = pytest.mark.usefixtures("ray_session")

SECRET = "SECRET-VALUE-123"
KEY_ID = "KEY-ID-SECRET-456"
NEEDLES = (SECRET.encode(), KEY_ID.encode())


def leaks(name: str, data: bytes | str) -> list[str]:
    data = data.encode() if isinstance(data, str) else data
    return [f"{name} holds {needle.decode()}" for needle in NEEDLES if needle in data]


def local_leaks(root: Path) -> list[str]:
    found = [f"{root}: no files"] if not any(p.is_file() for p in root.rglob("*")) else []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        found += leaks(str(path), path.read_bytes())
    return found


def bucket_leaks(location: str) -> list[str]:
    fs = filesystem_for(location)
    files = [
        info.path
        for info in fs.get_file_info(pafs.FileSelector(strip_scheme(location), recursive=True))
        if info.type == pafs.FileType.File
    ]
    found = [] if files else [f"{location}: no files"]
    for path in files:
        with fs.open_input_stream(path) as handle:
            found += leaks(f"s3://{path}", handle.read())
    return found


def test_configured_s3_keys_appear_in_no_output_of_a_training_run(
    tmp_path, tiny_bert, s3_server, mlflow_server
):
    checkpoints = f"s3://{s3_server['bucket']}/secret-redaction"
    config = make_config(
        tmp_path,
        tiny_bert,
        "secret-redaction",
        checkpoint={"storage_path": checkpoints, "every_steps": 1, "max_failures": 0},
        tracking={"tracking_uri": mlflow_server, "experiment": "secret-redaction"},
        storage={"endpoint_url": s3_server["endpoint"], "access_key_id": KEY_ID, "secret_access_key": SECRET},
    )
    assert config.storage.secret_access_key.get_secret_value() == SECRET
    summary = run_train(config)
    assert summary["state"]["step"] == 2 and summary["checkpoint"]

    found = leaks("summary", json.dumps(summary, default=str))
    model = Path(summary["model"])
    assert (model / "workembed.json").is_file()
    info = json.loads((model / "workembed.json").read_text())
    assert info["training"]["storage"]["secret_access_key"] is None
    assert info["training"]["storage"]["endpoint_url"] == s3_server["endpoint"]
    found += local_leaks(tmp_path)  # the model folder (and anything else the run wrote locally)
    found += bucket_leaks(checkpoints)  # every checkpoint, Ray Train's own files included

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["steps"] == "2"
    assert run.data.params["storage.endpoint_url"] == s3_server["endpoint"]
    found += leaks("MLflow params", json.dumps(run.data.params))
    found += leaks("MLflow tags", json.dumps(run.data.tags))
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "artifacts")))
    assert (downloaded / "model" / "workembed.json").is_file()
    found += local_leaks(downloaded)

    # the model card's training record, found from the model folder as the reference recipe finds it
    found_run = _mlflow_run(config, model)
    assert found_run is not None and found_run.info.run_id == run.info.run_id
    record = training_record(config, model, found_run)
    card = model_card(
        CardInputs(
            name="secret-redaction",
            model=str(model),
            zero_shot="minilm",
            evaluation={},
            zero_shot_evaluation={},
            training=record,
        )
    )
    assert '"secret_access_key": null' in card
    found += leaks("model card", card)
    assert found == []
