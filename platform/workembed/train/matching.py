"""Malt two-tower training: section-structured projects and profiles, adjacency losses, on Ray Train workers.

The data are the matching folder's projects, profiles and labelled pairs (+1 a fit, -1 a mismatch; the
rules of :func:`workembed.retrieval.matching_dataset.matching_dataset`), minus the projects held apart for
evaluation (:func:`workembed.data.matching.held_out_projects`). A batch is a pure function of
``(seed, step)``: ``batch_size`` training projects with at least one positive, each with up to
``positives_per_project`` positive and ``negatives_per_project`` negative profiles; worker ``r`` takes a
contiguous slice of the projects with their profiles. Its loss runs over the slice's extended adjacency
(labels of every known pair among the slice's documents, category mismatches as weak negatives when
``weak_negatives``, profile–profile relations through a shared project when ``transitive``):
:class:`~workembed.losses.AdjacencyInfoNCELoss` or :class:`~workembed.losses.AdjacencyTripletLoss`.
The backbone is frozen; DeepSpeed trains the section head (its gradients averaged over the workers).
Checkpoints, resume and tracking are those of :mod:`workembed.train.loop`.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workembed.errors import ConfigError
from workembed.train.config import MatchingTrainConfig, TrainConfig


@dataclass(frozen=True)
class MatchingBatch:
    """A batch of projects and the profiles drawn for them (indices into the graph's lists)."""

    projects: np.ndarray  # [P] project indices
    profiles: list[np.ndarray]  # per project: its drawn profile indices

    @property
    def rows(self) -> np.ndarray:
        """The batch's identity: project indices, then each project's profiles, with -1 separators."""
        parts = [self.projects]
        for drawn in self.profiles:
            parts += [np.array([-1]), drawn]
        return np.concatenate(parts).astype(np.int64)

    def shard(self, rank: int, world_size: int) -> tuple[list[int], list[int]]:
        """Worker ``rank``'s projects (a contiguous slice) and their drawn profiles (first-seen order)."""
        if len(self.projects) % world_size:
            raise ConfigError(f"{len(self.projects)} projects do not split over {world_size} workers")
        size = len(self.projects) // world_size
        part = slice(rank * size, (rank + 1) * size)
        profiles = list(dict.fromkeys(int(j) for drawn in self.profiles[part] for j in drawn))
        return [int(i) for i in self.projects[part]], profiles


class MatchingGraph:
    """Projects, profiles and their labelled pairs, with the training projects (see the module docstring)."""

    def __init__(self, projects, profiles, interactions, config: MatchingTrainConfig):
        from workembed.data.matching import held_out_projects

        self.projects, self.profiles, self.config = list(projects), list(profiles), config
        project_index = {item.id: i for i, item in enumerate(self.projects)}
        profile_index = {item.id: j for j, item in enumerate(self.profiles)}
        self.labels: dict[tuple[int, int], int] = {}
        for edge in interactions:
            self.labels[project_index[edge.project_id], profile_index[edge.profile_id]] = int(edge.label)
        self.held_out = held_out_projects([p.id for p in self.projects], config.held_out, config.split_seed)
        self.positives: dict[int, list[int]] = {}
        self.negatives: dict[int, list[int]] = {}
        for (i, j), label in sorted(self.labels.items()):
            (self.positives if label > 0 else self.negatives).setdefault(i, []).append(j)
        self.train_projects = np.array(
            [i for i in sorted(self.positives) if self.projects[i].id not in self.held_out], dtype=np.int64
        )

    @classmethod
    def from_folder(cls, folder: str | Path, config: MatchingTrainConfig) -> MatchingGraph:
        from workembed.retrieval.matching_dataset import matching_dataset

        projects, profiles, interactions = matching_dataset(
            folder, config.source.model_copy(update={"directory": "."})
        )
        return cls(projects, profiles, interactions, config)

    def summary(self) -> dict[str, int]:
        trained = set(self.train_projects.tolist())
        return {
            "projects": len(self.projects),
            "profiles": len(self.profiles),
            "held_out_projects": len(self.held_out),
            "training_projects": len(trained),
            "training_positives": sum(len(self.positives[i]) for i in trained),
            "training_negatives": sum(len(self.negatives.get(i, [])) for i in trained),
        }

    def fingerprint(self) -> str:
        """SHA-256 of the training documents and labels (what a run learns from)."""
        digest = hashlib.sha256()
        for i in self.train_projects.tolist():
            digest.update(f"{self.projects[i].id}\0{self.projects[i].text}\n".encode())
            for j in self.positives[i] + self.negatives.get(i, []):
                digest.update(
                    f"{self.profiles[j].id}\0{self.labels[i, j]}\0{self.profiles[j].text}\n".encode()
                )
        return digest.hexdigest()

    def batch(self, seed: int, step: int, size: int) -> MatchingBatch:
        """The batch of ``step``: a pure function of ``(seed, step)``."""
        if size > len(self.train_projects):
            raise ConfigError(
                f"batch_size {size} exceeds the {len(self.train_projects)} training projects with a positive"
            )
        rng = np.random.default_rng([seed, step])
        chosen = rng.choice(self.train_projects, size, replace=False)
        drawn = []
        for i in chosen.tolist():
            positives = rng.permutation(self.positives[i])[: self.config.positives_per_project]
            negatives = rng.permutation(self.negatives.get(i, []))[: self.config.negatives_per_project]
            drawn.append(np.concatenate([positives, negatives]).astype(np.int64))
        return MatchingBatch(chosen.astype(np.int64), drawn)

    def label_matrix(self, projects: list[int], profiles: list[int]) -> torch.Tensor:
        """``[len(projects), len(profiles)]`` int8 labels of every known pair, else -1 for a category
        mismatch (``weak_negatives``: the resume category is outside those compatible with the project's
        category, :data:`~workembed.data.matching.COMPATIBLE`), else 0 (unknown)."""
        from workembed.data.matching import COMPATIBLE

        labels = torch.zeros(len(projects), len(profiles), dtype=torch.int8)
        for row, i in enumerate(projects):
            compatible = COMPATIBLE.get(self.projects[i].category) if self.config.weak_negatives else None
            for column, j in enumerate(profiles):
                label = self.labels.get((i, j), 0)
                if label == 0 and compatible is not None and self.profiles[j].category not in compatible:
                    label = -1
                labels[row, column] = label
        return labels


def matching_worker(payload: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the section head (see the module docstring)."""
    import ray.train

    from workembed.models.document_model import DocumentModel
    from workembed.train.loop import StepLog, batch_digest, deepspeed_engine, end_step, restore

    config = TrainConfig.model_validate(payload["config"])
    settings = config.data.matching
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    graph = MatchingGraph.from_folder(payload["matching_folder"], settings)
    torch.manual_seed(config.seed)  # the same initial head on every worker
    model = DocumentModel.build(config.model.backbone, config.model.head, settings.max_section_length)
    model.cache_sections = True  # the backbone is frozen: each section's token vectors once per run
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    engine = deepspeed_engine(model, trainable, config)
    state = restore(engine)
    loss = adjacency_loss(settings)
    tracker = StepLog(payload.get("tracking_uri"), payload.get("mlflow_run_id")) if rank == 0 else None
    if tracker is not None and state["step"] == 0:
        tracker.tags({"data.fingerprint": graph.fingerprint(), "data.matching": json.dumps(graph.summary())})
    for step in range(state["step"], config.steps):
        started = time.perf_counter()
        torch.manual_seed(np.random.SeedSequence([config.seed, step, rank]).generate_state(1)[0].item())
        batch = graph.batch(config.seed, step, config.batch_size)
        state["batches"].append(batch_digest(batch))
        lr = engine.get_lr()[0]
        total, parts = matching_step(engine, graph, loss, batch, rank, world, settings.transitive)
        metrics = {
            "step": step + 1,
            "loss": total,
            **{f"loss/{name}": value for name, value in parts.items()},
            "lr": lr,
            "projects_per_s": config.batch_size / (time.perf_counter() - started),
        }
        end_step(engine, model, tracker, metrics, state, config, rank)


def adjacency_loss(settings: MatchingTrainConfig):
    from workembed.losses import AdjacencyInfoNCELoss, AdjacencyTripletLoss

    if settings.loss == "adjacency-triplet":
        return AdjacencyTripletLoss(margin=settings.margin)
    return AdjacencyInfoNCELoss(temperature=settings.temperature)


def matching_step(
    engine, graph: MatchingGraph, loss, batch: MatchingBatch, rank: int, world: int, transitive: bool
):
    """One optimizer step on this worker's slice; returns the loss (mean over workers) and its parts."""
    from workembed.losses.adjacency import extend_adjacency
    from workembed.models.document_model import profile_document, project_document

    projects, profiles = batch.shard(rank, world)
    documents = [project_document(graph.projects[i]) for i in projects]
    documents += [profile_document(graph.profiles[j]) for j in profiles]
    embedded = engine(documents)
    adjacency = extend_adjacency(graph.label_matrix(projects, profiles), transitive=transitive)
    output = loss(embedded[: len(projects)], embedded[len(projects) :], adjacency)
    engine.backward(output.loss)
    engine.step()
    value = output.loss.detach().clone()
    if world > 1:
        torch.distributed.all_reduce(value)
        value /= world
    return float(value), {name: float(part) for name, part in output.parts.items()}
