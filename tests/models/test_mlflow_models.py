"""Models held by MLflow load as encoders: a run artifact, a registered version, an alias that moves."""

import numpy as np
import pytest

from workembed.models import Encoder


@pytest.fixture
def registered(mlflow_server, tiny_bert, tmp_path, monkeypatch):
    """A run that logged two model folders (the tiny BERT, and a copy with other weights) as registered
    versions 1 and 2 of 'tiny', alias 'champion' on version 1."""
    import torch
    from mlflow import MlflowClient
    from transformers import BertModel

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("WORKEMBED_MODEL_CACHE", str(tmp_path / "cache"))
    other = tmp_path / "other"
    torch.manual_seed(1)
    BertModel(BertModel.from_pretrained(tiny_bert).config).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tiny_bert / name).exists():
            (other / name).write_bytes((tiny_bert / name).read_bytes())
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("models-test") or client.create_experiment("models-test")
    experiment_id = experiment if isinstance(experiment, str) else experiment.experiment_id
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(tiny_bert), "model")
    client.log_artifacts(run.info.run_id, str(other), "other")
    client.set_terminated(run.info.run_id)
    name = f"tiny-{run.info.run_id[:8]}"
    client.create_registered_model(name)
    for path in ("model", "other"):
        client.create_model_version(name, f"{run.info.artifact_uri}/{path}", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "champion", "1")
    return client, name, run.info.run_id, other


def test_mlflow_uris_resolve_to_the_logged_folders(registered, tiny_bert):
    client, name, run_id, other = registered
    texts = ["python developer", "registered nurse"]
    local, second = Encoder(tiny_bert).embed(texts), Encoder(other).embed(texts)
    assert not np.allclose(local, second)
    assert np.allclose(Encoder(f"runs:/{run_id}/model").embed(texts), local, atol=1e-6)
    assert np.allclose(Encoder(f"models:/{name}/2").embed(texts), second, atol=1e-6)
    assert np.allclose(Encoder(f"models:/{name}@champion").embed(texts), local, atol=1e-6)
    client.set_registered_model_alias(name, "champion", "2")  # promotion: the alias moves
    assert np.allclose(Encoder(f"models:/{name}@champion").embed(texts), second, atol=1e-6)


def test_unknown_alias_and_missing_server_are_clear_errors(registered, monkeypatch):
    _, name, _, _ = registered
    with pytest.raises(FileNotFoundError, match="holds alias 'nobody'"):
        Encoder(f"models:/{name}@nobody")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(FileNotFoundError, match="set MLFLOW_TRACKING_URI"):
        Encoder(f"models:/{name}@champion")


def test_explicit_tracking_uri_needs_no_environment(registered, tmp_path, monkeypatch):
    from workembed.models.mlflow_models import download_model

    _, name, _, other = registered
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # no local ./mlruns store to fall back on
    folder = download_model(f"models:/{name}/2", tracking_uri=registered[0].tracking_uri)
    assert (folder / "model.safetensors").read_bytes() == (other / "model.safetensors").read_bytes()
