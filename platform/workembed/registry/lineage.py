"""Lineage of a model folder: the training run, data fingerprint, config hash and code commit it came from.

- config hash: ``sha256:`` + SHA-256 of the canonical JSON (sorted keys, no spaces) of ``workembed.json``'s
  ``training`` section (the resolved training config), or of the whole ``workembed.json`` when it has none;
  ``unknown`` without ``workembed.json``;
- training run: the run given, else the latest run tagged ``workembed.run_name = training.run_name`` (as the
  trainer tags its runs) in experiment ``training.tracking.experiment`` of the registry's tracking server;
  ``unknown`` when there is none;
- data fingerprint: the training run's ``data.fingerprint`` tag (the hash of the edges it trained on), else
  ``sha256:`` of the canonical JSON of ``training.data`` (what it was configured to read); ``unknown``;
- git commit: ``git rev-parse HEAD`` of the project checkout, ``unknown`` when that fails.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Mapping
from typing import Any

from workembed.config import project_root
from workembed.registry import tags

RUN_NAME_TAG = "workembed.run_name"
RUN_DATA_FINGERPRINT_TAG = "data.fingerprint"


def canonical_hash(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value`` (sorted keys, compact separators)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_hash(info: Mapping[str, Any]) -> str:
    """The hash of ``info['training']`` (``info`` is a ``workembed.json``), of the whole ``info`` without
    it, ``unknown`` when ``info`` is empty."""
    if not info:
        return tags.UNKNOWN
    return canonical_hash(info["training"] if "training" in info else info)


def git_commit() -> str:
    """The commit checked out in the project, or ``unknown``."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=project_root(),
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return tags.UNKNOWN
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else tags.UNKNOWN


def training_run(client: Any, info: Mapping[str, Any], run_id: str | None) -> str | None:
    """The id of the MLflow run that trained the model (see the module docstring), or None."""
    if run_id:
        return run_id
    training = info.get("training") or {}
    run_name = training.get("run_name")
    experiment_name = (training.get("tracking") or {}).get("experiment")
    if not run_name or not experiment_name or "'" in run_name:
        return None
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_NAME_TAG}` = '{run_name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def data_fingerprint(client: Any, info: Mapping[str, Any], run_id: str | None) -> str:
    """The training run's ``data.fingerprint`` tag, else the hash of ``training.data``, else ``unknown``."""
    if run_id:
        fingerprint = client.get_run(run_id).data.tags.get(RUN_DATA_FINGERPRINT_TAG)
        if fingerprint:
            return fingerprint
    data = (info.get("training") or {}).get("data")
    return canonical_hash(data) if data else tags.UNKNOWN


def lineage_tags(client: Any, info: Mapping[str, Any], run_id: str | None, source: str) -> dict[str, str]:
    """The lineage tags of :mod:`workembed.registry.tags` for a model folder with ``workembed.json``
    ``info``, registered from ``source`` (trained by ``run_id`` when known)."""
    run = training_run(client, info, run_id)
    return {
        tags.SOURCE: source,
        tags.TRAINING_RUN: run or tags.UNKNOWN,
        tags.DATA_FINGERPRINT: data_fingerprint(client, info, run),
        tags.CONFIG_HASH: config_hash(info),
        tags.GIT_COMMIT: git_commit(),
    }
