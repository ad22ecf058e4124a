"""Distributed training end to end: 2 Ray Train workers, DeepSpeed ZeRO-2, gradient caching, ESCO edges fed
through Ray Data, checkpoints on the local S3 server, a killed worker, MLflow tracking."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from workembed.config import deep_merge
from workembed.errors import RunFolderError
from workembed.train.config import TrainConfig
from workembed.train.trainer import run_train

pytestmark = pytest.mark.usefixtures("ray_session")


def make_config(tmp_path: Path, backbone: Path, name: str, **overrides) -> TrainConfig:
    base = {
        "run_name": name,
        "seed": 7,
        "steps": 2,
        "batch_size": 8,
        "chunk_size": 2,
        "data": {"esco": "builtin"},
        "model": {"backbone": str(backbone), "max_length": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "deepspeed": {"zero_stage": 2},
        "scaling": {"num_workers": 2},
        "checkpoint": {"storage_path": str(tmp_path / "checkpoints"), "every_steps": 1, "max_failures": 0},
        "tracking": {"tracking_uri": None},
        "output": str(tmp_path / "models"),
    }
    return TrainConfig.model_validate(deep_merge(base, overrides))


def weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """The backbone's and (when the head has parameters) the head's weights of a model folder."""
    found = load_file(Path(model_dir) / "model.safetensors")
    head = Path(model_dir) / "head.safetensors"
    if head.is_file():
        found.update({f"head.{name}": value for name, value in load_file(head).items()})
    return found


PROJECTION_SIDES = {
    "skill-alt": {"sides": ["skill", "skill"]},
    "skill-job": {"sides": ["title", "skill"]},
    "job-alt": {"sides": ["title", "title"]},
}
PROJECTION = {
    "name": "projection",
    "sides": {"title": 24, "skill": 24},
    "input_sides": {"job_title": "title", "skill_name": "skill", "default": "skill"},
}


def relative_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖θ_a − θ_b‖ / ‖θ_b‖ over the whole parameter vector. (Per tensor it is meaningless for the attention
    key biases: softmax ignores them, their gradient is float noise, and Adam turns noise into steps.)"""
    assert a.keys() == b.keys()
    difference = torch.cat([(a[k] - b[k]).flatten() for k in sorted(a)])
    return float(difference.norm() / torch.cat([b[k].flatten() for k in sorted(b)]).norm())


@pytest.mark.parametrize(
    ("head", "tasks", "steps"),
    [
        ({"name": "mean"}, None, 2),
        ({"name": "late-interaction", "temperature": 0.1}, None, 2),
        (PROJECTION, PROJECTION_SIDES, 2),
        # Per-chunk backward calls sum the gradient in another order than one backward call (float noise,
        # ~1e-6 relative after a step here). Adam's second step turns that noise into steps of full size
        # where a gradient entry is near zero, which the BiLSTM has many of: compare after one step.
        ({"name": "bilstm-attention"}, None, 1),
    ],
    ids=["mean", "late-interaction", "projection", "bilstm-attention"],
)
def test_gradient_caching_on_two_zero2_workers_equals_the_uncached_step(
    tmp_path, tiny_bert, head, tasks, steps
):
    """Dropout on (the tiny BERT's default 0.1): replayed RNG makes the cached step exact; in-batch negatives
    are gathered from both workers (pooled, or token-level for late interaction); a head's own parameters
    (per-side projections, the BiLSTM) are trained and saved with the backbone."""
    settings = {"model": {"head": head}, "steps": steps, **({"data": {"tasks": tasks}} if tasks else {})}
    (tmp_path / "models" / "cached").mkdir(parents=True)  # an empty model folder is reused
    cached = run_train(make_config(tmp_path, tiny_bert, "cached", chunk_size=2, **settings))
    plain = run_train(make_config(tmp_path, tiny_bert, "plain", chunk_size=2, grad_cache=False, **settings))
    trained, reference = weights(cached["model"]), weights(plain["model"])
    initial = {k: v for k, v in weights(tiny_bert).items() if not k.startswith("pooler.")}
    assert cached["state"]["batches_digest"] == plain["state"]["batches_digest"]
    assert relative_difference(trained, reference) < 1e-5
    backbone = {k: v for k, v in trained.items() if not k.startswith("head.")}
    assert relative_difference(backbone, initial) > 1e-3  # the steps did change the weights
    assert cached["metrics"]["loss"] == pytest.approx(plain["metrics"]["loss"], rel=1e-5)
    assert any(k.startswith("head.") for k in trained) == (head["name"] in ("projection", "bilstm-attention"))


