"""``make reference``: the reference model recipe end to end, resumable.

Steps, each skipped when its output is already there (so an interrupted run picks up where it stopped, and a
training run resumes from its last checkpoint):

1. ``tasks``: the held-apart ESCO tasks (``<tasks>/esco``, with ``split.json``) and the development sets
   (``<tasks>/benchmarks``);
2. ``ingest``: every job-ad set of ``ingest`` into ``runs/ingest/<name>`` (its ``edges`` feed training);
3. ``train``: ``train`` with the ingest edges, the split and MLflow tracking (a SQLite store under
   ``runs/<name>`` when no tracking URI is given), the model into ``runs/models/<name>``;
4. ``filter``: the model's non-skill sentence filter (``filter``);
5. ``evaluate``: the model (with BM25) and the zero-shot encoder on the ESCO tasks and development sets, and
   the skill-extraction protocol for both (the model's with its filter on);
6. ``compare``: each head of ``heads`` trained ``compare_steps`` steps and evaluated on the selection sets;
7. ``register``: the model registered as a version of ``registered_model`` in the training run's MLflow
   (extraction threshold calibrated on the skill-extraction validation sets) and promoted to ``alias``
   through the gate (the zero-shot encoder, or the alias holder, on ``gate_sets``); the decision goes to
   ``<out>/registry.json``, which ``make demo`` reads to serve the model;
8. ``card``: ``MODEL_CARD.md`` and the training curves in ``out``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from workembed.config import Config, load_config, public_dump
from workembed.model_card import ESCO_TASKS

logger = logging.getLogger("workembed.reference")  # also when run as __main__

DEV_SETS = ("skill-extraction-house", "skill-extraction-tech", "skillskape-dev", "jobbert-titles")
EXTRACTION_SETS = ("skill-extraction-house", "skill-extraction-tech")
CURVE_METRICS = ("loss", "lr", "pairs_per_s")
REGISTRY_FILE = "registry.json"


class ReferenceConfig(Config):
    """Settings of ``make reference`` (``python -m workembed.reference``)."""

    name: str = Field("reference", description="Run name: of the ingest run, the training run and the model.")
    train: str = Field("jobs/configs/train_reference.yaml", description="The training recipe.")
    train_set: list[str] = Field(default_factory=list, description="key=value overrides of the recipe.")
    ingest: str = Field("jobs/configs/ingest.yaml", description="The ingest config (every job-ad set).")
    ingest_set: list[str] = Field(
        default_factory=list,
        description="key=value overrides of the ingest config (jobs/configs/reference.yaml grounds sentences "
        "lexically: embedding all 334k sentences would take over an hour on 2 CPU cores).",
    )
    filter: str = Field("jobs/configs/filter.yaml", description="The non-skill filter config.")
    esco: str = Field("esco/v1.1.1", description="ESCO export of the evaluation tasks.")
    tasks: str = Field("eval-tasks", description="Folder of the evaluation tasks (esco/, benchmarks/).")
    zero_shot: str = Field("minilm", description="The zero-shot encoder compared against.")
    tracking_uri: str | None = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI"),
        description="MLflow of the training run; null: a SQLite store in runs/<name>/mlflow.db.",
    )
    out: str = Field("reports/reference", description="Evaluation reports, the model card and its curves.")
    heads: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"name": "mean"}, {"name": "late-interaction", "temperature": 0.05}],
        description="Heads compared at `compare_steps` steps each (otherwise the recipe as it is), on "
        "SkillSkape dev and the held-apart ESCO tasks ('token-attention' trains as 'late-interaction'); "
        "empty: no comparison.",
    )
    compare_steps: int = Field(60, ge=1, description="Training steps of each head in the comparison.")
    registered_model: str = Field(
        "workembed-reference", min_length=1, description="Registered model name of the reference model."
    )
    alias: str = Field("champion", min_length=1, description="Alias the gate may move to the new version.")
    gate_sets: list[str] = Field(
        default_factory=lambda: (
            [f"esco/{name}" for name in ESCO_TASKS] + [f"benchmarks/{n}" for n in DEV_SETS]
        ),
        description="Gate datasets, relative to `tasks`: the candidate may not fall behind the holder on any "
        "(default: every ESCO task and development set, i.e. no dev task below zero-shot).",
    )
    gate_metrics: list[str] = Field(default_factory=lambda: ["map", "mrr"], description="Metrics gated.")
    gate_tolerance: float = Field(0.005, ge=0, description="Largest allowed drop of a gated metric.")


def run_reference(config: ReferenceConfig) -> dict[str, Any]:
    """Run the recipe's steps that are not done yet; returns where everything is."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = Path(config.tasks)
    build_tasks(config, tasks)
    edges = ingest(config)
    train_config = training_config(config, edges, tasks)
    model = train(train_config)
    fit_filter(config, model)
    reports = evaluate(config, model, tasks, out)
    comparison = compare_heads(config, edges, tasks, out)
    registry = register(config, model, tasks, out)
    from workembed.model_card import CardInputs, write_model_card

    run = _mlflow_run(train_config, model)
    card = write_model_card(
        CardInputs(
            name=config.name,
            model=str(model),
            zero_shot=config.zero_shot,
            evaluation=reports["model"],
            zero_shot_evaluation=reports["zero-shot"],
            extraction=reports["model-extraction"],
            zero_shot_extraction=reports["zero-shot-extraction"],
            skill_filter=json.loads((model / "skill_filter_report.json").read_text(encoding="utf-8")),
            training=training_record(train_config, model, run),
            curves=training_curves(train_config, run),
            heads=comparison,
            compare_steps=config.compare_steps,
            registry=registry,
        ),
        out,
    )
    logger.info("model card: %s", card)
    return {"model": str(model), "card": str(card), "reports": {k: str(out / f"{k}.json") for k in reports}}


