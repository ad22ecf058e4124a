"""Plots of the skill-extraction evaluation: precision, recall and F1 against the threshold."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def plot_threshold_curve(
    table: Mapping[str, Sequence[float]], threshold: float, path: str | Path, title: str | None = None
) -> Path:
    """Write a PNG of micro precision, recall and F1 against the threshold (``table`` as
    :func:`workembed.eval.extraction_metrics.threshold_table` returns it, arrays or lists) with ``threshold``
    marked by a dashed line; return the path. Renders with the Agg backend, without touching pyplot's
    state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    thresholds = np.asarray(table["threshold"], dtype=np.float64)
    if thresholds.size == 0:
        raise ValueError("the threshold table is empty: nothing to plot")
    f1 = np.asarray(table["f1"], dtype=np.float64)
    chosen_f1 = f1[int(np.argmin(np.abs(thresholds - threshold)))]
    figure = Figure(figsize=(6.4, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, label in (("precision", "precision"), ("recall", "recall"), ("f1", "F1")):
        axes.plot(thresholds, np.asarray(table[key], dtype=np.float64), label=label)
    axes.axvline(
        threshold, color="black", linestyle="--", label=f"threshold {threshold:.2f} (F1 {chosen_f1:.3f})"
    )
    axes.set(xlabel="threshold", ylabel="micro score", ylim=(0.0, 1.02), title=title or "")
    axes.grid(alpha=0.3)
    axes.legend(loc="best")
    out = Path(path).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    return out
