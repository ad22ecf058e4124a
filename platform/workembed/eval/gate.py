"""The promotion gate's evaluation: a model's scores on the gate datasets (``workembed eval``'s runner).

:func:`gate_scores` is the :class:`~workembed.registry.gate.GateScores` the command layer hands to
:func:`~workembed.registry.promotion.promote`; the comparison itself is :mod:`workembed.registry.gate`.
"""

from __future__ import annotations

import math
import os

from workembed.errors import DatasetError
from workembed.registry.config import GateConfig


def gate_scores(
    model: str | os.PathLike, gate: GateConfig, cache_dir: str | None
) -> dict[str, dict[str, float]]:
    """``{dataset: {metric: value}}`` of ``model`` (a model folder or ``minilm``) on the gate datasets."""
    from workembed.eval.runner import EvalConfig, evaluate

    settings = gate.model_dump(include={"datasets", "batch_size", "max_length", "device"})
    report = evaluate(EvalConfig(model=str(model), cache_dir=cache_dir, tracking_uri=None, **settings))
    scores = {}
    for dataset, systems in report["results"].items():
        values = {metric: systems[report["model"]][metric] for metric in gate.metrics}
        if any(math.isnan(value) for value in values.values()):
            raise DatasetError(f"gate dataset '{dataset}' has no query with a positive judgement")
        scores[dataset] = values
    return scores
