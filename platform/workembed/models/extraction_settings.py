"""The calibrated skill-extraction settings a model folder carries (``extraction.json``).

Registration calibrates the threshold (:mod:`workembed.eval.calibration`) and writes this file into the
model folder before the folder is logged to MLflow, so the threshold travels with the model version; the
serving application reads it back and refuses to extract with a model that has none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from workembed.config import Config
from workembed.errors import DatasetError

EXTRACTION_FILE = "extraction.json"


class ExtractionSettings(Config):
    """How a model extracts skills: the ConTeXT-match threshold, softmax temperature and redundancy filter."""

    threshold: float = Field(
        ge=-1.0, le=1.0, description="Match-score threshold: skills scoring ≥ it are kept."
    )
    temperature: float = Field(0.05, gt=0, description="Softmax temperature over a sentence's tokens.")
    among: Literal["all", "candidates"] = Field(
        "all",
        description="Redundancy filter: a predicted skill survives if it is some token's best skill among "
        "'all' skills or among the sentence's 'candidates'.",
    )
    calibrated_on: list[str] = Field(
        default_factory=list, description="Names of the datasets the threshold was calibrated on."
    )
    metrics: dict[str, Any] = Field(
        default_factory=dict, description="Calibration figures per dataset (calibration F1, test P/R/F1)."
    )


def write_extraction_settings(directory: str | os.PathLike, settings: ExtractionSettings) -> Path:
    """Write ``extraction.json`` into the model folder ``directory``; returns its path."""
    path = Path(directory) / EXTRACTION_FILE
    path.write_text(json.dumps(settings.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    return path


def read_extraction_settings(directory: str | os.PathLike) -> ExtractionSettings | None:
    """The settings in ``directory/extraction.json``; None when the model folder has none."""
    path = Path(directory) / EXTRACTION_FILE
    if not path.is_file():
        return None
    try:
        return ExtractionSettings.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not valid extraction settings ({err})") from None
