"""Models held by MLflow: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` and ``runs:/RUN_ID/PATH``.

The artifacts are downloaded once per resolved version (an alias is looked up on every call, so a moved alias
gives the new version) into ``~/.cache/workembed/models`` (``$WORKEMBED_MODEL_CACHE``), and the model folder
is the shallowest folder in them holding ``config.json`` (one with ``workembed.json`` first). The tracking
server is ``$MLFLOW_TRACKING_URI``.

The download cache is shared safely by processes: a version is fetched under a file lock (one download, the
other processes wait and reuse it) into a staging folder that is renamed into place once complete. Each use
touches the version's ``.complete`` marker, so :func:`evict_downloads` can drop the least recently used
versions. :func:`record_alias` notes which version an alias resolved to last (``aliases/`` in the cache), so
a server can start on that version while the tracking server is unreachable (:func:`cached_alias`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from workembed.errors import ClusterError, NotFoundError

logger = logging.getLogger(__name__)

URI_SCHEMES = ("models:/", "runs:/")
CACHE_ENV = "WORKEMBED_MODEL_CACHE"
DEFAULT_CACHE = "~/.cache/workembed/models"
COMPLETE_MARKER = ".complete"
LOCKS = ".locks"
ALIASES = "aliases"
MISSING_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})
"""MLflow error codes that mean "no such model, version or alias" (any other failure: unreachable)."""


class RegistryUnavailableError(ClusterError):
    """The MLflow tracking server did not answer (down, unreachable, failing); HTTP 503."""


def is_mlflow_uri(name: str) -> bool:
    return name.startswith(URI_SCHEMES)


def registry_error(err: Exception, missing: str, tracking_uri: str | None) -> Exception:
    """The error to raise for an ``MlflowException``: :class:`NotFoundError` (``missing`` as its message)
    when MLflow says the thing does not exist, :class:`RegistryUnavailableError` otherwise."""
    if getattr(err, "error_code", None) in MISSING_CODES:
        return NotFoundError(f"{missing} ({err})")
    return RegistryUnavailableError(f"MLflow tracking server {tracking_uri} is unavailable: {err}")


def alias_version(uri: str, tracking_uri: str | None = None) -> Any:
    """The MLflow ``ModelVersion`` (with its tags) that holds the alias of ``models:/NAME@ALIAS`` now.

    :class:`NotFoundError` when no version holds it, :class:`RegistryUnavailableError` when the tracking
    server does not answer."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias = uri[len("models:/") :].split("@", 1)
    try:
        return MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException as err:
        missing = f"model '{uri}': no version of '{name}' holds alias '{alias}'"
        raise registry_error(err, missing, tracking_uri) from None


