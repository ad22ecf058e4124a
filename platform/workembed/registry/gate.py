"""The promotion gate: evaluate a candidate and the alias holder on the gate datasets and compare.

For each gate dataset ``d`` and metric ``m`` (means over the dataset's queries, as ``workembed eval`` reports
them) the row holds ``diff = candidate − holder``; it is a regression when ``holder − candidate > tolerance``
(strictly). The gate passes when no row regresses.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from workembed.eval.report import DIGITS, format_cell
from workembed.eval.scoring import Log
from workembed.registry.config import GateConfig

OK, REGRESSED = "ok", "regressed"
COLUMNS = ("dataset", "metric", "holder", "candidate", "diff", "verdict")


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


def compare(
    holder: Mapping[str, Mapping[str, float]],
    candidate: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str],
    tolerance: float,
) -> list[dict[str, Any]]:
    """One row per (dataset, metric): holder, candidate, ``diff = candidate − holder`` and the verdict
    (``regressed`` when ``holder − candidate > tolerance``, else ``ok``)."""
    rows = []
    for dataset, values in candidate.items():
        for metric in metrics:
            before, after = holder[dataset][metric], values[metric]
            verdict = REGRESSED if before - after > tolerance else OK
            row = (dataset, metric, before, after, after - before, verdict)
            rows.append(dict(zip(COLUMNS, row, strict=True)))
    return rows


def markdown(rows: Sequence[Mapping[str, Any]], digits: int = DIGITS) -> str:
    """The rows as a Markdown table (numbers with ``digits`` decimals, diff signed)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for row in rows:
        diff = f"{row['diff']:+.{digits}f}"
        cells = [row["dataset"], row["metric"], format_cell(row["holder"], digits)]
        cells += [format_cell(row["candidate"], digits), diff, row["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