def build_tasks(config: ReferenceConfig, tasks: Path) -> None:
    from workembed.eval.converters import ConvertConfig, run_convert
    from workembed.eval.esco_tasks import BuildTasksConfig, run_build_tasks
    from workembed.taxonomy import EscoConfig

    if not (tasks / "esco" / "split.json").is_file():
        logger.info("building the ESCO evaluation tasks into %s", tasks / "esco")
        run_build_tasks(BuildTasksConfig(esco=EscoConfig(location=config.esco), out=str(tasks / "esco")))
    if not all((tasks / "benchmarks" / name).is_dir() for name in DEV_SETS):
        logger.info("converting the development sets into %s", tasks / "benchmarks")
        run_convert(ConvertConfig(esco=EscoConfig(location=config.esco), out=str(tasks / "benchmarks")))


def ingest(config: ReferenceConfig) -> Path:
    """The ingest run's ``edges`` folder (ingesting first unless its summary is there)."""
    from workembed.data.config import IngestConfig
    from workembed.data.ingest import run_ingest

    ingest_config = load_config(IngestConfig, config.ingest, [f"run_id={config.name}", *config.ingest_set])
    run = Path(ingest_config.output) / config.name
    if not (run / "summary.json").is_file():
        logger.info("ingesting every job-ad set into %s", run)
        run_ingest(ingest_config)
    return (run / "edges").resolve()


def training_config(config: ReferenceConfig, edges: Path, tasks: Path, extra: list[str] = ()):
    """The recipe with the run's name, data and tracking; ``extra`` overrides go last."""
    from workembed.train.config import TrainConfig

    overrides = [
        f"run_name={config.name}",
        f"data.edges=[{json.dumps(str(edges))}]",
        f"data.split={(tasks / 'esco' / 'split.json').resolve()}",
        f"tracking.tracking_uri={tracking_uri(config)}",
        *config.train_set,
        *extra,
    ]
    return load_config(TrainConfig, config.train, overrides)


def tracking_uri(config: ReferenceConfig) -> str:
    """The MLflow of the recipe's runs and registry: ``tracking_uri``, else ``runs/<name>/mlflow.db``."""
    if config.tracking_uri is not None:
        return config.tracking_uri
    store = Path("runs") / config.name / "mlflow.db"
    store.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store.resolve()}"


