"""The register and promote pipeline stages: a training run found by its name, the registered version
promoted; promote needs an explicit version."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from tests.registry.test_register import training_run
from workembed.errors import ConfigError
from workembed.models import resolve_model_path
from workembed.registry.jobs import PromoteStageConfig, RegisterStageConfig
from workembed.registry_commands import run_promote, run_register


def test_register_by_run_name_then_promote_the_registered_version(make_config, mlflow_server):
    client = MlflowClient(mlflow_server)
    base = make_config().model_dump()
    older = training_run(client, "stage-train", resolve_model_path("minilm"), {"workembed.run_name": "p-7"})
    newest = training_run(client, "stage-train", resolve_model_path("minilm"), {"workembed.run_name": "p-7"})
    assert newest != older
    register = RegisterStageConfig.model_validate(
        base | {"run_name": "p-7", "training_experiment": "stage-train", "calibration": {"datasets": []}}
    )
    registered = run_register(register)
    assert registered["tags"]["workembed.training_run"] == newest  # the latest run of that name
    assert registered["tags"]["workembed.source"] == f"runs:/{newest}/model"

    promote = PromoteStageConfig.model_validate(base | {"version": registered["version"], "force": True})
    result = run_promote(promote)
    assert (result["version"], result["alias"]) == (registered["version"], "champion")
    assert client.get_registered_model(base["name"]).aliases == {"champion": registered["version"]}


def test_promote_stage_needs_a_version_number(make_config):
    base = make_config().model_dump()
    with pytest.raises(ConfigError, match=r"no version given: set the version to promote \(--set"):
        run_promote(PromoteStageConfig.model_validate(base))
    with pytest.raises(ValueError, match="'latest' is not a version number"):
        PromoteStageConfig.model_validate(base | {"version": "latest"})
    assert PromoteStageConfig.model_validate(base | {"version": "3"}).version == 3


def test_register_stage_needs_exactly_one_source(make_config):
    base = make_config().model_dump()
    with pytest.raises(ValueError, match="exactly one of model_dir, run_id and run_name"):
        RegisterStageConfig.model_validate(base)
    with pytest.raises(ValueError, match="exactly one of model_dir, run_id and run_name"):
        RegisterStageConfig.model_validate(base | {"model_dir": "x", "run_name": "y"})
    unknown = RegisterStageConfig.model_validate(base | {"run_name": "never-trained"})
    with pytest.raises(ValueError, match="no MLflow run named 'never-trained'"):
        run_register(unknown)
