"""Models held by MLflow: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH``.

The artifacts are downloaded once per resolved version (an alias is looked up on every call, so a moved alias
gives the new version) into ``~/.cache/workembed/models`` (``$WORKEMBED_MODEL_CACHE``), and the model folder
is the shallowest folder in them holding ``config.json`` (one with ``workembed.json`` first). The tracking
server is ``$MLFLOW_TRACKING_URI``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from workembed.errors import NotFoundError

URI_SCHEMES = ("models:/", "runs:/")
CACHE_ENV = "WORKEMBED_MODEL_CACHE"
DEFAULT_CACHE = "~/.cache/workembed/models"
COMPLETE_MARKER = ".complete"


def is_mlflow_uri(name: str) -> bool:
    return name.startswith(URI_SCHEMES)


def pinned_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` → ``models:/NAME/VERSION`` (the alias holder now); other URIs as given."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = uri[len("models:/") :].split("@", 1)
    try:
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias).version
    except MlflowException as err:
        raise NotFoundError(f"model '{uri}': no version of '{name}' holds alias '{alias}' ({err})") from None
    return f"models:/{name}/{version}"


def download_model(
    uri: str, tracking_uri: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local model folder of an MLflow model URI (downloaded on first use)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise NotFoundError(f"model '{uri}' is an MLflow URI: set MLFLOW_TRACKING_URI to the tracking server")
    pinned = pinned_uri(uri, tracking_uri)
    root = Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
    target = root / hashlib.sha256(f"{tracking_uri}\0{pinned}".encode()).hexdigest()[:24]
    if not (target / COMPLETE_MARKER).is_file():
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="download-", dir=root))
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_location(pinned, tracking_uri),
                dst_path=str(staging),
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        except MlflowException as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise NotFoundError(f"model '{uri}' could not be downloaded from {tracking_uri}: {err}") from None
        (staging / COMPLETE_MARKER).write_text(pinned + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    return model_folder(target, uri)


def artifact_location(pinned: str, tracking_uri: str) -> str:
    """Where a pinned URI's files are: a registered version's download URI (asked of ``tracking_uri``
    itself, whatever the process-wide registry URI is), other URIs as given."""
    if not pinned.startswith("models:/"):
        return pinned
    from mlflow import MlflowClient

    name, _, version = pinned[len("models:/") :].rpartition("/")
    if not name or not version.isdigit():
        return pinned
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    return client.get_model_version_download_uri(name, version)


def model_folder(root: Path, uri: str) -> Path:
    """The shallowest folder under ``root`` with ``config.json``, preferring one with ``workembed.json``."""
    candidates = sorted(
        (path.parent for path in root.rglob("config.json")),
        key=lambda folder: (not (folder / "workembed.json").is_file(), len(folder.parts), str(folder)),
    )
    if not candidates:
        raise NotFoundError(f"model '{uri}' holds no model folder (no config.json in its artifacts)")
    return candidates[0]
