"""The typed config of ``workembed run train`` (``jobs/configs/train.yaml`` documents every field)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator, model_validator

from workembed.config import Config
from workembed.data.config import RayConfig, StorageConfig
from workembed.data.matching import MatchingConfig
from workembed.models.heads import HeadConfig

TRAINABLE_HEADS = ("mean", "late-interaction", "token-attention", "projection", "bilstm-attention", "section")
TOKEN_HEADS = ("late-interaction", "token-attention")
"""Heads that score the left text's tokens against the right text's pooled embedding (the same score)."""


class TaskConfig(Config):
    """One edge task (``edges.task``) in the training mix."""

    weight: float = Field(1.0, gt=0, description="Sampling weight: share of each batch drawn from this task.")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature of this task's rows.")
    loss_weight: float = Field(1.0, ge=0, description="Weight of this task's rows in the loss.")
    sides: tuple[str, str] | None = Field(
        None,
        description="Projection sides of this task's left and right texts, e.g. [title, skill] for job "
        "title → skill (projection head; required there).",
    )


def default_tasks() -> dict[str, TaskConfig]:
    return {name: TaskConfig() for name in ("skill-alt", "skill-job", "job-alt")}


class MatchingTrainConfig(Config):
    """Project–profile documents for the Malt two-tower model (``model.head.name: section``)."""

    source: MatchingConfig = Field(
        default_factory=MatchingConfig,
        description="The matching folder (`directory`, relative to the data root) and the rules that label "
        "project–profile pairs +1 / -1 (those of `workembed eval matching`).",
    )
    held_out: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of projects held apart for evaluation (`workembed eval matching --set "
        "held_out=...` with the same `split_seed` evaluates on exactly them).",
    )
    split_seed: int = Field(0, description="Seed of the held-out projects.")
    positives_per_project: int = Field(2, ge=1, description="Positive profiles drawn per batch project.")
    negatives_per_project: int = Field(2, ge=0, description="Negative profiles drawn per batch project.")
    loss: Literal["adjacency-infonce", "adjacency-triplet"] = Field(
        "adjacency-infonce", description="Malt's loss over the batch's extended adjacency."
    )
    temperature: float = Field(0.05, gt=0, description="Softmax temperature (adjacency-infonce).")
    margin: float = Field(0.2, gt=0, description="Triplet margin (adjacency-triplet).")
    transitive: bool = Field(
        True, description="Relate two profiles that are positives of the same batch project."
    )
    weak_negatives: bool = Field(
        True,
        description="An unlabelled batch pair whose resume category is outside the project category's "
        "compatible ones is a weak negative (-1).",
    )
    max_section_length: int = Field(128, ge=8, description="Tokens per section; longer ones are truncated.")


class TrainDataConfig(Config):
    """Where the training edges come from and what is kept."""

    edges: list[str] = Field(
        default_factory=list,
        description="`edges` Parquet datasets (folders or files, local or s3://; relative paths resolve "
        "against the data root), e.g. an ingest run's <run>/edges.",
    )
    esco: str | None = Field(
        None,
        description="ESCO export to build ESCO-only edges from at start (skill-alt, skill-job, job-alt); "
        "'builtin' for the packaged sample; null: only `edges`.",
    )
    skillskape: str | None = Field(
        None,
        description="A SkillSkape CSV (e.g. 'benchmarks/skillskape/train.csv', data root) whose sentences "
        "become `skill-sentence` edges (origin synthetic) to the skills of `esco` they name; add "
        "`skill-sentence` to `tasks` to train on them. Needs `esco`.",
    )
    benchmarks: str | None = Field(
        None,
        description="Benchmarks folder (e.g. 'benchmarks' under the data root): every edge with a text "
        "that is one of its evaluation sentences or titles is dropped (compared case-folded on letters and "
        "digits); null: no such guard.",
    )
    split: str | None = Field(
        None,
        description="split.json (or its folder) of `workembed eval build-tasks`: every edge touching a "
        "held-apart concept is dropped, whatever its origin.",
    )
    tasks: dict[str, TaskConfig] = Field(
        default_factory=default_tasks,
        description="Tasks to train on, by `edges.task` name; others are ignored.",
    )
    origins: list[Literal["esco", "vacancy", "synthetic"]] = Field(
        default_factory=lambda: ["esco", "vacancy", "synthetic"], description="Edge origins kept."
    )
    min_weight: float = Field(
        0.0, description="Edges with a lower weight are not positives (project-profile negatives are -1)."
    )
    matching: MatchingTrainConfig | None = Field(
        None,
        description="Section-structured projects and profiles with labelled pairs: the data of the `section` "
        "head, which trains on them alone (no edges).",
    )

    @model_validator(mode="after")
    def _has_source(self) -> TrainDataConfig:
        if self.matching is not None:
            if self.edges or self.esco is not None:
                raise ValueError("`matching` documents train the section head alone: drop `edges` and `esco`")
            return self
        if not self.edges and self.esco is None:
            raise ValueError("give `edges` datasets, an `esco` export, or both (or `matching` documents)")
        if self.skillskape is not None and self.esco is None:
            raise ValueError(
                "`skillskape` sentences are mapped to the skills of `esco`: give an `esco` export"
            )
        if not self.tasks:
            raise ValueError("`tasks` is empty: name at least one edge task to train on")
        return self


class ModelConfig(Config):
    """The encoder being trained."""

    backbone: str = Field("minilm", description="'minilm' (packaged all-MiniLM-L6-v2) or a model directory.")
    max_length: int = Field(64, ge=8, description="Tokens per text; longer texts are truncated.")
    head: HeadConfig = Field(
        default_factory=lambda: HeadConfig(name="mean"),
        description="How texts are embedded and pairs scored: 'mean' (cosine of mean-pooled embeddings), "
        "'late-interaction' (UWE: the left text's tokens against the right text's pooled embedding, token "
        "softmax temperature `temperature`; 'token-attention', ConTeXT-match's name for the same score, "
        "trains the same way), 'projection' (JobBERT-v2: mean pooling then a linear map per side; each "
        "task names its sides in `data.tasks.<task>.sides`; `input_sides` says which side encodes which "
        "kind of text at inference) or 'bilstm-attention' (a BiLSTM with attention pooling "
        "over the backbone's tokens).",
    )

    @field_validator("head")
    @classmethod
    def _trainable_head(cls, head: HeadConfig) -> HeadConfig:
        if head.name not in TRAINABLE_HEADS:
            raise ValueError(f"head '{head.name}' is not trainable; use one of {', '.join(TRAINABLE_HEADS)}")
        return head


class OptimConfig(Config):
    """AdamW with warm-up then linear decay (or constant)."""

    lr: float = Field(2e-5, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up from 0 to `lr` over these steps.")
    schedule: Literal["linear", "constant"] = Field(
        "linear", description="After warm-up: linear decay to 0 at the last step, or constant."
    )
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clipping (0: off).")


class DeepSpeedConfig(Config):
    """The DeepSpeed engine (its JSON config is generated from these fields)."""

    zero_stage: Literal[0, 1, 2, 3] = Field(
        2,
        description="ZeRO stage: 0 off, 1 optimizer states, 2 + "
        "gradients, 3 + parameters partitioned across workers.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision ('bf16' on GPUs that support it)."
    )
    offload_optimizer: bool = Field(False, description="ZeRO-Offload of optimizer states to CPU memory.")


class ScalingConfig(Config):
    """Ray Train workers."""

    num_workers: int = Field(2, ge=1, description="Training worker processes (one per GPU with use_gpu).")
    use_gpu: bool = Field(False, description="One GPU per worker; NCCL instead of gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, description="Logical CPUs each worker reserves.")


class CheckpointConfig(Config):
    """Checkpoints and fault tolerance."""

    storage_path: str = Field(
        "runs/train",
        description="Ray Train storage (local folder or s3://bucket/prefix): checkpoints and "
        "results of every run, under <storage_path>/<run_name>.",
    )
    every_steps: int = Field(50, ge=1, description="Save a checkpoint every this many optimizer steps.")
    keep_last: int = Field(2, ge=1, description="Checkpoints kept (the newest).")
    max_failures: int = Field(
        2, ge=-1, description="Worker failures survived by restarting from the last checkpoint (-1: always)."
    )


class TrackingConfig(Config):
    """MLflow tracking."""

    tracking_uri: str | None = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI"),
        description="MLflow tracking server; default $MLFLOW_TRACKING_URI; null: no tracking.",
    )
    experiment: str = Field("workembed-train", description="MLflow experiment of the training runs.")


class TrainConfig(Config):
    """Settings of ``workembed run train``."""

    run_name: str | None = Field(
        None,
        description="Run folder under checkpoint.storage_path and MLflow run name; null: train-<UTC time>. "
        "Re-running with the name of an unfinished run resumes it from its last checkpoint.",
    )
    seed: int = Field(
        0, description="Seeds the batch sequence (a pure function of seed and step) and dropout."
    )
    steps: int = Field(100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(
        64,
        ge=2,
        description="Logical contrastive batch per optimizer step, over all workers: pairs (edges) or "
        "projects (section head, each with its drawn profiles).",
    )
    chunk_size: int = Field(
        32, ge=1, description="Texts encoded at a time per worker and side (the activation memory bound)."
    )
    grad_cache: bool = Field(
        True,
        description="Gradient caching: only one chunk's activations are alive at a time, for batches far "
        "larger than memory allows; false keeps every chunk's activations (the same result, more memory).",
    )
    gather_negatives: bool = Field(
        True,
        description="Score each worker's rows against the whole batch (in-batch negatives of all workers).",
    )
    log_every: int = Field(1, ge=1, description="Report metrics every this many steps.")
    output: str | None = Field(
        "runs/models",
        description="The final model directory goes to <output>/<run_name> (local); null: "
        "only the last checkpoint.",
    )
    overwrite: bool = Field(
        False,
        description="Empty a model directory <output>/<run_name> that already holds files (false: such a "
        "directory is an error; an empty one, as an unfinished run leaves it, is reused).",
    )
    data: TrainDataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @model_validator(mode="after")
    def _documents_for_the_section_head(self) -> TrainConfig:
        sections, documents = self.model.head.name == "section", self.data.matching is not None
        if sections and not documents:
            raise ValueError("the section head trains on `data.matching` documents: give them")
        if documents and not sections:
            raise ValueError("`data.matching` documents train the section head: set model.head.name: section")
        return self

    @model_validator(mode="after")
    def _task_sides(self) -> TrainConfig:
        head = self.model.head
        with_sides = sorted(name for name, task in self.data.tasks.items() if task.sides is not None)
        if head.name != "projection":
            if with_sides:
                raise ValueError(
                    f"tasks {', '.join(with_sides)} name sides, which only a projection head has"
                )
            return self
        missing = sorted(set(self.data.tasks) - set(with_sides))
        if missing:
            raise ValueError(f"a projection head needs `sides` for every task; missing: {', '.join(missing)}")
        unknown = sorted({s for task in self.data.tasks.values() for s in task.sides if s not in head.sides})
        if unknown:
            raise ValueError(f"tasks name sides {', '.join(unknown)} not in model.head.sides")
        if len(set(head.sides.values())) != 1:
            raise ValueError(f"trained projection sides need one output dimension, got {head.sides}")
        if not head.input_sides:
            raise ValueError("a projection head needs `input_sides` (which side encodes which kind of text)")
        return self

    @model_validator(mode="after")
    def _batch_splits(self) -> TrainConfig:
        workers = self.scaling.num_workers
        if self.batch_size % workers:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of scaling.num_workers {workers}"
            )
        if self.grad_cache and self.deepspeed.zero_stage == 0:
            raise ValueError("grad_cache needs deepspeed.zero_stage 1, 2 or 3 (or set grad_cache=false)")
        if self.grad_cache and self.deepspeed.precision != "fp32" and self.deepspeed.zero_stage == 1:
            raise ValueError("gradient caching in bf16/fp16 needs deepspeed.zero_stage 2 or 3")
        if self.deepspeed.precision != "fp32" and not self.scaling.use_gpu:
            raise ValueError(f"deepspeed.precision '{self.deepspeed.precision}' needs scaling.use_gpu=true")
        return self

    @property
    def local_batch_size(self) -> int:
        """Pairs each worker encodes per step."""
        return self.batch_size // self.scaling.num_workers
