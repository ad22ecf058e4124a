"""Read the registry: the versions of a registered model (``list``) and one version in full (``show``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from workembed.errors import InputError, NotFoundError
from workembed.registry import tags
from workembed.registry.config import RegistryConfig


def registered_model(client: Any, name: str):
    """The registered model ``name``; FileNotFoundError naming the server when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NotFoundError(f"no registered model '{name}' at {client.tracking_uri}") from None


def model_version(client: Any, name: str, version: str | int):
    """Version ``version`` of ``name``; FileNotFoundError when it does not exist."""
    from mlflow.exceptions import MlflowException

    text = str(version)
    if not text.isdigit():
        raise InputError(f"a model version is a positive integer, got '{text}'")
    try:
        return client.get_model_version(name, text)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise NotFoundError(f"registered model '{name}' has no version {text}") from None


def list_versions(config: RegistryConfig) -> dict[str, Any]:
    """``{"name", "aliases": {alias: version}, "versions": [summary, ...]}``, oldest version first; a summary
    holds version, aliases, created, status, run_id, source, extraction_threshold, training_run, git_commit
    and the last promotion decision per alias."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.tracking_uri)
    model = registered_model(client, config.name)
    versions, token = [], None
    while True:
        page = client.search_model_versions(f"name = '{config.name}'", page_token=token)
        versions.extend(page)
        token = page.token
        if not token:
            break
    versions.sort(key=lambda version: int(version.version))
    aliases = dict(model.aliases)  # searched versions may come without their aliases
    held = {
        version.version: sorted(a for a, v in aliases.items() if v == version.version) for version in versions
    }
    return {
        "name": config.name,
        "aliases": aliases,
        "versions": [summary(version, held[version.version]) for version in versions],
    }


def summary(version: Any, aliases: list[str]) -> dict[str, Any]:
    """The short description of one model version holding ``aliases`` (see :func:`list_versions`)."""
    values = version.tags
    threshold = values.get(tags.EXTRACTION_THRESHOLD)
    promotions = {
        key.removeprefix(tags.promotion_tag("")): json.loads(value)["decision"]
        for key, value in values.items()
        if key.startswith(tags.promotion_tag(""))
    }
    return {
        "version": version.version,
        "aliases": aliases,
        "created": created(version),
        "status": version.status,
        "run_id": version.run_id,
        "source": values.get(tags.SOURCE),
        "extraction_threshold": float(threshold) if threshold is not None else None,
        "training_run": values.get(tags.TRAINING_RUN),
        "git_commit": values.get(tags.GIT_COMMIT),
        "promotions": promotions,
    }


def show_version(config: RegistryConfig, version: str | int) -> dict[str, Any]:
    """One version in full: uri, aliases, created, status, source (MLflow's artifact location), run_id,
    description and every tag (JSON-valued tags decoded)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.tracking_uri)
    found = model_version(client, config.name, version)
    return {
        "name": config.name,
        "version": found.version,
        "uri": f"models:/{config.name}/{found.version}",
        "aliases": sorted(found.aliases),
        "created": created(found),
        "status": found.status,
        "source": found.source,
        "run_id": found.run_id,
        "description": found.description or "",
        "tags": tags.parsed(dict(found.tags)),
    }


def created(version: Any) -> str:
    """The version's creation time, UTC ISO 8601."""
    return datetime.fromtimestamp(version.creation_timestamp / 1000, UTC).isoformat(timespec="seconds")
