"""The tags the registry writes (all values are strings; structured values are JSON).

On a model version:

- ``workembed.source``: what was registered (``runs:/RUN_ID/model`` or the model folder's absolute path);
- ``workembed.training_run``: the MLflow run that trained it, or ``unknown``;
- ``workembed.data_fingerprint``: the training data's fingerprint, or ``unknown``;
- ``workembed.config_hash``: ``sha256:`` of the canonical JSON of its training config, or ``unknown``;
- ``workembed.git_commit``: the commit of the code that registered it, or ``unknown``;
- ``workembed.extraction_threshold``: the calibrated extraction threshold (absent: none);
- ``workembed.eval_report``: ``runs:/RUN_ID/report/FILE``, the evaluation report given at registration;
- ``workembed.promotion.<alias>``: the last gate decision for that alias (JSON: decision, by, at, holder,
  tolerance, reasons, table); decision ``promoted``, ``forced``, ``refused`` or ``conflict`` (the alias moved
  to another version while the gate ran; the alias was left to it);
- ``workembed.rollback.<alias>``: set on the version an alias was rolled back to (JSON: from, to, by, at).

On the registered model: ``workembed.alias_history.<alias>``, the JSON list of the versions that held the
alias, oldest first, the current holder last (a promotion appends, a rollback truncates).
"""

from __future__ import annotations

import getpass
import json
from datetime import UTC, datetime
from typing import Any

SOURCE = "workembed.source"
TRAINING_RUN = "workembed.training_run"
DATA_FINGERPRINT = "workembed.data_fingerprint"
CONFIG_HASH = "workembed.config_hash"
GIT_COMMIT = "workembed.git_commit"
EXTRACTION_THRESHOLD = "workembed.extraction_threshold"
EVAL_REPORT = "workembed.eval_report"
UNKNOWN = "unknown"


def promotion_tag(alias: str) -> str:
    return f"workembed.promotion.{alias}"


def rollback_tag(alias: str) -> str:
    return f"workembed.rollback.{alias}"


def alias_history_tag(alias: str) -> str:
    return f"workembed.alias_history.{alias}"


def stamp() -> dict[str, str]:
    """Who and when: ``{"by": login name, "at": UTC ISO 8601 time}``."""
    return {"by": getpass.getuser(), "at": datetime.now(UTC).isoformat(timespec="seconds")}


def dumps(value: Any) -> str:
    """A tag value holding JSON (compact)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def parsed(tags: dict[str, str]) -> dict[str, Any]:
    """``tags`` with the JSON values of promotion/rollback/history tags decoded."""
    structured = ("workembed.promotion.", "workembed.rollback.", "workembed.alias_history.")
    return {key: json.loads(value) if key.startswith(structured) else value for key, value in tags.items()}
