"""Log one finished run (parameters, metrics, files) to an MLflow tracking server.

The tracking URI is given per call and used through an :class:`mlflow.MlflowClient`, so nothing here
changes MLflow's process-wide tracking URI or active run. Metric and parameter names are made acceptable
to MLflow (letters, digits, ``_``, ``-``, ``.``; ``/`` separates levels): ``@`` becomes ``_at_`` and any
other character ``_``, so ``skillskape-dev/minilm/RP@5`` is logged as ``skillskape-dev/minilm/RP_at_5``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from workembed.config import SECRET_TYPES
from workembed.errors import NotFoundError, RegistryError

_UNSAFE = re.compile(r"[^\w.\-]")


def safe_name(part: str) -> str:
    """One level of an MLflow key: ``@`` → ``_at_``, other characters outside ``[\\w.-]`` → ``_``."""
    text = _UNSAFE.sub("_", str(part).replace("@", "_at_"))
    return "_" if text in ("", ".", "..") else text  # '.' and '..' would make MLflow reject the path


def metric_key(name: str) -> str:
    """An MLflow-acceptable key for ``name``, keeping ``/`` as the level separator."""
    return "/".join(safe_name(part) for part in str(name).split("/"))


def flatten_metrics(nested: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested mappings as ``{'prefix/a/b/c': value}``, one level per mapping key (each
    made safe by :func:`safe_name`, so a key holding ``/`` stays one level; ``prefix`` is used as given).

    Booleans, strings, lists, None and NaN leaves are left out. For an evaluation report,
    ``flatten_metrics(report['results'])`` gives ``{'dataset/system/metric': value}``.
    """
    flat: dict[str, float] = {}
    for key, value in nested.items():
        name = f"{prefix}/{safe_name(key)}" if prefix else safe_name(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, name))
        elif isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value):
            if name in flat:
                raise ValueError(f"two metrics become the MLflow key '{name}' (at '{key}')")
            flat[name] = float(value)
    return flat


def log_to_mlflow(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, float | None],
    artifacts: Sequence[Path],
    tags: Mapping[str, str] | None = None,
) -> str:
    """Create a run in ``experiment`` (created when missing) at ``tracking_uri``, log ``params`` (nested
    mappings become dotted keys; non-string values are JSON), ``metrics`` (step 0; None and NaN skipped),
    ``artifacts`` (files, at the run's artifact root) and ``tags``, end it; return the run id.

    The run is marked FAILED, and the error re-raised, when logging fails after it was created.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunStatus

    metric_values = _metric_values(metrics)
    params_flat = param_values(params)
    files = [Path(path) for path in artifacts]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise NotFoundError(f"artifacts to log are not files: {', '.join(missing)}")

    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.create_run(
        experiment_id(client, experiment, tracking_uri),
        run_name=run_name,
        tags={str(key): str(value) for key, value in (tags or {}).items()},
    )
    run_id = run.info.run_id
    try:
        now_ms = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(key, value, now_ms, 0) for key, value in metric_values.items()],
            params=[Param(key, value) for key, value in params_flat.items()],
        )
        for path in files:
            client.log_artifact(run_id, str(path))
    except BaseException:
        terminate(client, run_id, RunStatus.to_string(RunStatus.FAILED))
        raise
    terminate(client, run_id, RunStatus.to_string(RunStatus.FINISHED))
    return run_id


def terminate(client: Any, run_id: str, status: str) -> None:
    """End the run. MLflow prints the run's URL on stdout, which carries command output (JSON): stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        client.set_terminated(run_id, status)


def _metric_values(metrics: Mapping[str, float | None]) -> dict[str, float]:
    values: dict[str, float] = {}
    sources: dict[str, str] = {}
    for name, value in metrics.items():
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"metric '{name}' must be a number, got {type(value).__name__}")
        key = metric_key(name)
        if key in sources:
            raise ValueError(f"metrics '{sources[key]}' and '{name}' both become the MLflow key '{key}'")
        values[key], sources[key] = float(value), str(name)
    return values


def param_values(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Parameters as MLflow takes them: nested mappings become dotted keys, non-strings JSON. Secret values
    (``SecretStr``, ``SecretBytes``) are left out, as :func:`workembed.config.public_dump` leaves them."""
    values: dict[str, str] = {}
    for name, value in params.items():
        key = f"{prefix}.{safe_name(name)}" if prefix else safe_name(name)
        if isinstance(value, SECRET_TYPES):
            continue
        if isinstance(value, Mapping):
            values.update(param_values(value, key))
        else:
            values[key] = value if isinstance(value, str) else json.dumps(value, default=str)
    return values


def experiment_id(client: Any, name: str, tracking_uri: str) -> str:
    """The id of experiment ``name``, created when it does not exist (also when another process races)."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            found = client.get_experiment_by_name(name)
    if found.lifecycle_stage != "active":
        raise RegistryError(
            f"MLflow experiment '{name}' at {tracking_uri} is deleted: restore it or choose another name"
        )
    return found.experiment_id


def log_evaluation(
    tracking_uri: str,
    experiment: str,
    model: str,
    config: Mapping[str, Any],
    results: Mapping[str, Any],
    files: Sequence[Path],
    write: Callable[[Path], Sequence[Path]],
) -> str:
    """Log an evaluation run named after ``model``: ``config`` as parameters, the numeric leaves of
    ``results`` as metrics, and ``files`` as artifacts (none written: ``write(folder)`` writes them to a
    temporary folder first). Returns the run id."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="workembed-eval-") as scratch:
        artifacts = list(files) or list(write(Path(scratch)))
        return log_to_mlflow(
            tracking_uri,
            experiment,
            run_name=Path(model).name or model,
            params=config,
            metrics=flatten_metrics(results),
            artifacts=artifacts,
        )
