"""The promotion gate's evaluation: a model's scores on the gate datasets (``workembed eval``'s runner).

:func:`gate_scores` is the :class:`~workembed.registry.gate.GateScores` the command layer hands to
:func:`~workembed.registry.promotion.promote`; the comparison itself is :mod:`workembed.registry.gate`.
"""

from __future__ import annotations

import math
import os

from workembed.log import Log
from workembed.registry.config import GateConfig


def gate_scores(
    model: str | os.PathLike, gate: GateConfig, cache_dir: str | None, log: Log | None = None
) -> dict[str, dict[str, float]]:
    """``{dataset: {metric: value}}`` of ``model`` (a model folder or ``minilm``) on the gate datasets."""
    from workembed.config import resolve_data_path
    from workembed.eval.runner import evaluate
    from workembed.models import Encoder

    encoder = Encoder(model, max_length=gate.max_length, batch_size=gate.batch_size, device=gate.device)
    report = evaluate(
        [resolve_data_path(location) for location in gate.datasets],
        model=encoder,
        cache_dir=cache_dir,
        log=log,
    )
    scores = {}
    for dataset, systems in report["results"].items():
        values = {metric: systems[report["model"]][metric] for metric in gate.metrics}
        if any(math.isnan(value) for value in values.values()):
            raise ValueError(f"gate dataset '{dataset}' has no query with a positive judgement")
        scores[dataset] = values
    return scores
