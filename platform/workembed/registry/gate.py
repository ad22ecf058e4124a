"""The promotion gate: compare the scores of a candidate and the alias holder on the gate datasets.

The scores come from a :class:`GateScores` (the evaluation, passed in by the command layer). For each gate
dataset ``d`` and metric ``m`` (means over the dataset's queries, as ``workembed eval`` reports
them) the row holds ``diff = candidate − holder``; it is a regression when ``holder − candidate > tolerance``
(strictly). The gate passes when no row regresses.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from workembed.formatting import DIGITS, format_cell
from workembed.registry.config import GateConfig

OK, REGRESSED = "ok", "regressed"
COLUMNS = ("dataset", "metric", "holder", "candidate", "diff", "verdict")


class GateScores(Protocol):
    """``{dataset: {metric: value}}`` of ``model`` (a model folder or ``minilm``) on the gate datasets: the
    evaluation :func:`~workembed.registry.promotion.promote` runs on the candidate and the holder. The
    command layer passes :func:`workembed.eval.gate.gate_scores`; the registry never imports evaluation."""

    def __call__(
        self, model: str | os.PathLike, gate: GateConfig, cache_dir: str | None
    ) -> dict[str, dict[str, float]]: ...


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
