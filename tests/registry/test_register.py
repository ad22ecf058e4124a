"""Registration: the logged version downloads as the model folder with its calibrated extraction.json, loads
as a pyfunc that embeds and ranks like the Encoder, and carries exact lineage tags."""

from __future__ import annotations

import hashlib
import json
import shutil
import statistics
import subprocess
from importlib.metadata import version

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from workembed.eval.extraction_benchmark import ExtractionProtocol, evaluate_extraction
from workembed.models import Encoder, resolve_model_path
from workembed.models.extraction_settings import read_extraction_settings
from workembed.registry_commands import register_model
from workembed.retrieval.ranking_dataset import read_dataset

TRAINING = {"run_name": "r-lineage", "tracking": {"experiment": "no-such-experiment"}, "data": {"esco": "x"}}


def sha256_json(value) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def expected_commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else "unknown"


@pytest.fixture
def trained_folder(tiny_bert, tmp_path):
    """The tiny BERT with a workembed.json as the trainer writes it (training config included)."""
    folder = tmp_path / "trained"
    shutil.copytree(tiny_bert, folder)
    info = {"format_version": 1, "pooling": "mean", "normalize": True, "max_length": 64, "training": TRAINING}
    (folder / "workembed.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


def test_folder_registers_with_calibrated_threshold_lineage_and_pyfunc(
    make_config, trained_folder, registry_data, mlflow_server, monkeypatch
):
    config = make_config()
    result = register_model(config, model_dir=trained_folder)
    assert (result["version"], result["uri"]) == ("1", f"models:/{config.name}/1")

    # the threshold is the mean of the per-dataset calibrated thresholds (4 decimals, as reported)
    encoder = Encoder(trained_folder, max_length=128)
    grid = np.linspace(0.0, 1.0, 21)
    thresholds = [
        round(evaluate_extraction(read_dataset(path), ExtractionProtocol(grid=grid), encoder)["threshold"], 4)
        for path in registry_data["calibration"]
    ]
    assert len(set(thresholds)) == 2  # the two datasets disagree: the mean is not either of them
    threshold = statistics.fmean(thresholds)
    assert result["extraction"]["threshold"] == threshold
    assert result["extraction"]["calibrated_on"] == ["extract-a", "extract-b"]

    tags = MlflowClient(mlflow_server).get_model_version(config.name, "1").tags
    assert tags == {
        "workembed.source": str(trained_folder.resolve()),
        "workembed.training_run": "unknown",  # its experiment does not exist on this server
        "workembed.data_fingerprint": sha256_json(TRAINING["data"]),
        "workembed.config_hash": sha256_json(TRAINING),
        "workembed.git_commit": expected_commit(),
        "workembed.extraction_threshold": str(threshold),
    }

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    folder = resolve_model_path(f"models:/{config.name}/1")
    for name in ("config.json", "workembed.json", "tokenizer.json", "extraction.json"):
        assert (folder / name).is_file(), name
    assert read_extraction_settings(folder).threshold == threshold

    texts = ["python developer", "registered nurse", "truck driver"]
    expected = Encoder(trained_folder, max_length=64).embed(texts)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{config.name}/1")
    embedded = pyfunc.predict(pd.DataFrame({"text": texts}))
    assert np.array_equal(np.array(embedded["embedding"].tolist(), dtype=np.float32), expected)

    candidates = ["nurse", "cook", "programmer"]
    ranked = pyfunc.predict(pd.DataFrame({"text": texts}), params={"candidates": candidates, "k": 2})
    scores = expected @ Encoder(trained_folder, max_length=64).embed(candidates).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :2]
    assert ranked["candidates"].tolist() == [[candidates[j] for j in row] for row in order]
    assert np.allclose(np.array(ranked["scores"].tolist()), np.take_along_axis(scores, order, 1), atol=1e-6)

    requirements = (folder.parents[1] / "requirements.txt").read_text().split()
    assert requirements == [f"{p}=={version(p)}" for p in ("torch", "transformers", "numpy", "mlflow")]


def training_run(client: MlflowClient, experiment: str, folder, tags: dict[str, str]) -> str:
    """A finished run holding ``folder`` as its artifact ``model``, tagged as the trainer tags its runs."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(experiment_id, tags=tags)
    client.log_artifacts(run.info.run_id, str(folder), "model")
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_run_registers_with_its_lineage_and_report(make_config, tiny_bert, mlflow_server, tmp_path):
    client = MlflowClient(mlflow_server)
    run_id = training_run(client, "registry-train", tiny_bert, {"data.fingerprint": "edges-0123"})
    report = tmp_path / "eval.json"
    report.write_text('{"map": 0.5}\n', encoding="utf-8")
    config = make_config(calibration={"datasets": []})
    result = register_model(config, run_id=run_id, report=report)
    version = client.get_model_version(config.name, result["version"])
    assert version.run_id == result["run_id"] != run_id  # the registration run, which holds the report
    assert version.tags == {
        "workembed.source": f"runs:/{run_id}/model",
        "workembed.training_run": run_id,
        "workembed.data_fingerprint": "edges-0123",
        "workembed.config_hash": "unknown",  # a plain transformers folder: no workembed.json
        "workembed.git_commit": expected_commit(),
        "workembed.eval_report": f"runs:/{result['run_id']}/report/eval.json",
    }
    assert result["extraction"] is None  # no calibration datasets and no extraction.json in the folder
    fetched = mlflow.artifacts.download_artifacts(
        version.tags["workembed.eval_report"], dst_path=str(tmp_path / "fetched"), tracking_uri=mlflow_server
    )
    assert open(fetched, encoding="utf-8").read() == '{"map": 0.5}\n'


def test_training_run_is_found_by_the_run_name_in_workembed_json(make_config, trained_folder, mlflow_server):
    client = MlflowClient(mlflow_server)
    training = {**TRAINING, "run_name": "r-found", "tracking": {"experiment": "registry-train-named"}}
    info = json.loads((trained_folder / "workembed.json").read_text()) | {"training": training}
    (trained_folder / "workembed.json").write_text(json.dumps(info), encoding="utf-8")
    run_id = training_run(
        client,
        "registry-train-named",
        trained_folder,
        {"workembed.run_name": "r-found", "data.fingerprint": "e9"},
    )
    config = make_config(calibration={"datasets": []})
    tags = register_model(config, model_dir=trained_folder)["tags"]
    assert (tags["workembed.training_run"], tags["workembed.data_fingerprint"]) == (run_id, "e9")
    assert tags["workembed.config_hash"] == sha256_json(training)


def test_a_folder_without_config_json_or_two_sources_are_errors(make_config, tmp_path, tiny_bert):
    config = make_config(calibration={"datasets": []})
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        register_model(config, model_dir=tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        register_model(config, model_dir=tiny_bert, run_id="abc")
    with pytest.raises(FileNotFoundError, match="evaluation report not found"):
        register_model(config, model_dir=tiny_bert, report=tmp_path / "missing.json")