def test_a_killed_worker_resumes_from_the_s3_checkpoint_to_the_same_model(
    tmp_path, tiny_bert, s3_server, mlflow_server
):
    steps, every = 12, 2  # long enough that the kill lands mid-run
    reference = run_train(make_config(tmp_path, tiny_bert, "reference", steps=steps))
    storage = f"s3://{s3_server['bucket']}/train"
    config = make_config(
        tmp_path,
        tiny_bert,
        "killed",
        steps=steps,
        checkpoint={"storage_path": storage, "every_steps": every, "max_failures": 2},
        tracking={"tracking_uri": mlflow_server, "experiment": "trainer-test"},
    )
    # a checkpoint folder appears while its files upload; the one before it is complete and registered
    killer = WorkerKiller(config, after_checkpoint=f"step-{2 * every:07d}")
    killer.start()
    resumed = run_train(config)
    killer.join(timeout=5)
    assert killer.killed_pid is not None, "no worker was killed: the run ended before the first checkpoint"

    state = resumed["state"]
    assert state["resumed_at"] and state["resumed_at"][0] >= every
    assert reference["state"]["resumed_at"] == []
    assert state["step"] == reference["state"]["step"] == steps
    assert state["batches_digest"] == reference["state"]["batches_digest"]
    assert relative_difference(weights(resumed["model"]), weights(reference["model"])) < 1e-5

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(resumed["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["steps"] == str(steps)
    assert len(run.data.tags["data.fingerprint"]) == 64
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted({m.step for m in history}) == list(range(1, steps + 1))
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/model.safetensors", "model/workembed.json"} <= artifacts


class WorkerKiller(threading.Thread):
    """Sends SIGKILL to one training worker once the given checkpoint exists in the run's storage."""

    def __init__(self, config: TrainConfig, after_checkpoint: str, timeout: float = 600):
        super().__init__(daemon=True)
        from workembed.data.storage import filesystem_for, strip_scheme

        location = f"{config.checkpoint.storage_path}/{config.run_name}/{after_checkpoint}"
        self.filesystem = filesystem_for(location, config.storage)
        self.path = strip_scheme(location)
        self.timeout = timeout
        self.killed_pid: int | None = None

    def run(self) -> None:
        import psutil
        import pyarrow.fs as pafs

        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound:
                workers = sorted(
                    process.pid
                    for process in psutil.process_iter(["cmdline"])
                    if "RayTrainWorker" in " ".join(process.info["cmdline"] or [])
                )
                if len(workers) >= 2:
                    os.kill(workers[-1], signal.SIGKILL)
                    self.killed_pid = workers[-1]
                    return
            time.sleep(0.2)


def test_a_model_folder_that_holds_files_is_refused_before_training(tmp_path, tiny_bert):
    stale = tmp_path / "models" / "taken" / "model.safetensors"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    with pytest.raises(RunFolderError, match="run folder .*/models/taken already holds files"):
        run_train(make_config(tmp_path, tiny_bert, "taken"))
    assert stale.read_bytes() == b"stale"
    assert not (tmp_path / "checkpoints" / "taken").exists()


def test_edges_written_by_a_test_model_are_never_trained_on(ray_session, tmp_path, tiny_bert):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from workembed.data.graph import EDGE_SCHEMA
    from workembed.train.trainer import edges_dataset

    rows = [
        ("skill-sentence", "s1", "You write Python.", "py", "Python", 1.0, "vacancy"),
        ("skill-sentence", "s2", "You write Java.", "java", "Java", 1.0, "synthetic"),
        ("skill-sentence", "s3", "zx qq", "py", "Python", 1.0, "synthetic-test"),
    ]
    table = pa.Table.from_pylist(
        [dict(zip(EDGE_SCHEMA.names, row, strict=True)) for row in rows], EDGE_SCHEMA
    )
    pq.write_table(table, tmp_path / "edges.parquet")
    config = make_config(
        tmp_path, tiny_bert, "filter", data={"esco": None, "edges": [str(tmp_path / "edges.parquet")]}
    )
    kept = edges_dataset(config).take_all()
    assert sorted(row["left_id"] for row in kept) == ["s1", "s2"]
