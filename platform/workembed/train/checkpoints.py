"""Which checkpoint a training run resumes from.

Ray Train uploads a checkpoint's files (each worker its own), then registers the checkpoint in its run
snapshot in storage; until that snapshot is written, a rerun does not know the checkpoint. Storage that
fails between the two loses a complete checkpoint, and a checkpoint cut in the middle of its upload lies in
storage beside the complete ones. So every checkpoint gets a completion marker (``COMPLETE_FILE``), written
by rank 0 once every worker's upload has returned, and a run resumes from the newer of Ray's registered
checkpoint and the newest marked one: never from a folder that is neither.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

logger = logging.getLogger(__name__)

COMPLETE_FILE = "checkpoint_complete.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    """The folder of the checkpoint after ``step`` (``step-0000050``)."""
    return f"step-{step:07d}"


def step_of(path: str | None) -> int | None:
    """The step of a checkpoint folder path (None for another name)."""
    if not path:
        return None
    found = STEP_DIR.match(path.rstrip("/").rsplit("/", 1)[-1])
    return int(found.group(1)) if found else None


def mark_complete(step: int, rank: int) -> None:
    """After ``ray.train.report`` of the checkpoint of ``step`` on every rank: wait for all ranks, then
    rank 0 writes the marker into the checkpoint's folder."""
    import ray.train
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
    if rank != 0:
        return
    storage = ray.train.get_context().get_storage()
    path = f"{storage.experiment_fs_path}/{checkpoint_dir_name(step)}/{COMPLETE_FILE}"
    with storage.storage_filesystem.open_output_stream(path) as handle:
        handle.write((json.dumps({"step": step}) + "\n").encode("utf-8"))


def complete_steps(filesystem, run_path: str) -> list[int]:
    """Steps of the marked (complete) checkpoints under a run's storage folder, ascending."""
    import pyarrow.fs as pafs

    entries = filesystem.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    steps = [
        step
        for entry in entries
        if entry.type == pafs.FileType.Directory and (step := step_of(entry.path)) is not None
    ]
    marked = [
        step
        for step in steps
        if filesystem.get_file_info(f"{run_path}/{checkpoint_dir_name(step)}/{COMPLETE_FILE}").type
        == pafs.FileType.File
    ]
    return sorted(marked)


def resume_checkpoint() -> Any:
    """The checkpoint to resume from: Ray's registered one (``ray.train.get_checkpoint()``) or, when
    newer, the newest marked one in the run's storage folder; None when there is neither."""
    import ray.train
    from ray.train import Checkpoint

    registered = ray.train.get_checkpoint()
    storage = ray.train.get_context().get_storage()
    marked = complete_steps(storage.storage_filesystem, storage.experiment_fs_path)
    registered_step = step_of(registered.path) if registered is not None else None
    if marked and (registered is None or registered_step is None or marked[-1] > registered_step):
        path = f"{storage.experiment_fs_path}/{checkpoint_dir_name(marked[-1])}"
        logger.info("resuming from %s (complete; Ray had registered %s)", path, registered_step)
        return Checkpoint(path=path, filesystem=storage.storage_filesystem)
    return registered
