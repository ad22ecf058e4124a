"""The extraction threshold a model version carries, calibrated when it is registered.

:func:`calibrate` is the :class:`~workembed.registry.register.Calibrate` the command layer hands to
:func:`~workembed.registry.register.register_model`.

Each calibration dataset is evaluated with ``workembed eval extraction``'s protocol
(:func:`~workembed.eval.extraction_benchmark.run_extraction_eval`): its threshold is the grid value with the
best micro F1 on its calibration part. The model's threshold is the mean of the per-dataset thresholds,
``t = (1/D) Σ_d t_d``, so each dataset (e.g. the house and tech ads) weighs the same whatever its size;
the per-dataset thresholds and test-part figures go to ``extraction.json``'s ``metrics``.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from workembed.errors import ConfigError
from workembed.models.extraction_settings import ExtractionSettings
from workembed.registry.config import CalibrationConfig

REPORTED = ("threshold", "calibration_queries", "test_queries", "calibration_f1", "test", "filtered")


def calibrate(model_dir: str | Path, config: CalibrationConfig) -> ExtractionSettings:
    """Calibrate the extraction settings of the model in ``model_dir`` on ``config.datasets``."""
    from workembed.eval.extraction_benchmark import ExtractionEvalConfig, run_extraction_eval

    if not config.datasets:
        raise ConfigError("calibration.datasets is empty: no dataset to calibrate the threshold on")
    settings = config.model_dump(
        include={"datasets", "calibration_fraction", "seed", "grid", "temperature", "among"}
        | {"batch_size", "max_length", "device"}
    )
    # the model folder is a temporary copy: a target-embedding cache keyed by it would never be read again
    evaluation = ExtractionEvalConfig(model=str(model_dir), cache_dir=None, tracking_uri=None, **settings)
    report = run_extraction_eval(evaluation)
    results = report["results"]
    return ExtractionSettings(
        threshold=statistics.fmean(result["threshold"] for result in results.values()),
        temperature=config.temperature,
        among=config.among,
        calibrated_on=list(results),
        metrics={name: {key: result[key] for key in REPORTED} for name, result in results.items()},
    )
