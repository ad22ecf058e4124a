"""Bar charts of an evaluation report: per dataset, one bar per system (the model, the baselines)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from workembed.eval.metrics import METRICS

PLOT_METRICS: tuple[str, ...] = ("rp@5", "map")


def metric_bars(report: Mapping[str, Any], metric: str, path: str | Path) -> Path:
    """Write a PNG of ``metric`` grouped by dataset, one bar (labelled with its value) per system; a
    missing or NaN value (no query with a positive judgement) draws an empty bar labelled '–'."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}': choose from {', '.join(METRICS)}")
    results: Mapping[str, Mapping[str, Mapping[str, Any]]] = report["results"]
    datasets = list(results)
    systems = list(dict.fromkeys(system for dataset in datasets for system in results[dataset]))
    width = 0.8 / max(len(systems), 1)

    inches = min(max(6.0, 2.0 + 0.5 * len(datasets) * len(systems)), 20.0)
    figure = Figure(figsize=(inches, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for index, system in enumerate(systems):
        values = [_value(results[dataset].get(system, {}).get(metric)) for dataset in datasets]
        positions = [position + (index - (len(systems) - 1) / 2) * width for position in range(len(datasets))]
        bars = axes.bar(
            positions, [0.0 if math.isnan(value) else value for value in values], width, label=system
        )
        labels = ["–" if math.isnan(value) else f"{value:.3f}" for value in values]
        axes.bar_label(bars, labels=labels, fontsize=7, padding=2)
    tilted = len(datasets) > 3
    axes.set_xticks(
        range(len(datasets)), datasets, rotation=20 if tilted else 0, ha="right" if tilted else "center"
    )
    axes.set_ylim(0, 1.1)
    axes.set_ylabel(metric)
    axes.set_title(
        f"{metric} — model {report.get('model')}, scorer {report.get('scorer')}, top {report.get('k')}"
    )
    figure.legend(loc="outside lower center", ncols=min(len(systems), 4), fontsize=8)
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png", dpi=120)
    return target


def _value(value: Any) -> float:
    return math.nan if value is None else float(value)
