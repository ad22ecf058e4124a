"""The model card of a trained model: Markdown generated from its evaluation reports and training record.

Inputs are the reports the platform writes: ``workembed eval`` over the development sets for the model (with
the BM25 baseline) and for the zero-shot encoder, ``workembed eval extraction`` for both (the model's with
its non-skill filter on), the filter's report, and the training record (resolved config, data fingerprint
and graph summary, per-step metrics). The card states every target of the reference recipe, met or missed,
with the figure it was judged on; the training curves go to a PNG beside it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CARD_FILE = "MODEL_CARD.md"
CURVES_FILE = "training-curves.png"
ESCO_TASKS = ("job-skill", "skill-job", "skill-normalization", "job-normalization")
ESCO_MAP_MARGIN = 0.05
TABLE_METRICS = ("map", "mrr", "rp@5")


@dataclass(frozen=True)
class Target:
    """A development-set figure the model must reach."""

    dataset: str
    metric: str
    minimum: float


TARGETS = (
    Target("skill-extraction-tech", "rp@5", 0.60),
    Target("skill-extraction-house", "rp@5", 0.50),
    Target("jobbert-titles", "mrr", 0.55),
)


@dataclass
class CardInputs:
    """What a card is made of (see the module docstring); reports as the evaluation commands write them."""

    name: str
    model: str  # the model's system name in ``evaluation`` (its --model value)
    zero_shot: str  # the zero-shot encoder's system name in ``zero_shot_evaluation``
    evaluation: Mapping[str, Any]
    zero_shot_evaluation: Mapping[str, Any]
    training: Mapping[str, Any] = field(default_factory=dict)
    curves: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    extraction: Mapping[str, Any] | None = None
    zero_shot_extraction: Mapping[str, Any] | None = None
    skill_filter: Mapping[str, Any] | None = None
    heads: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # head name → its evaluation report
    compare_steps: int | None = None
    registry: Mapping[str, Any] | None = None  # the recipe's registration and gate decision


def _metric(report: Mapping[str, Any], dataset: str, system: str, metric: str) -> float | None:
    value = report.get("results", {}).get(dataset, {}).get(system, {}).get(metric)
    return None if value is None else float(value)


def target_checks(inputs: CardInputs) -> list[dict[str, Any]]:
    """Every target: the recipe's fixed minimums, each ESCO task's MAP at least ``ESCO_MAP_MARGIN`` above
    zero-shot, and no development set below zero-shot on MAP. A missing figure is a missed target."""
    checks = []
    for target in TARGETS:
        value = _metric(inputs.evaluation, target.dataset, inputs.model, target.metric)
        checks.append(
            {
                "check": f"{target.dataset} {target.metric} ≥ {target.minimum:g}",
                "value": value,
                "baseline": _metric(
                    inputs.zero_shot_evaluation, target.dataset, inputs.zero_shot, target.metric
                ),
                "met": value is not None and value >= target.minimum,
            }
        )
    for dataset in sorted(set(inputs.evaluation.get("results", {})) | set(ESCO_TASKS)):
        model = _metric(inputs.evaluation, dataset, inputs.model, "map")
        base = _metric(inputs.zero_shot_evaluation, dataset, inputs.zero_shot, "map")
        margin = ESCO_MAP_MARGIN if dataset in ESCO_TASKS else 0.0
        ok = model is not None and base is not None and model >= base + margin - 1e-12
        label = f"{dataset} MAP ≥ zero-shot + {margin:g}" if margin else f"{dataset} MAP ≥ zero-shot"
        checks.append({"check": label, "value": model, "baseline": base, "met": ok})
    return checks


def training_time(
    curves: Mapping[str, Sequence[tuple[int, float]]], batch_size: int | None, steps: int | None
) -> dict | None:
    """Minutes and mean throughput of ``steps`` training steps, from the logged steps' measured pairs/s (each
    the batch over that step's time; a step logged twice, as after a resume, counts once with its last
    value): the logged steps' mean time times ``steps``."""
    by_step = dict(curves.get("pairs_per_s", ()))
    if not batch_size or not steps or not by_step:
        return None
    step_s = sum(batch_size / rate for rate in by_step.values()) / len(by_step)
    return {
        "steps": steps,
        "logged": len(by_step),
        "minutes": step_s * steps / 60,
        "pairs_per_s": batch_size / step_s,
    }


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path: Path) -> Path | None:
    """One panel per metric (step on x); None when there is nothing to plot."""
    series = {name: points for name, points in curves.items() if points}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(series), 1, figsize=(7, 2.4 * len(series)), squeeze=False)
    for axis, (name, points) in zip(axes[:, 0], sorted(series.items()), strict=True):
        steps, values = zip(*sorted(points), strict=True)
        axis.plot(steps, values)
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def model_card(inputs: CardInputs, curves_file: str | None = None) -> str:
    """The card's Markdown."""
    datasets = list(inputs.evaluation.get("results", {}))
    lines = [f"# Model card: {inputs.name}", ""]
    lines += ["## Targets", "", "| target | value | zero-shot | met |", "| --- | ---: | ---: | --- |"]
    for check in target_checks(inputs):
        met = "yes" if check["met"] else "**no**"
        lines.append(
            f"| {check['check']} | {_cell(check['value'])} | {_cell(check.get('baseline'))} | {met} |"
        )
    lines += ["", "## Development sets", ""]
    header = ["dataset"] + [
        f"{system} {m.upper()}" for system in ("zero-shot", "model", "BM25") for m in TABLE_METRICS
    ]
    lines += ["| " + " | ".join(header) + " |", "| --- |" + " ---: |" * (len(header) - 1)]
    for dataset in datasets:
        cells = [_metric(inputs.zero_shot_evaluation, dataset, inputs.zero_shot, m) for m in TABLE_METRICS]
        cells += [_metric(inputs.evaluation, dataset, inputs.model, m) for m in TABLE_METRICS]
        cells += [_metric(inputs.evaluation, dataset, "bm25", m) for m in TABLE_METRICS]
        lines.append("| " + " | ".join([dataset, *map(_cell, cells)]) + " |")
    lines += _heads_section(inputs)
    lines += _extraction_section(inputs)
    lines += _filter_section(inputs.skill_filter)
    lines += _registry_section(inputs.registry)
    lines += ["", "## Training", ""]
    recipe = inputs.training.get("config", {})
    timing = training_time(inputs.curves, recipe.get("batch_size"), recipe.get("steps"))
    if timing:
        lines += [
            f"{timing['steps']} steps in {timing['minutes']:.1f} minutes of training steps "
            f"({timing['pairs_per_s']:.1f} pairs/s: the mean measured time of the {timing['logged']} logged "
            "steps; loading the graph and starting the workers not included).",
            "",
        ]
    if curves_file:
        lines += [f"![training curves]({curves_file})", ""]
    lines += ["```json", json.dumps(dict(inputs.training), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _heads_section(inputs: CardInputs) -> list[str]:
    """MAP of each compared head (a report's system is its one model) on each dataset it was evaluated on."""
    if not inputs.heads:
        return []
    datasets = sorted({d for report in inputs.heads.values() for d in report.get("results", {})})
    steps = f", {inputs.compare_steps} training steps each" if inputs.compare_steps else ""
    lines = ["", f"## Head comparison (MAP{steps})", ""]
    lines += ["| head | " + " | ".join(datasets) + " |", "| --- |" + " ---: |" * len(datasets)]
    for head, report in inputs.heads.items():
        system = str(report.get("model"))
        cells = [_metric(report, dataset, system, "map") for dataset in datasets]
        lines.append(f"| {head} | " + " | ".join(map(_cell, cells)) + " |")
    return lines


def _extraction_section(inputs: CardInputs) -> list[str]:
    if inputs.extraction is None:
        return []
    lines = ["", "## Skill extraction (calibrated threshold, test part)", ""]
    lines += [
        "| dataset | system | threshold | P | R | F1 | F1 after redundancy filter | redundancy removed |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, report in (("zero-shot", inputs.zero_shot_extraction), ("model", inputs.extraction)):
        for dataset, result in (report or {}).get("results", {}).items():
            test, filtered = result["test"], result["filtered"]
            cells = [result["threshold"], test["precision"], test["recall"], test["f1"], filtered["f1"]]
            lines.append(
                f"| {dataset} | {label} | "
                + " | ".join(_cell(v) for v in cells)
                + f" | {_cell(result['redundancy'])} |"
            )
            screened = result.get("with_skill_filter")
            if screened:
                cells = [screened["precision"], screened["recall"], screened["f1"]]
                lines.append(
                    f"| {dataset} | {label} + non-skill filter ({screened['dropped_sentences']} dropped) | "
                    f"{_cell(result['threshold'])} | " + " | ".join(map(_cell, cells)) + " | – | – |"
                )
    return lines


def _filter_section(report: Mapping[str, Any] | None) -> list[str]:
    if not report:
        return []
    dev, train = report["dev"], report["train"]
    return [
        "",
        "## Non-skill sentence filter (SkillSpan)",
        "",
        f"Fitted on {train['used']} SkillSpan train sentences ({train['benchmark_sentences_dropped']} "
        "left out as benchmark sentences); on SkillSpan dev "
        f"({dev['sentences']} sentences, {dev['with_skill']} with a skill): "
        f"precision {dev['precision']:.3f}, recall {dev['recall']:.3f}, {dev['dropped']:.1%} of sentences "
        "dropped.",
    ]


def _registry_section(record: Mapping[str, Any] | None) -> list[str]:
    """The registered version, its threshold and the promotion gate's decision with its table."""
    if not record:
        return []
    threshold = record.get("threshold")
    lines = [
        "",
        "## Registry",
        "",
        f"Registered as `{record['name']}` version {record['version']} ({record['tracking_uri']}); "
        f"extraction threshold {_cell(threshold)}. Promotion to '{record['alias']}' against "
        f"{record['holder']}: **{record['decision']}**"
        + (f" ({'; '.join(record['reasons'])})" if record.get("reasons") else "")
        + ".",
    ]
    if record.get("gate"):
        lines += [
            "",
            "| dataset | metric | holder | candidate | diff | verdict |",
            "| --- | --- | ---: | ---: | ---: | --- |",
        ]
        for row in record["gate"]:
            cells = [_cell(row[key]) for key in ("holder", "candidate", "diff")]
            lines.append(
                f"| {row['dataset']} | {row['metric']} | " + " | ".join(cells) + f" | {row['verdict']} |"
            )
    return lines


def write_model_card(inputs: CardInputs, out: str | Path) -> Path:
    """Write ``MODEL_CARD.md`` (and ``training-curves.png``) into ``out``; returns the card's path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(inputs.curves, folder / CURVES_FILE)
    card = folder / CARD_FILE
    card.write_text(model_card(inputs, curves.name if curves else None), encoding="utf-8")
    return card
