"""Pipeline stages by name: ``workembed run <stage>`` and ``python -m jobs.<stage>`` (through
:func:`workembed.cli.stage_main`) share this table. Every stage is ``run_<stage>(config) -> summary``: it logs
its progress to the ``workembed`` logger and returns its summary (a JSON-able mapping).

In a pipeline job (``$WORKEMBED_STAGE_RESULT`` set by ``workembed pipeline run``) the stage also prints its
summary as one line, :data:`RESULT_PREFIX` + compact JSON, on standard output: the runner reads it back from
the job log (:func:`read_result`) into the run's state, where later stages refer to it
(``{register.version}``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

from workembed.config import config_from_args
from workembed.logs import quiet_libraries

RESULT_ENV = "WORKEMBED_STAGE_RESULT"
"""Set (to ``1``) in the environment of the pipeline's jobs: the stage prints its result line."""
RESULT_PREFIX = "workembed-result| "
"""Start of the line of a pipeline job's log that holds the stage's summary (JSON)."""


@dataclass(frozen=True)
class Stage:
    """A stage: its typed config class and the function that runs it (``module:attribute`` each)."""

    name: str
    config: str
    run: str
    help: str

    def load(self, target: str):
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage(
            "ingest",
            "workembed.data.config:IngestConfig",
            "workembed.data.ingest:run_ingest",
            "job ads → job_ads, sentences, edges, rejects, skill edge counts (Ray Data)",
        ),
        Stage(
            "train",
            "workembed.train.config:TrainConfig",
            "workembed.train.trainer:run_train",
            "edges → a trained encoder (Ray Train + DeepSpeed, checkpoints, MLflow)",
        ),
        Stage(
            "evaluate",
            "workembed.eval.runner:EvalConfig",
            "workembed.eval.runner:run_eval",
            "a model on ranking datasets → JSON/Markdown/PNG report, logged to MLflow",
        ),
        Stage(
            "register",
            "workembed.registry.jobs:RegisterStageConfig",
            "workembed.registry_commands:run_register",
            "a model folder or training run → a registered MLflow version (calibrated threshold, lineage)",
        ),
        Stage(
            "promote",
            "workembed.registry.jobs:PromoteStageConfig",
            "workembed.registry_commands:run_promote",
            "move an alias to a version if the gate passes against the current holder",
        ),
        Stage(
            "extract",
            "workembed.batch_extraction:BatchExtractConfig",
            "workembed.batch_extraction:run_batch_extract",
            "job ads → ESCO skills per sentence (spans, scores) and title occupations (registered model)",
        ),
        Stage(
            "filter",
            "workembed.train.skill_filter:SkillFilterConfig",
            "workembed.train.skill_filter:run_skill_filter",
            "SkillSpan → a model's non-skill sentence filter, with its precision/recall on SkillSpan dev",
        ),
        Stage(
            "synthesize",
            "workembed.synth.config:SynthConfig",
            "workembed.synth.stage:run_synthesize",
            "ESCO prompts → an LLM (vLLM through Ray Data) → validated synthetic sentences and edges",
        ),
    )
}


def run(name: str, args: argparse.Namespace) -> object:
    """Load the stage's config from the parsed arguments and run it; returns its summary."""
    stage = STAGES[name]
    config = config_from_args(stage.load(stage.config), args)
    run_stage = stage.load(stage.run)
    quiet_libraries()  # loading the stage may have imported a library that sets up its own console logging
    summary = run_stage(config)
    if os.environ.get(RESULT_ENV):
        sys.stdout.write(RESULT_PREFIX + json.dumps(summary, separators=(",", ":"), default=str) + "\n")
        sys.stdout.flush()
    return summary


def read_result(log: str) -> dict[str, Any] | None:
    """The summary a stage printed in its job log ``log`` (its last result line), None without one."""
    for line in reversed(log.splitlines()):
        start = line.find(RESULT_PREFIX)
        if start >= 0 and not line[:start].strip():
            try:
                value = json.loads(line[start + len(RESULT_PREFIX) :])
            except json.JSONDecodeError:
                continue  # a line cut short, e.g. interleaved with a worker's output
            return value if isinstance(value, dict) else {"value": value}
    return None
