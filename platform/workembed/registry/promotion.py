"""Move an alias through the gate (``promote``) and back (``rollback``), recording every decision.

``promote`` compares the candidate with the alias holder — the zero-shot ``minilm`` when no version holds
the alias — on the gate datasets (:mod:`workembed.registry.gate`), scored by the evaluation the caller passes
in (the command layer passes :func:`workembed.eval.gate.gate_scores`). A candidate without an extraction
threshold is refused before any evaluation (serving's ``/v1/extract`` needs one). The decision is
``promoted`` (gate passed), ``refused`` (alias untouched; :class:`PromotionRefused` is raised) or
``forced`` (``force`` overrode a failed gate); it is written to the candidate as the tag
``workembed.promotion.<alias>`` once the alias has moved (or, when refused, instead of moving it) and every
alias move is appended to the registered model's ``workembed.alias_history.<alias>``.

Promotion is compare-and-set: the gate runs for minutes, so right before moving the alias ``promote`` reads it
again and aborts with :class:`ConcurrentPromotion` (decision ``conflict``, recorded on the candidate) when it
no longer names the holder the gate compared against; after the move it reads the alias once more and aborts
the same way when another promotion moved it in between. MLflow has no atomic compare-and-set, so a window
remains: two promotions that both re-read the alias before either moves it, and both move it before either
verifies, both succeed; the later move holds the alias and its history tag may lack the earlier version.

``rollback`` moves the alias to the holder before the current one (dropping the current one from the
history), or to a given version (cutting the history back to that version's last turn, or appending it), and
tags that version ``workembed.rollback.<alias>``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from workembed.errors import ConfigError, RegistryError
from workembed.formatting import rounded
from workembed.registry import tags
from workembed.registry.config import RegistryConfig
from workembed.registry.gate import REGRESSED, GateScores, compare, markdown
from workembed.registry.versions import model_version, registered_model

logger = logging.getLogger(__name__)

BASELINE = "minilm"
"""The holder a candidate is compared with while no version holds the alias."""


class PromotionRefused(RegistryError, RuntimeError):
    """The gate refused a promotion; ``result`` is the recorded decision with its table."""

    def __init__(self, result: dict[str, Any]):
        self.result = result
        message = (
            f"promotion of {result['name']} version {result['version']} to '{result['alias']}' refused: "
            + "; ".join(result["reasons"])
        )
        super().__init__(message + ("\n" + result["markdown"] if result["table"] else ""))


class ConcurrentPromotion(RegistryError):
    """The alias moved while the gate ran: the decision is void; ``holder`` is the version holding it now."""

    def __init__(self, result: dict[str, Any], holder: str | None):
        self.result = result
        self.holder = holder
        super().__init__(
            f"promotion of {result['name']} version {result['version']} to '{result['alias']}' aborted: the "
            f"alias moved to {_label(result['name'], holder)} while the gate compared against "
            f"{result['holder']}; promote again to gate against the new holder"
        )


def promote(
    config: RegistryConfig,
    version: str | int,
    alias: str,
    *,
    gate_scores: GateScores,
    force: bool = False,
) -> dict[str, Any]:
    """Gate version ``version`` of ``config.name`` against the holder of ``alias`` (both scored by
    ``gate_scores``) and move the alias when it passes or ``force`` is set; returns the decision (name,
    version, alias, decision, holder, force, tolerance, reasons, table, markdown, by, at). Raises
    :class:`PromotionRefused` when refused and :class:`ConcurrentPromotion` when the alias moved meanwhile."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.tracking_uri)
    model = registered_model(client, config.name)
    candidate = model_version(client, config.name, version)
    holder = model.aliases.get(alias)
    if holder == candidate.version:
        raise RegistryError(f"version {holder} of '{config.name}' already holds alias '{alias}'")
    gate = config.gate
    if not gate.datasets and not force:
        raise ConfigError("gate.datasets is empty: configure the gate datasets (or promote with --force)")
    reasons, rows = [], []
    if tags.EXTRACTION_THRESHOLD not in candidate.tags:
        reasons.append("the candidate has no calibrated extraction threshold (register it with calibration)")
    if gate.datasets and (force or not reasons):
        logger.info("gate: version %s vs %s", candidate.version, _label(config.name, holder))
        before = gate_scores(_folder(config, holder), gate, config.cache_dir)
        after = gate_scores(_folder(config, candidate.version), gate, config.cache_dir)
        rows = rounded({"rows": compare(before, after, gate.metrics, gate.tolerance)})["rows"]
        regressed = sum(row["verdict"] == REGRESSED for row in rows)
        if regressed:
            reasons.append(f"{regressed} gate metric(s) dropped by more than {gate.tolerance}")
    decision = "refused" if reasons and not force else "forced" if reasons else "promoted"
    record = {
        "decision": decision,
        "alias": alias,
        "holder": _label(config.name, holder),
        "force": force,
        "tolerance": gate.tolerance,
        "reasons": reasons,
        "table": rows,
        **tags.stamp(),
    }
    result = {"name": config.name, "version": candidate.version, **record, "markdown": markdown(rows)}
    if decision == "refused":
        _record(client, config.name, candidate.version, alias, record)
        raise PromotionRefused(result)
    model = registered_model(client, config.name)  # compare ...
    current = model.aliases.get(alias)
    if current != holder:
        raise _conflict(client, result, record, current)
    history = alias_history(model, alias)
    if holder is not None and (not history or history[-1] != holder):
        history.append(holder)  # the alias was set outside the registry commands
    history.append(candidate.version)
    client.set_registered_model_alias(config.name, alias, candidate.version)  # ... and set
    current = registered_model(client, config.name).aliases.get(alias)
    if current != candidate.version:  # another promotion moved it between our read and our move
        raise _conflict(client, result, record, current)
    client.set_registered_model_tag(config.name, tags.alias_history_tag(alias), tags.dumps(history))
    _record(client, config.name, candidate.version, alias, record)
    logger.info("%s: '%s' → %s version %s", decision, alias, config.name, candidate.version)
    return {**result, "history": history}


