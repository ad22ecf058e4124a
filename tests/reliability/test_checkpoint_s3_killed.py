"""The S3 server killed in the middle of a training checkpoint write, then started again on the same port
with the same data: running the run again resumes from the last complete checkpoint, never from the
half-written one, and ends with the model of an uninterrupted run."""

from __future__ import annotations

import json
import threading
from urllib.parse import quote

import pytest
from tests.reliability.conftest import wait_until
from tests.train.test_trainer import relative_difference, weights

from workembed.config import deep_merge
from workembed.errors import ClusterError
from workembed.train.checkpoints import COMPLETE_FILE
from workembed.train.config import TrainConfig
from workembed.train.loop import STATE_FILE
from workembed.train.trainer import run_train

STEPS = 4
CUT = 3  # the checkpoint of this step is being written when the server is killed
RUN = "s3-killed"


def train_config(tmp_path, backbone, name: str, **overrides) -> TrainConfig:
    base = {
        "run_name": name,
        "seed": 7,
        "steps": STEPS,
        "batch_size": 8,
        "chunk_size": 4,
        "data": {"esco": "builtin"},
        "model": {"backbone": str(backbone), "max_length": 16},
        "optim": {"lr": 1e-3, "warmup_steps": 0},
        "deepspeed": {"zero_stage": 2},
        "scaling": {"num_workers": 1},
        "checkpoint": {"storage_path": str(tmp_path / "checkpoints"), "every_steps": 1, "max_failures": 0},
        "tracking": {"tracking_uri": None},
        "output": str(tmp_path / "models"),
    }
    return TrainConfig.model_validate(deep_merge(base, overrides))


def kept_files(s3, prefix: str) -> set[str]:
    """The object keys under ``prefix`` the S3 server keeps on disk (read without the server)."""
    folder = s3.data / "reliability"
    encoded = quote(prefix, safe="")
    return {path.name[len(encoded) :] for path in folder.iterdir() if path.name.startswith(encoded)}


def test_a_checkpoint_cut_by_a_killed_s3_server_is_never_resumed_from(
    ray_session, tmp_path, tiny_bert, durable_s3
):
    reference = run_train(train_config(tmp_path, tiny_bert, "reference"))

    cut = f"step-{CUT:07d}"
    # the server stops answering once the first file of the cut checkpoint is kept, and is killed then
    s3 = durable_s3(hold_after=rf"^reliability/train/{RUN}/{cut}/.*[^/]$")
    killer = threading.Thread(
        target=lambda: (wait_until((s3.data / ".held").exists, 600, f"a file of {cut}/"), s3.kill()),
        daemon=True,
    )
    killer.start()
    on_s3 = {"checkpoint": {"storage_path": "s3://reliability/train"}, "storage": s3.storage}
    with pytest.raises(ClusterError, match=rf"(?s)training run {RUN} failed: .*connect") as failure:
        run_train(train_config(tmp_path, tiny_bert, RUN, **on_s3))
    killer.join(timeout=30)
    assert f"Run it again with run_name={RUN}" in str(failure.value)
    assert not s3.running

    # what the killed server kept: checkpoint CUT - 1 complete and marked, checkpoint CUT cut short
    before = kept_files(s3, f"train/{RUN}/step-{CUT - 1:07d}/")
    assert {COMPLETE_FILE, STATE_FILE} <= before
    half = kept_files(s3, f"train/{RUN}/{cut}/")
    assert half and COMPLETE_FILE not in half and half < before

    s3.restart(command=s3.command[: s3.command.index("--hold-after")])
    assert kept_files(s3, f"train/{RUN}/{cut}/") == half  # the same data, served again
    resumed = run_train(train_config(tmp_path, tiny_bert, RUN, **on_s3))

    state = resumed["state"]
    assert state["resumed_at"] == [CUT - 1]
    assert state["step"] == reference["state"]["step"] == STEPS
    assert state["batches_digest"] == reference["state"]["batches_digest"]  # no step lost or repeated
    assert relative_difference(weights(resumed["model"]), weights(reference["model"])) < 1e-5
    rewritten = kept_files(s3, f"train/{RUN}/{cut}/")
    assert COMPLETE_FILE in rewritten and rewritten >= before - {"model/"}
    marker = json.loads(
        (s3.data / "reliability" / quote(f"train/{RUN}/{cut}/{COMPLETE_FILE}", safe="")).read_text()
    )
    assert marker == {"step": CUT}
