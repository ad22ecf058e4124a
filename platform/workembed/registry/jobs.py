"""The register and promote jobs (``python -m jobs.register``, ``python -m jobs.promote``): their configs
and runs.

Both take the registry settings (:class:`RegistryConfig`) plus what the command-line flags of
``workembed models register|promote`` give, so a pipeline can register the model its training stage wrote
and promote the version it registered (``version={register.version}`` in the pipeline config: the runner
passes the register stage's result on). The promote stage always names its version, never "the latest"
(which may be a version another run registered meanwhile). The evaluation they run (the extraction
calibration, the gate's scores) is passed in; the stage table runs them through
:mod:`workembed.registry_commands`, which passes :mod:`workembed.eval`'s.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from workembed.errors import ConfigError, RegistryError
from workembed.registry.config import RegistryConfig
from workembed.registry.gate import GateScores
from workembed.registry.register import Calibrate


class RegisterStageConfig(RegistryConfig):
    """Settings of the ``register`` stage."""

    model_dir: str | None = Field(None, description="Model folder to register (e.g. a training output).")
    run_id: str | None = Field(
        None, description="Or: the MLflow training run whose 'model' artifact is registered."
    )
    run_name: str | None = Field(
        None,
        description="Or: the training run's name (the train stage's run_name; its latest MLflow run in "
        "training_experiment is registered), how a pipeline on a remote cluster names its model.",
    )
    training_experiment: str = Field("workembed-train", description="MLflow experiment of the training runs.")
    report: str | None = Field(None, description="Evaluation report file logged with the version.")

    @model_validator(mode="after")
    def _one_source(self) -> RegisterStageConfig:
        if sum(value is not None for value in (self.model_dir, self.run_id, self.run_name)) != 1:
            raise ValueError("give exactly one of model_dir, run_id and run_name")
        return self


class PromoteStageConfig(RegistryConfig):
    """Settings of the ``promote`` stage."""

    version: int | None = Field(
        None,
        ge=1,
        description="Candidate version number (required). In a pipeline, version={register.version} passes "
        "the version the register stage produced.",
    )
    alias: str = Field("champion", min_length=1, description="Alias the gate may move.")
    force: bool = Field(False, description="Move the alias even if the gate fails (recorded as forced).")

    @field_validator("version", mode="before")
    @classmethod
    def _a_number(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(
                f"'{value}' is not a version number: name the version to promote (e.g. version=3); "
                "'latest' is not accepted, it may be a version another run registered"
            )
        return value


def run_register(config: RegisterStageConfig, *, calibrate: Calibrate) -> dict[str, Any]:
    """Register the configured model folder or training run, calibrating with ``calibrate`` (see
    :func:`~workembed.registry.register.register_model`)."""
    from workembed.config import resolve_data_path
    from workembed.registry.register import register_model

    model_dir = resolve_data_path(config.model_dir) if config.model_dir else None
    run_id = config.run_id
    if config.run_name is not None:
        from mlflow import MlflowClient

        from workembed.registry.lineage import training_run

        client = MlflowClient(tracking_uri=config.tracking_uri)
        info = {
            "training": {"run_name": config.run_name, "tracking": {"experiment": config.training_experiment}}
        }
        run_id = training_run(client, info, None)
        if run_id is None:
            raise RegistryError(
                f"no MLflow run named '{config.run_name}' in experiment '{config.training_experiment}'"
            )
    return register_model(
        config, calibrate=calibrate, model_dir=model_dir, run_id=run_id, report=config.report
    )


def run_promote(config: PromoteStageConfig, *, gate_scores: GateScores) -> dict[str, Any]:
    """Promote the configured version through the gate scored by ``gate_scores`` (see
    :func:`~workembed.registry.promotion.promote`); :class:`ConfigError` when no version is given."""
    from workembed.registry.promotion import promote

    if config.version is None:
        raise ConfigError(
            "promote: no version given: set the version to promote (--set version=N); in a pipeline, "
            "version={register.version} passes the version its register stage produced"
        )
    return promote(config, config.version, config.alias, gate_scores=gate_scores, force=config.force)