def pinned_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` → ``models:/NAME/VERSION`` (the alias holder now); other URIs as given."""
    if not uri.startswith("models:/") or "@" not in uri:
        return uri
    name = uri[len("models:/") :].split("@", 1)[0]
    return f"models:/{name}/{alias_version(uri, tracking_uri).version}"


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The download cache: ``cache_dir``, else ``$WORKEMBED_MODEL_CACHE``, else the default."""
    return Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _key(tracking_uri: str, uri: str) -> str:
    return hashlib.sha256(f"{tracking_uri}\0{uri}".encode()).hexdigest()[:24]


def _lock(root: Path, key: str):
    from filelock import FileLock

    (root / LOCKS).mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / LOCKS / f"{key}.lock"))


def download_model(
    uri: str, tracking_uri: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The local model folder of an MLflow model URI (downloaded on first use, once across processes)."""
    tracking_uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not tracking_uri:
        raise NotFoundError(f"model '{uri}' is an MLflow URI: set MLFLOW_TRACKING_URI to the tracking server")
    pinned = pinned_uri(uri, tracking_uri)
    root = cache_root(cache_dir)
    key = _key(tracking_uri, pinned)
    target = root / key
    if not (target / COMPLETE_MARKER).is_file():
        root.mkdir(parents=True, exist_ok=True)
        with _lock(root, key):
            if not (target / COMPLETE_MARKER).is_file():  # another process may have fetched it meanwhile
                _fetch(uri, pinned, tracking_uri, root, key)
    try:
        os.utime(target / COMPLETE_MARKER)  # last use, for evict_downloads
    except FileNotFoundError:  # evicted by another process this very moment: fetch it again
        return download_model(uri, tracking_uri, cache_dir)
    return model_folder(target, uri)


def _fetch(uri: str, pinned: str, tracking_uri: str, root: Path, key: str) -> None:
    """Download ``pinned`` into ``root/key`` (the caller holds the key's lock): into a staging folder first,
    renamed into place once complete; staging folders a killed process left are removed."""
    import mlflow
    from mlflow.exceptions import MlflowException

    for stale in root.glob(f"{key}.download-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.download-", dir=root))
    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=artifact_location(pinned, tracking_uri),
            dst_path=str(staging),
            tracking_uri=tracking_uri,
            registry_uri=tracking_uri,
        )
        (staging / COMPLETE_MARKER).write_text(pinned + "\n", encoding="utf-8")
    except MlflowException as err:
        shutil.rmtree(staging, ignore_errors=True)
        missing = f"model '{uri}' could not be downloaded from {tracking_uri}: {err}"
        raise registry_error(err, missing, tracking_uri) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    target = root / key
    if target.exists():  # an incomplete folder of an older version of this code
        shutil.rmtree(target)
    staging.rename(target)
    logger.info("downloaded %s into %s", pinned, target)


def cache_entry(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached version folder (a direct child of the cache) that holds ``path``; None outside the cache."""
    root = cache_root(cache_dir).resolve()
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        return None
    return root / relative.parts[0] if relative.parts else None


def record_alias(
    alias_uri: str, pinned: str, tracking_uri: str, cache_dir: str | os.PathLike | None = None
) -> None:
    """Note in the cache that ``alias_uri`` resolved to ``pinned`` (written atomically)."""
    folder = cache_root(cache_dir) / ALIASES
    folder.mkdir(parents=True, exist_ok=True)
    record = {
        "uri": alias_uri,
        "tracking_uri": tracking_uri,
        "version": pinned,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    handle, staging = tempfile.mkstemp(prefix=".alias-", dir=folder)
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        json.dump(record, file)
    os.replace(staging, folder / f"{_key(tracking_uri, alias_uri)}.json")


def cached_alias(
    alias_uri: str, tracking_uri: str, cache_dir: str | os.PathLike | None = None
) -> dict[str, str] | None:
    """The last record of :func:`record_alias` for ``alias_uri`` (``uri``, ``version``, ``at``) when that
    version is still complete in the cache; None otherwise."""
    root = cache_root(cache_dir)
    try:
        record = json.loads((root / ALIASES / f"{_key(tracking_uri, alias_uri)}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not (root / _key(tracking_uri, record["version"]) / COMPLETE_MARKER).is_file():
        return None
    return record


def evict_downloads(
    keep: int, protect: Iterable[str | os.PathLike] = (), cache_dir: str | os.PathLike | None = None
) -> list[str]:
    """Remove the least recently used downloaded versions beyond the ``keep`` most recent ones, never one
    holding a path of ``protect`` nor the last version an alias resolved to; returns the removed versions."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    kept = {entry for path in protect if (entry := cache_entry(path, root)) is not None}
    for path in (root / ALIASES).glob("*.json"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            kept.add(root.resolve() / _key(record["tracking_uri"], record["version"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    entries = []
    for folder in root.iterdir():
        marker = folder / COMPLETE_MARKER
        try:
            entries.append((marker.stat().st_mtime, folder))
        except OSError:
            continue  # not a downloaded version (locks, alias records, a download in progress)
    entries.sort(reverse=True)
    removed = []
    for _, folder in entries[keep:]:
        if folder.resolve() in kept:
            continue
        with _lock(root, folder.name):
            try:
                version = (folder / COMPLETE_MARKER).read_text(encoding="utf-8").strip()
            except OSError:
                continue  # removed by another process
            shutil.rmtree(folder, ignore_errors=True)
        logger.info("model cache: evicted %s (%s)", version, folder)
        removed.append(version)
    return removed


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
