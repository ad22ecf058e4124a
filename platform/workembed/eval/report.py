"""Evaluation reports: metrics rounded for reading, written as JSON, a Markdown table and bar charts."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from workembed.eval.metrics import METRICS
from workembed.eval.plots import PLOT_METRICS, metric_bars
from workembed.formatting import DIGITS, format_cell, rounded
from workembed.tracking import safe_name


def markdown_table(report: Mapping[str, Any], digits: int = DIGITS) -> str:
    """One row per (dataset, system): evaluated queries and every metric of :data:`METRICS`."""
    header = ["dataset", "system", "queries", *METRICS]
    lines = [
        f"Model `{report.get('model')}`, scorer `{report.get('scorer')}`, top {report.get('k')}.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---", "---"] + ["---:"] * (len(header) - 2)) + " |",
    ]
    for dataset, systems in report["results"].items():
        for system, values in systems.items():
            cells = [format_cell(values.get(name), digits) for name in METRICS]
            lines.append(f"| {dataset} | {system} | {values['n_queries']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_json_and_markdown(report: Mapping[str, Any], out: str | Path, markdown: str) -> tuple[Path, Path]:
    """Write ``out`` (the rounded report as JSON) and ``markdown`` beside it (``out`` with suffix ``.md``);
    return both paths."""
    json_path = Path(out).expanduser()
    md_path = json_path.with_suffix(".md")
    if md_path == json_path:
        raise ValueError(f"out '{out}' must not end in .md: the Markdown table is written beside it")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(rounded(report), indent=2) + "\n", encoding="utf-8")
    md_path.write_text(markdown, encoding="utf-8")
    return json_path, md_path


def write_report(
    report: Mapping[str, Any], out: str | Path, plots: Sequence[str] = PLOT_METRICS
) -> dict[str, Path]:
    """Write ``out`` (rounded JSON), ``out`` with suffix ``.md`` (Markdown table) and, per metric of
    ``plots``, a bar chart ``<stem>-<metric>.png`` beside them (``rp@5`` → ``rp_at_5``).

    Returns the paths written: ``{'json': ..., 'markdown': ..., <metric>: <png>, ...}``.
    """
    unknown = [metric for metric in plots if metric not in METRICS]
    if unknown:
        raise ValueError(f"unknown plot metric(s) {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    json_path, md_path = write_json_and_markdown(report, out, markdown_table(report))
    written: dict[str, Path] = {"json": json_path, "markdown": md_path}
    for metric in plots:
        png = json_path.with_name(f"{json_path.stem}-{safe_name(metric)}.png")
        written[metric] = metric_bars(report, metric, png)
    return written