def _record(client: Any, name: str, version: str, alias: str, record: dict[str, Any]) -> None:
    """Write the decision ``record`` as the version's ``workembed.promotion.<alias>`` tag."""
    client.set_model_version_tag(name, version, tags.promotion_tag(alias), tags.dumps(record))


def _conflict(
    client: Any, result: dict[str, Any], record: dict[str, Any], current: str | None
) -> ConcurrentPromotion:
    """Record the void decision (``conflict``, naming the new holder); the error to raise."""
    reason = f"the alias moved to {_label(result['name'], current)} while the gate ran"
    voided = {**record, "decision": "conflict", "reasons": [*record["reasons"], reason]}
    _record(client, result["name"], result["version"], result["alias"], voided)
    logger.warning("%s version %s: %s", result["name"], result["version"], reason)
    return ConcurrentPromotion(result | voided, current)


def rollback(config: RegistryConfig, alias: str, *, to: str | int | None = None) -> dict[str, Any]:
    """Move ``alias`` back to its previous holder (or to version ``to``); returns name, alias, from, to,
    history, by, at."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=config.tracking_uri)
    model = registered_model(client, config.name)
    holder = model.aliases.get(alias)
    if holder is None:
        raise RegistryError(f"no version of '{config.name}' holds alias '{alias}'")
    history = alias_history(model, alias)
    if to is None:
        while history and history[-1] == holder:
            history.pop()
        if not history:
            raise RegistryError(f"alias '{alias}' of '{config.name}' has no previous holder to roll back to")
        target = history[-1]
    else:
        target = model_version(client, config.name, to).version
        if target == holder:
            raise RegistryError(f"version {target} of '{config.name}' already holds alias '{alias}'")
        if target in history:  # back to its last turn: the turns after it are undone
            history = history[: len(history) - history[::-1].index(target)]
        else:
            history.append(target)
    record = {"from": holder, "to": target, **tags.stamp()}
    client.set_model_version_tag(config.name, target, tags.rollback_tag(alias), tags.dumps(record))
    move_alias(client, config.name, alias, target, history)
    logger.info("rolled back '%s' of %s: version %s → %s", alias, config.name, holder, target)
    return {"name": config.name, "alias": alias, **record, "history": history}


def alias_history(model: Any, alias: str) -> list[str]:
    """The versions that held ``alias``, oldest first (the registered model's history tag)."""
    value = model.tags.get(tags.alias_history_tag(alias))
    return [str(version) for version in json.loads(value)] if value else []


def move_alias(client: Any, name: str, alias: str, version: str, history: list[str]) -> None:
    """Point ``alias`` at ``version`` and store ``history`` (which ends with it)."""
    client.set_registered_model_alias(name, alias, version)
    client.set_registered_model_tag(name, tags.alias_history_tag(alias), tags.dumps(history))


def _folder(config: RegistryConfig, version: str | None):
    """The local folder of version ``version`` (downloaded once), or the baseline's name."""
    from workembed.models.mlflow_models import download_model

    if version is None:
        return BASELINE
    return download_model(f"models:/{config.name}/{version}", tracking_uri=config.tracking_uri)


def _label(name: str, version: str | None) -> str:
    return f"models:/{name}/{version}" if version is not None else BASELINE
