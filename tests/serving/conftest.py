"""Fixtures of the serving tests: model versions registered in a real MLflow server."""

import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from workembed.models.extraction_settings import ExtractionSettings, write_extraction_settings


@dataclass
class Registry:
    """Registers model folders as versions of registered models in the MLflow server at ``url``."""

    url: str

    @property
    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.url)

    def new_name(self, prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:8]}"

    def register(self, name: str, folder: Path, threshold: float | None = None) -> str:
        """Log ``folder`` (plus an ``extraction.json`` with ``threshold`` when given) as run artifact
        ``model`` and register it as the next version of ``name``; returns the version number."""
        client = self.client
        experiment = client.get_experiment_by_name("serving-test")
        experiment_id = experiment.experiment_id if experiment else client.create_experiment("serving-test")
        run = client.create_run(experiment_id)
        client.log_artifacts(run.info.run_id, str(folder), "model")
        if threshold is not None:
            with tempfile.TemporaryDirectory() as extra:
                settings = ExtractionSettings(threshold=threshold, temperature=0.05, among="all")
                client.log_artifact(run.info.run_id, str(write_extraction_settings(extra, settings)), "model")
        client.set_terminated(run.info.run_id)
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            client.create_registered_model(name)
        source = f"{run.info.artifact_uri}/model"
        return client.create_model_version(name, source, run_id=run.info.run_id).version

    def set_alias(self, name: str, alias: str, version: str, gated: bool = True) -> None:
        """Point ``alias`` at ``version``; with ``gated``, first record a ``promoted`` gate decision for the
        alias on the version (as a promotion does), else move the alias past the gate."""
        if gated:
            self.record_decision(name, version, alias, "promoted")
        self.client.set_registered_model_alias(name, alias, version)

    def record_decision(self, name: str, version: str, alias: str, decision: str) -> None:
        """Write the gate decision tag ``workembed.promotion.<alias>`` on ``version``."""
        from workembed.registry import tags

        record = {"decision": decision, "alias": alias, "reasons": [], "table": [], **tags.stamp()}
        self.client.set_model_version_tag(name, version, tags.promotion_tag(alias), tags.dumps(record))


@pytest.fixture(scope="session")
def registry(mlflow_server) -> Registry:
    return Registry(mlflow_server)


@pytest.fixture(scope="session")
def broken_model(tmp_path_factory) -> Path:
    """A folder that is no model (no config.json): registering it gives a version that cannot load."""
    folder = tmp_path_factory.mktemp("broken-model")
    (folder / "README.md").write_text("not a model\n", encoding="utf-8")
    return folder
