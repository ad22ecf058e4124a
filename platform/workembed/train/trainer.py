"""``workembed run train``: the Ray Train ``TorchTrainer`` over DeepSpeed workers, with MLflow tracking.

The driver reads the edges as a Ray Data dataset (Parquet edges of ingest runs and/or ESCO-only edges; the
section head reads the matching folder in each worker instead, :mod:`workembed.train.matching`),
opens the MLflow run, runs the workers (:mod:`workembed.train.loop`) with checkpoints in
``checkpoint.storage_path`` (local or ``s3://``) and restarts them from the last checkpoint when one
fails, then copies the final model folder to ``<output>/<run_name>`` and logs it to MLflow. That folder is
opened before training by :func:`workembed.runs.open_run` (one that holds files is refused unless
``overwrite``); an unfinished run leaves it empty, so re-running its name resumes from the checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from workembed.config import public_dump, resolve_data_path
from workembed.errors import ClusterError
from workembed.runs import RunFolder, new_run_id, open_run
from workembed.train.config import TrainConfig
from workembed.train.loop import MODEL_DIR, STATE_FILE, train_worker
from workembed.train.matching import matching_worker

logger = logging.getLogger(__name__)


def run_train(config: TrainConfig) -> dict[str, Any]:
    """Train as ``config`` says; returns a summary (run name, steps, final metrics, model folder)."""
    import ray
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    init_ray(config)
    run_name = config.run_name or new_run_id("train")
    model_folder = None
    if config.output is not None:  # refused now (before any work) if it holds files, unless overwrite
        model_folder = open_run(
            config.output, run_name, "train", overwrite=config.overwrite, storage=config.storage
        )
    # the workers rebuild the config without its secrets (they read no storage of their own)
    payload: dict[str, Any] = {"config": public_dump(config)}
    if config.data.matching is not None:
        worker, datasets, unit = matching_worker, {}, "projects"
        from workembed.retrieval.matching_dataset import matching_folder

        payload["matching_folder"] = str(matching_folder(config.data.matching.source.directory).resolve())
    else:
        worker, datasets, unit = train_worker, {"edges": edges_dataset(config)}, "pairs"
        payload["held_out"] = sorted(held_out_concepts(config))
        payload["benchmark_texts"] = sorted(benchmark_keys(config))
    mlflow_run_id = open_mlflow_run(config, run_name)
    storage_path, storage_filesystem = checkpoint_storage(config)
    logger.info(
        "training run %s: %d steps of %d %s on %d worker(s), checkpoints in %s/%s",
        run_name,
        config.steps,
        config.batch_size,
        unit,
        config.scaling.num_workers,
        storage_path,
        run_name,
    )
    trainer = TorchTrainer(
        worker,
        train_loop_config={
            **payload,
            "tracking_uri": config.tracking.tracking_uri,
            "mlflow_run_id": mlflow_run_id,
        },
        torch_config=TorchConfig(backend="nccl" if config.scaling.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.scaling.num_workers,
            use_gpu=config.scaling.use_gpu,
            resources_per_worker={"CPU": config.scaling.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.checkpoint.keep_last),
            failure_config=ray.train.FailureConfig(max_failures=config.checkpoint.max_failures),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[]),  # every worker sees the whole graph
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:  # workers, controller or storage gave out
        close_mlflow_run(config, mlflow_run_id, "FAILED")
        raise ClusterError(
            f"training run {run_name} failed: {error}\nRun it again with run_name={run_name} to resume from "
            "its last complete checkpoint."
        ) from error
    except Exception:
        close_mlflow_run(config, mlflow_run_id, "FAILED")
        raise
    model_dir, state = export(result.checkpoint, model_folder)
    if mlflow_run_id is not None and model_dir is not None:
        from mlflow import MlflowClient

        MlflowClient(tracking_uri=config.tracking.tracking_uri).log_artifacts(
            mlflow_run_id, str(model_dir), "model"
        )
    close_mlflow_run(config, mlflow_run_id, "FINISHED")
    summary = {
        "run_name": run_name,
        "steps": config.steps,
        "metrics": {key: value for key, value in (result.metrics or {}).items() if key != "batch_rows"},
        "checkpoint": result.checkpoint.path if result.checkpoint else None,
        "model": str(model_dir) if model_dir else None,
        "state": state,
        "mlflow_run_id": mlflow_run_id,
    }
    logger.info(
        "training run %s finished: loss %s, model %s",
        run_name,
        summary["metrics"].get("loss"),
        summary["model"],
    )
    return summary


def init_ray(config: TrainConfig) -> None:
    import ray

    config.ray.connect()
    needed = config.scaling.num_workers * config.scaling.cpus_per_worker
    available = ray.cluster_resources().get("CPU", 0)
    if available < needed + 1:
        raise ClusterError(
            f"the Ray cluster has {available:g} logical CPUs; training needs {needed:g} for its workers plus "
            "1 for the data and the controller: raise ray.num_cpus or lower scaling.num_workers / "
            "cpus_per_worker"
        )


def held_out_concepts(config: TrainConfig) -> frozenset[str]:
    """Skill and occupation URIs held apart for evaluation (none without ``data.split``)."""
    if config.data.split is None:
        return frozenset()
    from workembed.retrieval.esco_concepts import read_split

    skills, occupations = read_split(resolve_data_path(config.data.split))
    return skills | occupations


def benchmark_keys(config: TrainConfig) -> frozenset[str]:
    """The keys of every benchmark sentence and title that no training edge may hold (none without
    ``data.benchmarks``)."""
    if config.data.benchmarks is None:
        return frozenset()
    from workembed.retrieval.leakage import benchmark_texts, every_key

    return every_key(benchmark_texts(resolve_data_path(config.data.benchmarks)))


def edges_dataset(config: TrainConfig):
    """The training edges as one Ray Data dataset: Parquet ``edges``, ESCO-only edges and SkillSkape sentence
    edges; edges written by a test model (origin ``synthetic-test``) are never trained on."""
    import ray.data
    from ray.data.expressions import col

    from workembed.data.config import GraphConfig
    from workembed.data.graph import EDGE_SCHEMA, SYNTHETIC_TEST, esco_edges_table, skillskape_edges_table
    from workembed.data.storage import filesystem_for, strip_scheme
    from workembed.taxonomy import EscoConfig, load_esco_config

    parts = []
    for location in config.data.edges:
        resolved = resolve_data_path(location)
        filesystem = filesystem_for(resolved, config.storage)
        path = strip_scheme(resolved) if resolved.startswith("s3://") else resolved
        parts.append(
            ray.data.read_parquet(
                path, filesystem=filesystem, schema=EDGE_SCHEMA, columns=EDGE_SCHEMA.names
            ).filter(expr=col("origin") != SYNTHETIC_TEST)
        )
    if config.data.esco is not None:
        taxonomy = load_esco_config(EscoConfig(location=config.data.esco))
        parts.append(ray.data.from_arrow(esco_edges_table(taxonomy, GraphConfig())))
        if config.data.skillskape is not None:
            table, summary = skillskape_edges_table(resolve_data_path(config.data.skillskape), taxonomy)
            unknown = len(summary.get("unknown_labels", {}))
            logger.info(
                "SkillSkape %s: %d sentences → %d edges; dropped %s, unknown labels: %d",
                config.data.skillskape,
                summary["sentences"],
                summary["edges"],
                summary["dropped"],
                unknown,
            )
            parts.append(ray.data.from_arrow(table))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def checkpoint_storage(config: TrainConfig):
    """Ray Train's ``(storage_path, storage_filesystem)``: an absolute local folder, or a bucket path
    with the configured S3 endpoint."""
    from workembed.data.storage import filesystem_for, strip_scheme

    location = config.checkpoint.storage_path
    if location.startswith("s3://"):
        return strip_scheme(location), filesystem_for(location, config.storage)
    return str(Path(location).resolve()), None


def export(checkpoint, folder: RunFolder | None) -> tuple[Path | None, dict[str, Any]]:
    """Copy the final checkpoint's model folder into ``folder`` (the opened ``<output>/<run_name>``; None:
    no copy); return it and the trainer state (its ``batches`` folded into one ``batches_digest``)."""
    if checkpoint is None:
        return None, {}
    target = Path(folder.path) if folder is not None else None
    with checkpoint.as_directory() as directory:
        state = json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8"))
        source = Path(directory) / MODEL_DIR
        if target is not None:
            if not source.is_dir():
                raise RuntimeError(f"the final checkpoint {checkpoint.path} holds no {MODEL_DIR}/ folder")
            shutil.copytree(source, target, dirs_exist_ok=True)
    batches = state.pop("batches")
    state["batches_digest"] = hashlib.sha256("\n".join(batches).encode()).hexdigest()
    return target, state


# ------------------------------------------------------------------------------------------ MLflow


def open_mlflow_run(config: TrainConfig, run_name: str) -> str | None:
    """The MLflow run of ``run_name`` (an unfinished one is continued), with the resolved config as params."""
    uri = config.tracking.tracking_uri
    if not uri:
        return None
    from mlflow import MlflowClient
    from mlflow.entities import Param

    from workembed.tracking import experiment_id as find_experiment
    from workembed.tracking import param_values

    client = MlflowClient(tracking_uri=uri)
    experiment_id = find_experiment(client, config.tracking.experiment, uri)
    previous = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`workembed.run_name` = '{run_name}' and attributes.status != 'FINISHED'",
        max_results=1,
    )
    if previous:
        client.update_run(previous[0].info.run_id, status="RUNNING")
        return previous[0].info.run_id
    run = client.create_run(experiment_id, run_name=run_name, tags={"workembed.run_name": run_name})
    params = param_values(public_dump(config, exclude={"tracking": {"tracking_uri"}}))
    client.log_batch(run.info.run_id, params=[Param(key, value) for key, value in params.items()])
    return run.info.run_id


def close_mlflow_run(config: TrainConfig, run_id: str | None, status: str) -> None:
    if run_id is not None:
        from mlflow import MlflowClient

        from workembed.tracking import terminate

        terminate(MlflowClient(tracking_uri=config.tracking.tracking_uri), run_id, status)
