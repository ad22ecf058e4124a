"""Settings of ``workembed models ...``: the tracking server, the registered model, the extraction calibration
run at registration and the promotion gate."""

from __future__ import annotations

import os

from pydantic import Field, field_validator

from workembed.config import Config, project_root
from workembed.retrieval.ranking import METRICS
from workembed.retrieval.skill_extraction import Among

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_CACHE_DIR = "~/.cache/workembed/targets"
CALIBRATION_SETS = ("benchmarks/skill-extraction-house", "benchmarks/skill-extraction-tech")
GATE_SETS = ("esco/job-skill", "esco/skill-job", "esco/skill-normalization", "esco/job-normalization")


def existing_tasks(relative: tuple[str, ...]) -> list[str]:
    """The folders of ``eval-tasks/<relative>`` in the project checkout that exist (absolute paths)."""
    root = project_root() / "eval-tasks"
    return [str(root / path) for path in relative if (root / path).is_dir()]


def default_calibration_sets() -> list[str]:
    """The skill-extraction validation sets of ``eval-tasks/benchmarks`` that exist."""
    return existing_tasks(CALIBRATION_SETS)


def default_gate_sets() -> list[str]:
    """The held-apart ESCO tasks of ``eval-tasks/esco`` that exist."""
    return existing_tasks(GATE_SETS)


class EncoderRunConfig(Config):
    """How the registry runs an encoder."""

    batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    max_length: int = Field(256, ge=8, description="Tokens per text; longer texts are truncated.")
    device: str = Field("cpu", description="Torch device of the encoder ('cpu', 'cuda', 'cuda:1').")


class CalibrationConfig(EncoderRunConfig):
    """The extraction threshold calibrated at registration (``workembed eval extraction``'s protocol)."""

    datasets: list[str] = Field(
        default_factory=default_calibration_sets,
        description="Skill-extraction ranking dataset folders (relative paths resolve against the data "
        "root); each calibrates a threshold on its calibration part and the model's threshold is their mean "
        "(each dataset weighs the same). Default: eval-tasks/benchmarks/skill-extraction-{house,tech} when "
        "they exist; empty: no calibration (the version gets no threshold unless its folder has one).",
    )
    calibration_fraction: float = Field(
        0.5, gt=0, lt=1, description="Share of each dataset's labelled sentences that calibrate."
    )
    seed: int = Field(0, description="Seed of the calibration/test split.")
    grid: int = Field(100, ge=1, description="Threshold steps over [0, 1] (grid + 1 values).")
    temperature: float = Field(0.05, gt=0, description="Softmax temperature over a sentence's tokens.")
    among: Among = Field(
        "all", description="Redundancy filter scope written to extraction.json: 'all' or 'candidates'."
    )
    max_length: int = Field(
        128, ge=8, description="Tokens per sentence; keep it equal to the serving max_length."
    )


class GateConfig(EncoderRunConfig):
    """The promotion gate: the candidate may not fall behind the alias holder on any metric."""

    datasets: list[str] = Field(
        default_factory=default_gate_sets,
        description="Ranking dataset folders the candidate and the holder are evaluated on (relative paths "
        "resolve against the data root). Default: the ESCO tasks eval-tasks/esco/{job-skill, skill-job, "
        "skill-normalization, job-normalization} that exist.",
    )
    metrics: list[str] = Field(
        default_factory=lambda: ["map", "mrr"],
        min_length=1,
        description=f"Metrics compared per dataset; any of {', '.join(METRICS)}.",
    )
    tolerance: float = Field(
        0.005,
        ge=0,
        description="Largest allowed drop (absolute): a metric regresses when holder − candidate > it.",
    )

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        unknown = [metric for metric in value if metric not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        return value


class RegistryConfig(Config):
    """Settings of ``workembed models register|promote|list|show|rollback``."""

    tracking_uri: str = Field(
        default_factory=lambda: os.environ.get(TRACKING_URI_ENV, ""),
        validate_default=True,
        description="MLflow tracking server (also the model registry); default $MLFLOW_TRACKING_URI.",
    )
    name: str = Field("workembed", min_length=1, description="Registered model name.")
    experiment: str = Field(
        "workembed-registry", min_length=1, description="MLflow experiment of the registration runs."
    )
    cache_dir: str | None = Field(
        DEFAULT_CACHE_DIR,
        description="Where the gate caches target embeddings per (model version, target space); null: no "
        "cache.",
    )
    calibration: CalibrationConfig = Field(
        default_factory=CalibrationConfig, description="Extraction threshold calibration at registration."
    )
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion gate.")

    @field_validator("tracking_uri")
    @classmethod
    def _tracking_uri_set(cls, value: str) -> str:
        if not value.strip():
            raise ValueError(f"no MLflow tracking server: set {TRACKING_URI_ENV} or tracking_uri")
        return value
