"""The registry operations that evaluate, with :mod:`workembed.eval` wired in (command layer).

The registry (:mod:`workembed.registry`) never imports evaluation: registration takes the extraction
calibration as a :class:`~workembed.registry.register.Calibrate` and promotion the gate's scores as a
:class:`~workembed.registry.gate.GateScores`. The functions here pass the evaluation's
(:func:`workembed.eval.calibration.calibrate`, :func:`workembed.eval.gate.gate_scores`): ``workembed models
register|promote``, the ``register`` / ``promote`` stages of the stage table and the reference recipe run
through them.
"""

from __future__ import annotations

import os
from typing import Any

from workembed.eval.calibration import calibrate
from workembed.eval.gate import gate_scores
from workembed.registry import jobs, promotion, register
from workembed.registry.config import RegistryConfig


def register_model(
    config: RegistryConfig,
    *,
    model_dir: str | os.PathLike | None = None,
    run_id: str | None = None,
    report: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """:func:`~workembed.registry.register.register_model`, calibrating the extraction threshold with
    ``workembed eval extraction``'s protocol."""
    return register.register_model(
        config, calibrate=calibrate, model_dir=model_dir, run_id=run_id, report=report
    )


def promote(config: RegistryConfig, version: str | int, alias: str, *, force: bool = False) -> dict[str, Any]:
    """:func:`~workembed.registry.promotion.promote`, scoring the gate with ``workembed eval``'s runner."""
    return promotion.promote(config, version, alias, gate_scores=gate_scores, force=force)


def run_register(config: jobs.RegisterStageConfig) -> dict[str, Any]:
    """The ``register`` stage: :func:`~workembed.registry.jobs.run_register` with the calibration."""
    return jobs.run_register(config, calibrate=calibrate)


def run_promote(config: jobs.PromoteStageConfig) -> dict[str, Any]:
    """The ``promote`` stage: :func:`~workembed.registry.jobs.run_promote` with the gate's scores."""
    return jobs.run_promote(config, gate_scores=gate_scores)