def train(train_config) -> Path:
    """The model folder (training first, or resuming, unless it is there)."""
    from workembed.train.trainer import run_train

    model = (Path(train_config.output) / train_config.run_name).resolve()
    if not (model / "workembed.json").is_file():
        logger.info(
            "training %s: %d steps of %d pairs",
            train_config.run_name,
            train_config.steps,
            train_config.batch_size,
        )
        run_train(train_config)
    return model


def fit_filter(config: ReferenceConfig, model: Path) -> None:
    from workembed.train.skill_filter import SkillFilterConfig, run_skill_filter

    if not (model / "skill_filter.json").is_file():
        logger.info("fitting the non-skill sentence filter")
        run_skill_filter(load_config(SkillFilterConfig, config.filter, [f"model={model}", "out=null"]))


def evaluate(config: ReferenceConfig, model: Path, tasks: Path, out: Path) -> dict[str, Any]:
    """The four reports (model, zero-shot; ranking and extraction), computed unless already written."""
    from workembed.eval.extraction_benchmark import ExtractionEvalConfig, run_extraction_eval
    from workembed.eval.runner import EvalConfig, run_eval

    datasets = folders(tasks, "esco", ESCO_TASKS) + folders(tasks, "benchmarks", DEV_SETS)
    extraction = folders(tasks, "benchmarks", EXTRACTION_SETS)
    runs = {
        "model": lambda path: run_eval(
            EvalConfig(model=str(model), datasets=datasets, baselines=True, out=str(path))
        ),
        "zero-shot": lambda path: run_eval(
            EvalConfig(model=config.zero_shot, datasets=datasets, out=str(path))
        ),
        "model-extraction": lambda path: run_extraction_eval(
            ExtractionEvalConfig(model=str(model), datasets=extraction, skill_filter="model", out=str(path)),
        ),
        "zero-shot-extraction": lambda path: run_extraction_eval(
            ExtractionEvalConfig(model=config.zero_shot, datasets=extraction, out=str(path))
        ),
    }
    return {name: cached_report(out / f"{name}.json", run) for name, run in runs.items()}


def folders(tasks: Path, group: str, names: Sequence[str]) -> list[str]:
    """The dataset folders ``<tasks>/<group>/<name>``."""
    return [str(tasks / group / name) for name in names]


def cached_report(path: Path, run: Callable[[Path], Any]) -> dict[str, Any]:
    """The JSON report at ``path``, written by ``run(path)`` first unless it is already there."""
    if not path.is_file():
        logger.info("evaluating: %s", path.stem)
        run(path)
    return json.loads(path.read_text(encoding="utf-8"))


COMPARE_SETS = ("skillskape-dev",)


def compare_heads(config: ReferenceConfig, edges: Path, tasks: Path, out: Path) -> dict[str, Any]:
    """Each head of ``heads`` trained ``compare_steps`` steps (run ``<name>-<head>``) and evaluated on
    SkillSkape dev and the held-apart ESCO tasks (late interaction scored as it trains); reports by head."""
    from workembed.eval.runner import EvalConfig, run_eval
    from workembed.models.heads import HeadConfig
    from workembed.train.config import TOKEN_HEADS

    datasets = folders(tasks, "esco", ESCO_TASKS) + folders(tasks, "benchmarks", COMPARE_SETS)

    def trained_and_evaluated(head: HeadConfig) -> Callable[[Path], Any]:
        def run(path: Path) -> Any:
            overrides = [
                f"steps={config.compare_steps}",
                f"model.head={json.dumps(head.model_dump(exclude_defaults=True) | {'name': head.name})}",
            ]
            renamed = config.model_copy(update={"name": f"{config.name}-{head.name}"})
            model = train(training_config(renamed, edges, tasks, overrides))
            scorer = "late-interaction" if head.name in TOKEN_HEADS else "cosine"
            evaluation = EvalConfig(
                model=str(model),
                datasets=datasets,
                scorer=scorer,
                temperature=head.temperature,
                out=str(path),
            )
            return run_eval(evaluation)

        return run

    heads = [HeadConfig.model_validate(settings) for settings in config.heads]
    return {
        head.name: cached_report(out / "heads" / f"{head.name}.json", trained_and_evaluated(head))
        for head in heads
    }


