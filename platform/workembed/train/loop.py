"""The per-worker training loop run by Ray Train: graph → batches → DeepSpeed steps → checkpoints.

Every worker builds the same graph from the (unsplit) ``edges`` dataset, draws the same global batch for a
step and encodes its own contiguous slice. With ``gather_negatives`` each worker scores its rows against
the whole batch (embeddings all-gathered with their gradients), so the loss is that of one global batch.
Dropout is seeded by ``(seed, step, rank)``: a run resumed from a checkpoint continues exactly as an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from workembed.config import public_dump
from workembed.train.batches import Batch, EdgeGraph
from workembed.train.config import TOKEN_HEADS, TrainConfig

CHECKPOINT_TAG = "engine"
STATE_FILE = "trainer_state.json"
MODEL_DIR = "model"


def train_worker(payload: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the :class:`~ray.train.torch.TorchTrainer` (see the module docstring)."""
    import ray.train

    from workembed.losses import BipartiteInfoNCELoss
    from workembed.models.work_encoder import WorkEncoder

    config = TrainConfig.model_validate(payload["config"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    graph = load_graph(config, payload["held_out"], payload.get("benchmark_texts", []))
    torch.manual_seed(config.seed)  # identical initial weights of any newly built layer on every worker
    model = WorkEncoder(
        config.model.backbone,
        max_length=config.model.max_length,
        normalize=config.model.head.normalize,
        head=config.model.head,
    )
    engine = deepspeed_engine(model, list(model.parameters()), config)
    state = restore(engine)
    start = state["step"]
    tasks = config.data.tasks
    loss = BipartiteInfoNCELoss(
        temperature=[tasks[name].temperature for name in graph.tasks],
        weights=[tasks[name].loss_weight for name in graph.tasks],
        task_names=graph.tasks,
        symmetric=False,
    )
    tracker = StepLog(payload.get("tracking_uri"), payload.get("mlflow_run_id")) if rank == 0 else None
    if tracker is not None and start == 0:
        tracker.tags(
            {"data.fingerprint": graph.fingerprint(), "data.graph": json.dumps(graph.summary.as_dict())}
        )
    for step in range(start, config.steps):
        started = time.perf_counter()
        torch.manual_seed(np.random.SeedSequence([config.seed, step, rank]).generate_state(1)[0].item())
        batch = graph.batch(config.seed, step, config.batch_size)
        state["batches"].append(batch_digest(batch))
        lr = engine.get_lr()[0]  # this step's learning rate (the scheduler moves on in engine.step)
        total, parts = train_step(engine, model, loss, batch, rank, world, config)
        seconds = time.perf_counter() - started
        metrics = {
            "step": step + 1,
            "loss": total,
            **{f"loss/{name}": value for name, value in parts.items()},
            "lr": lr,
            "pairs_per_s": config.batch_size / seconds,
        }
        end_step(engine, model, tracker, metrics, state, config, rank)


def deepspeed_engine(model, parameters: list, config: TrainConfig):
    """The DeepSpeed engine training ``parameters`` of ``model`` (AdamW, the warm-up schedule), in training
    mode."""
    import deepspeed

    from workembed.train.deepspeed_config import deepspeed_config, lr_factor, optimizer

    adamw = optimizer(parameters, config)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=adamw,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(adamw, lr_factor(config)),
        config=deepspeed_config(config),
    )
    engine.train()
    return engine


def end_step(engine, model, tracker, metrics: dict, state: dict, config: TrainConfig, rank: int) -> None:
    """After step ``metrics["step"]``: log its metrics (rank 0), then checkpoint every
    ``checkpoint.every_steps`` and at the last step (exporting the model there), else report to Ray Train."""
    import ray.train

    step = metrics["step"]
    done = step == config.steps
    if tracker is not None and (step % config.log_every == 0 or done):
        tracker.metrics(metrics, step)
    if step % config.checkpoint.every_steps == 0 or done:
        save_checkpoint(engine, model, metrics, {**state, "step": step}, config, rank, export=done)
    elif step % config.log_every == 0:
        ray.train.report(metrics)


def load_graph(config: TrainConfig, held_out: list[str], excluded_texts: list[str] = ()) -> EdgeGraph:
    """The graph of this worker's (complete, unsplit) ``edges`` dataset shard, without the edges of
    ``held_out`` concepts and those with a benchmark text (``excluded_texts``: their keys)."""
    import ray.train

    shard = ray.train.get_dataset_shard("edges")
    return EdgeGraph.from_batches(
        shard.iter_batches(batch_format="pyarrow", batch_size=65536),
        {name: task.weight for name, task in config.data.tasks.items()},
        held_out=frozenset(held_out),
        origins=config.data.origins,
        min_weight=config.data.min_weight,
        excluded_texts=frozenset(excluded_texts),
    )


def train_step(engine, model, loss, batch: Batch, rank: int, world: int, config: TrainConfig):
    """One optimizer step on this worker's slice of ``batch``; returns the loss and its per-task parts."""
    from workembed.train.grad_cache import Chunks, GradCache, split_batch

    part = batch.shard(rank, world)
    size = config.chunk_size
    left_sides, right_sides = row_sides(config, loss.task_names, batch, part, model.sides)
    if config.model.head.name in TOKEN_HEADS:  # token-level left side: one length for all chunks
        left, left_restore = split_batch(model.tokenize(batch.left[part], tokens=True), size), None
    else:
        left, left_restore = model.tokenize_sorted_chunks(batch.left[part], size, left_sides)
    right, right_restore = model.tokenize_sorted_chunks(batch.right[part], size, right_sides)
    objective = BatchObjective(
        loss,
        batch,
        part,
        config.gather_negatives and world > 1,
        late_interaction(config),
        restore=(left_restore, right_restore),
    )
    if not config.grad_cache:  # every chunk's activations kept: the exact reference of the cached step
        value = objective(*(_concat([engine(**chunk) for chunk in side]) for side in (left, right)))
        engine.backward(value)
    else:
        cache = GradCache(lambda chunk: engine(**chunk), objective, size, backward=engine.backward)
        with engine.coalesce_grad_reduction():  # one gradient reduction for all chunks' backward calls
            value = cache(Chunks(left), Chunks(right)).loss
    engine.step()
    value = value.detach().clone()
    if world > 1:  # the logged loss is the mean over workers (the loss of the whole batch)
        torch.distributed.all_reduce(value)
        value /= world
    return float(value), objective.parts


def row_sides(config: TrainConfig, task_names, batch: Batch, part: slice, sides: list[str]):
    """Side ids (positions in ``sides``) of the left and right text of each row of ``part``, from its
    task's ``sides`` (``task_names``: the names of the batch's task indices); ``(None, None)`` without a
    projection head."""
    if not sides:
        return None, None
    tasks = [config.data.tasks[name] for name in task_names]
    rows = batch.tasks[part]
    return tuple([sides.index(tasks[task].sides[end]) for task in rows] for end in (0, 1))


def late_interaction(config: TrainConfig):
    """The soft late-interaction scorer of a ``late-interaction`` head, else None (cosine)."""
    head = config.model.head
    if head.name not in TOKEN_HEADS:
        return None
    from workembed.models.heads import SoftLateInteraction

    return SoftLateInteraction(head.temperature)


Rep = Tensor | tuple[Tensor, Tensor]


class BatchObjective:
    """The symmetric many-to-many InfoNCE of a worker's rows: left→right and right→left, each against the
    worker's own items or (``gather``) the whole batch's. Left items are pooled embeddings or, for late
    interaction, ``(token vectors, content mask)``; right items are pooled."""

    def __init__(self, loss, batch: Batch, part: slice, gather: bool, late=None, restore=(None, None)):
        self.loss, self.part, self.gather, self.late = loss, part, gather, late
        self.restore = restore
        self.tasks = torch.as_tensor(batch.tasks)
        self.positives = torch.as_tensor(batch.positives)
        self.parts: dict[str, float] = {}

    def __call__(self, left: Rep, right: Tensor) -> Tensor:
        """The loss of the worker's rows; ``restore`` (per side, or None) puts rows encoded in another
        order (length-sorted chunks) back into the batch's order first."""
        left, right = (_take(rep, rows) for rep, rows in zip((left, right), self.restore, strict=True))
        part, tasks, positives = self.part, self.tasks, self.positives
        if self.gather:
            all_left, all_right = _gather(left), _gather(right)
            candidates_tasks, left_right, right_left = tasks, positives[part], positives[:, part].T
        else:
            all_left, all_right = left, right
            candidates_tasks, left_right = tasks[part], positives[part, part]
            right_left = left_right.T
        local_tasks = tasks[part]
        forward = self.loss.from_scores(
            self._scores(left, all_right), left_right, local_tasks, candidates_tasks
        )
        backward = self.loss.from_scores(
            self._scores(all_left, right).T, right_left, local_tasks, candidates_tasks
        )
        names = set(forward.parts) | set(backward.parts)
        self.parts = {
            name: float(np.mean([out.parts[name].item() for out in (forward, backward) if name in out.parts]))
            for name in sorted(names)
        }
        return (forward.loss + backward.loss) / 2

    def _scores(self, left: Rep, right: Tensor) -> Tensor:
        """``[n_left, n_right]`` scores: cosine, or late interaction of left tokens with pooled rights."""
        if isinstance(left, tuple):
            hidden, mask = left
            return self.late(hidden, mask, right)
        return _cosine(left, right)


def _gather(rep: Rep) -> Rep:
    """Every worker's rows, in rank order, with gradients flowing back to this worker's own rows."""
    import torch.distributed.nn.functional as dist_fn

    if isinstance(rep, tuple):
        return tuple(torch.cat(dist_fn.all_gather(item)) for item in rep)
    return torch.cat(dist_fn.all_gather(rep))


def _take(rep: Rep, rows: Tensor | None) -> Rep:
    if rows is None:
        return rep
    if isinstance(rep, tuple):
        return tuple(item[rows] for item in rep)
    return rep[rows]


def _concat(chunks: list[Rep]) -> Rep:
    if isinstance(chunks[0], tuple):
        return tuple(torch.cat(items) for items in zip(*chunks, strict=True))
    return torch.cat(chunks)


def _cosine(a: Tensor, b: Tensor) -> Tensor:
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T


# ------------------------------------------------------------------------------------------ checkpoints


def restore(engine) -> dict[str, Any]:
    """Load the latest checkpoint of this run, if any; return the trainer state to continue from:
    ``step`` (the next one), ``batches`` (digest of every batch so far) and ``resumed_at`` (steps at
    which the run was restored)."""
    from workembed.train.checkpoints import resume_checkpoint

    checkpoint = resume_checkpoint()  # never a checkpoint cut in the middle of its upload
    if checkpoint is None:
        return {"step": 0, "batches": [], "resumed_at": []}
    with checkpoint.as_directory() as directory:
        _, client_state = engine.load_checkpoint(directory, tag=CHECKPOINT_TAG)
        state = json.loads((Path(directory) / STATE_FILE).read_text(encoding="utf-8"))
    if int(client_state["step"]) != state["step"]:
        raise RuntimeError(
            f"checkpoint {checkpoint.path}: engine at step {client_state['step']}, state at {state['step']}"
        )
    state["resumed_at"].append(state["step"])
    return state


def batch_digest(batch: Batch) -> str:
    """A short digest of a batch's graph rows (its identity)."""
    return hashlib.sha256(batch.rows.astype("<i8").tobytes()).hexdigest()[:16]


def save_checkpoint(
    engine, model, metrics: dict, state: dict[str, Any], config: TrainConfig, rank: int, export: bool
) -> None:
    """Every rank saves its DeepSpeed state into one checkpoint (Ray merges the ranks' files); rank 0 adds
    the trainer state and, with ``export``, the model folder (``model/``)."""
    import ray.train
    from ray.train import Checkpoint

    from workembed.train.checkpoints import checkpoint_dir_name, mark_complete

    step = int(state["step"])
    with tempfile.TemporaryDirectory(prefix="workembed-ckpt-") as directory:
        engine.save_checkpoint(directory, tag=CHECKPOINT_TAG, client_state={"step": step})
        if export:
            export_model(engine, model, Path(directory) / MODEL_DIR, config, rank)
        if rank == 0:
            (Path(directory) / STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(directory),
            checkpoint_dir_name=checkpoint_dir_name(step),
        )
    mark_complete(step, rank)  # once every rank's files are uploaded


def export_model(engine, model, directory: Path, config: TrainConfig, rank: int) -> None:
    """The self-describing model folder (gathering ZeRO-3 partitions first)."""
    import deepspeed

    info = {"training": public_dump(config)}
    if config.deepspeed.zero_stage == 3:
        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            if rank == 0:
                model.save(directory, info)
    elif rank == 0:
        model.save(directory, info)


# ------------------------------------------------------------------------------------------ tracking


class StepLog:
    """MLflow metrics of rank 0, into the run the driver opened (no-op without a tracking URI)."""

    def __init__(self, tracking_uri: str | None, run_id: str | None):
        self.client = None
        if tracking_uri and run_id:
            from mlflow import MlflowClient

            self.client, self.run_id = MlflowClient(tracking_uri=tracking_uri), run_id

    def metrics(self, metrics: dict[str, Any], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        from workembed.tracking import metric_key

        now = int(time.time() * 1000)
        rows = [
            Metric(metric_key(name), float(value), now, step)
            for name, value in metrics.items()
            if isinstance(value, int | float) and name != "step"
        ]
        self.client.log_batch(self.run_id, metrics=rows)

    def tags(self, tags: dict[str, str]) -> None:
        if self.client is not None:
            for key, value in tags.items():
                self.client.set_tag(self.run_id, key, value)
