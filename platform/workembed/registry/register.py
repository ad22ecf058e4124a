"""Register a model folder (or a training run's ``model`` artifact) as a version of a registered model.

The folder is copied to a staging folder; when calibration datasets are configured the extraction
threshold is calibrated (by the :class:`Calibrate` the caller passes in: the command layer passes
:func:`workembed.eval.calibration.calibrate`) and written into the copy as
``extraction.json`` (replacing one the folder had); without them an ``extraction.json`` already in the folder
is kept. The copy is logged as the pyfunc of :mod:`workembed.registry.pyfunc` (artifact ``model``, so
``models:/NAME/VERSION`` downloads to ``.../artifacts/model`` with ``config.json``, the tokenizer files,
``workembed.json`` and ``extraction.json``) in a registration run of ``config.experiment``, registered as
the next version of ``config.name`` and tagged with its lineage (:mod:`workembed.registry.tags`). An
evaluation report given with it is logged to the registration run under ``report/``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from workembed.errors import InputError, NotFoundError
from workembed.registry import tags
from workembed.registry.config import TRACKING_URI_ENV, CalibrationConfig, RegistryConfig

if TYPE_CHECKING:
    from workembed.models.extraction_settings import ExtractionSettings

logger = logging.getLogger(__name__)

RUN_MODEL_PATH = "model"
"""Where the trainer logs the model folder in its run (``runs:/RUN_ID/model``)."""
REPORT_PATH = "report"


class Calibrate(Protocol):
    """Calibrates the extraction settings of the model folder ``model_dir`` on ``config.datasets``: the
    evaluation registration runs. The command layer passes :func:`workembed.eval.calibration.calibrate`; the
    registry never imports evaluation."""

    def __call__(self, model_dir: Path, config: CalibrationConfig) -> ExtractionSettings: ...


def register_model(
    config: RegistryConfig,
    *,
    calibrate: Calibrate,
    model_dir: str | os.PathLike | None = None,
    run_id: str | None = None,
    report: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Register the model folder ``model_dir`` or the ``model`` artifact of training run ``run_id`` (exactly
    one) as a new version of ``config.name``, its extraction threshold calibrated by ``calibrate`` when
    ``config.calibration`` names datasets; returns name, version, uri, run_id (of the registration run),
    source, the version's tags and the extraction settings (None without a threshold)."""
    from mlflow import MlflowClient

    from workembed.models.extraction_settings import read_extraction_settings, write_extraction_settings
    from workembed.models.folder import read_model_info
    from workembed.registry.lineage import lineage_tags

    if (model_dir is None) == (run_id is None):
        raise InputError("register: give exactly one of a model folder (--model) or a training run (--run)")
    if report is not None and not Path(report).is_file():
        raise NotFoundError(f"evaluation report not found: {report}")
    client = MlflowClient(tracking_uri=config.tracking_uri)
    folder, source = source_folder(config, model_dir, run_id)
    info = read_model_info(folder)
    version_tags = lineage_tags(client, info, run_id, source)
    with tempfile.TemporaryDirectory(prefix="workembed-register-") as scratch:
        staging = Path(scratch) / RUN_MODEL_PATH
        shutil.copytree(folder, staging)
        if config.calibration.datasets:
            logger.info(
                "calibrating the extraction threshold on %d dataset(s)", len(config.calibration.datasets)
            )
            settings = calibrate(staging, config.calibration)
            write_extraction_settings(staging, settings)
        else:
            settings = read_extraction_settings(staging)
        if settings is not None:
            version_tags[tags.EXTRACTION_THRESHOLD] = str(settings.threshold)
        run, version = log_version(config, staging, version_tags, report)
    if report is not None:
        version_tags[tags.EVAL_REPORT] = f"runs:/{run}/{REPORT_PATH}/{Path(report).name}"
    for key, value in version_tags.items():
        client.set_model_version_tag(config.name, version, key, value)
    logger.info("registered %s version %s from %s", config.name, version, source)
    return {
        "name": config.name,
        "version": version,
        "uri": f"models:/{config.name}/{version}",
        "run_id": run,
        "source": source,
        "tags": version_tags,
        "extraction": settings.model_dump(mode="json") if settings is not None else None,
    }


def source_folder(
    config: RegistryConfig, model_dir: str | os.PathLike | None, run_id: str | None
) -> tuple[Path, str]:
    """The local model folder to register and the ``workembed.source`` naming it."""
    from workembed.models import resolve_model_path
    from workembed.models.mlflow_models import download_model

    if run_id is not None:
        uri = f"runs:/{run_id}/{RUN_MODEL_PATH}"
        return download_model(uri, tracking_uri=config.tracking_uri), uri
    folder = Path(model_dir).expanduser().resolve()
    if not folder.is_dir():
        raise NotFoundError(f"model folder not found: {model_dir}")
    return resolve_model_path(folder), str(folder)


def log_version(
    config: RegistryConfig, staging: Path, version_tags: dict[str, str], report: str | os.PathLike | None
) -> tuple[str, str]:
    """Log ``staging`` as the pyfunc in a new registration run, registered under ``config.name``; return
    (run id, version)."""
    import mlflow

    from workembed.registry.pyfunc import MODEL_ARTIFACT, EncoderPyfunc, pip_requirements, signature
    from workembed.tracking import experiment_id, param_values

    experiment = experiment_id(
        mlflow.MlflowClient(config.tracking_uri), config.experiment, config.tracking_uri
    )
    params = param_values({"name": config.name, "calibration": config.calibration.model_dump(mode="json")})
    # MLflow prints run links on stdout, which carries the command's JSON result
    with using_tracking_uri(config.tracking_uri), contextlib.redirect_stdout(sys.stderr):
        with mlflow.start_run(
            experiment_id=experiment, run_name=f"register-{config.name}", tags=version_tags
        ) as run:
            mlflow.log_params(params)
            if report is not None:
                mlflow.log_artifact(str(report), REPORT_PATH)
            logged = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=EncoderPyfunc(),
                artifacts={MODEL_ARTIFACT: str(staging)},
                signature=signature(),
                pip_requirements=pip_requirements(),
                registered_model_name=config.name,
            )
    return run.info.run_id, str(logged.registered_model_version)


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``start_run``, ``pyfunc.log_model``), which only knows the process-wide tracking
    URI, works on ``uri`` inside the block; that URI and ``$MLFLOW_TRACKING_URI`` (which MLflow rewrites)
    are restored after it."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get(TRACKING_URI_ENV)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop(TRACKING_URI_ENV, None)
        else:
            os.environ[TRACKING_URI_ENV] = saved