def register(config: ReferenceConfig, model: Path, tasks: Path, out: Path) -> dict[str, Any]:
    """Register ``model`` and promote it through the gate, unless ``<out>/registry.json`` records that this
    was done; returns that record (registered model, version, tracking URI, threshold, gate decision)."""
    from workembed.registry.config import CalibrationConfig, GateConfig, RegistryConfig
    from workembed.registry.promotion import PromotionRefused
    from workembed.registry_commands import promote, register_model

    path = out / REGISTRY_FILE
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    registry = RegistryConfig(
        tracking_uri=tracking_uri(config),
        name=config.registered_model,
        calibration=CalibrationConfig(datasets=folders(tasks.resolve(), "benchmarks", EXTRACTION_SETS)),
        gate=GateConfig(
            datasets=[str(tasks.resolve() / name) for name in config.gate_sets],
            metrics=config.gate_metrics,
            tolerance=config.gate_tolerance,
        ),
    )
    logger.info("registering %s as a version of %s", model, registry.name)
    version = register_model(registry, model_dir=model, report=out / "model.json")
    try:
        decision = promote(registry, version["version"], config.alias)
    except PromotionRefused as refused:
        decision = refused.result
    logger.info("gate: version %s %s (%s)", version["version"], decision["decision"], config.alias)
    record = {
        "tracking_uri": registry.tracking_uri,
        "name": registry.name,
        "version": version["version"],
        "alias": config.alias,
        "uri": f"models:/{registry.name}@{config.alias}",
        "esco": config.esco,
        "threshold": (version["extraction"] or {}).get("threshold"),
        "decision": decision["decision"],
        "holder": decision["holder"],
        "reasons": decision["reasons"],
        "gate": decision["table"],
    }
    path.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return record


def training_record(train_config, model: Path, run) -> dict[str, Any]:
    """The resolved recipe and, from its MLflow ``run`` (if any), the data fingerprint and graph summary."""
    record: dict[str, Any] = {"config": public_dump(train_config, exclude={"tracking"})}
    if run is not None:
        record["data.fingerprint"] = run.data.tags.get("data.fingerprint")
        graph = run.data.tags.get("data.graph")
        record["data.graph"] = json.loads(graph) if graph else None
        record["mlflow_run_id"] = run.info.run_id
    record["model"] = str(model)
    return record


def training_curves(train_config, run) -> dict[str, list[tuple[int, float]]]:
    """Per-step loss (total and per task), learning rate and throughput of the MLflow ``run`` (if any)."""
    if run is None:
        return {}
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=train_config.tracking.tracking_uri)
    names = [name for name in run.data.metrics if name in CURVE_METRICS or name.startswith("loss")]
    return {
        name: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, name)] for name in names
    }


def _mlflow_run(train_config, model: Path):
    """The MLflow run that trained ``model`` (found as the registry finds it), or None."""
    uri = train_config.tracking.tracking_uri
    if not uri:
        return None
    from mlflow import MlflowClient

    from workembed.models.folder import read_model_info
    from workembed.registry.lineage import training_run

    client = MlflowClient(tracking_uri=uri)
    run_id = training_run(client, read_model_info(model), None)
    return client.get_run(run_id) if run_id else None


def main(argv: list[str] | None = None) -> int:
    """``python -m workembed.reference [-c jobs/configs/reference.yaml] [--set key=value ...]``."""
    import argparse

    from workembed.logs import add_logging_args, setup_logging_from_args

    parser = argparse.ArgumentParser(
        prog="python -m workembed.reference", description=__doc__.splitlines()[0]
    )
    parser.add_argument("-c", "--config", default="jobs/configs/reference.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    add_logging_args(parser)
    args = parser.parse_args(argv)
    setup_logging_from_args(args)
    result = run_reference(load_config(ReferenceConfig, args.config, args.overrides))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
