"""Evaluation reports: metrics rounded for reading, written as JSON, a Markdown table and bar charts, and
logged to MLflow (:func:`publish_report`, shared by every evaluation runner)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workembed.config import public_dump
from workembed.errors import ConfigError
from workembed.eval.metrics import METRICS
from workembed.eval.plots import PLOT_METRICS, metric_bars
from workembed.formatting import DIGITS, format_cell, rounded
from workembed.tracking import log_evaluation, safe_name

if TYPE_CHECKING:
    from workembed.eval.runner import EncoderEvalConfig

logger = logging.getLogger(__name__)

ReportWriter = Callable[[Mapping[str, Any], Path], dict[str, Any]]
"""``(report, out) → files``: writes the report files of ``out`` and names them: ``{"out": <json>,
"markdown": <md>}``, with ``"plots": {name: <png>}`` when it draws charts."""


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
        raise ConfigError(f"out '{out}' must not end in .md: the Markdown table is written beside it")
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
        raise ConfigError(f"unknown plot metric(s) {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    json_path, md_path = write_json_and_markdown(report, out, markdown_table(report))
    written: dict[str, Path] = {"json": json_path, "markdown": md_path}
    for metric in plots:
        png = json_path.with_name(f"{json_path.stem}-{safe_name(metric)}.png")
        written[metric] = metric_bars(report, metric, png)
    return written


def publish_report(
    report: Mapping[str, Any],
    config: EncoderEvalConfig,
    write: ReportWriter,
    scratch_name: str,
) -> dict[str, Any]:
    """The rounded ``report``; with ``config.out`` the files ``write(report, out)`` writes and names join it
    (``out``, ``markdown``, ``plots``); with ``config.tracking_uri`` the run is logged to MLflow and its id
    joins it as ``mlflow_run_id``: named after the report's model (``baselines`` without one), the config
    (less the URI) as parameters, every number of ``results`` as a metric and the report files as artifacts,
    written to a temporary folder as ``scratch_name`` (e.g. ``eval.json``) when ``out`` is unset."""
    result = rounded(report)
    files: dict[str, Any] = {}
    if config.out is not None:
        files = write(report, Path(config.out))
        result.update(files)
        if "plots" in files:
            logger.info("wrote %s, %s and %d plot(s)", files["out"], files["markdown"], len(files["plots"]))
        else:
            logger.info("wrote %s and %s", files["out"], files["markdown"])
    if config.tracking_uri is not None:
        result["mlflow_run_id"] = log_evaluation(
            config.tracking_uri,
            config.experiment,
            str(report.get("model") or "baselines"),
            public_dump(config, exclude={"tracking_uri"}),
            result["results"],
            report_paths(files),
            lambda folder: report_paths(write(report, folder / scratch_name)),
        )
        logger.info("logged MLflow run %s to experiment '%s'", result["mlflow_run_id"], config.experiment)
    return result


def report_paths(files: Mapping[str, Any]) -> list[Path]:
    """The paths a :data:`ReportWriter` names (none for ``{}``): the JSON, the Markdown, then the plots."""
    if not files:
        return []
    return [Path(files["out"]), Path(files["markdown"]), *map(Path, files.get("plots", {}).values())]
