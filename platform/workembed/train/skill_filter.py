"""``workembed run skill-filter``: fit the non-skill sentence filter of a model on SkillSpan and report it.

Training sentences are SkillSpan's train split minus every sentence that occurs in a benchmark file
(:mod:`workembed.retrieval.leakage`; SkillSpan dev included, so train and evaluation never share a sentence).
The sentences are embedded by the model (input kind ``skill_sentence``) and the filter
(:mod:`workembed.models.skill_filter`) is fitted on them; its precision and recall as a detector of
skill-bearing sentences are reported on SkillSpan dev. The filter is written into ``out`` (default: the
model folder), where evaluation (``workembed eval extraction --set skill_filter=true``) finds it.
SkillSpan sentences are never skill–sentence training pairs: only this binary label is used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from workembed.config import Config, is_uri, resolve_data_path

logger = logging.getLogger(__name__)

REPORT_FILE = "skill_filter_report.json"


class SkillFilterConfig(Config):
    """Settings of ``workembed run skill-filter``."""

    model: str = Field(
        "minilm", description="The encoder whose sentence embeddings the filter reads: 'minilm' or a folder."
    )
    skillspan: str = Field(
        "benchmarks/skillspan", description="Folder of SkillSpan's train.json and dev.json (data root)."
    )
    benchmarks: str = Field(
        "benchmarks", description="Benchmarks folder: its evaluation sentences are kept out of training."
    )
    out: str | None = Field(
        None,
        description="Folder that receives skill_filter.json and skill_filter_report.json; null: the model "
        "folder (an alias such as 'minilm' needs an out).",
    )
    regularization: float = Field(1.0, gt=0, description="Inverse L2 strength C of the logistic regression.")
    threshold: float = Field(0.5, gt=0, lt=1, description="Keep a sentence when p(skill) is at least this.")
    max_length: int = Field(128, ge=8, description="Tokens per sentence.")
    batch_size: int = Field(64, ge=1, description="Sentences embedded at a time.")
    device: str = Field("cpu", description="Torch device of the encoder.")
    seed: int = Field(0, description="Seed of the solver.")

    @model_validator(mode="after")
    def _has_destination(self) -> SkillFilterConfig:
        from workembed.models.folder import MODEL_ALIASES

        if self.out is None and (self.model in MODEL_ALIASES or is_uri(self.model)):
            raise ValueError(f"model '{self.model}' is not a local folder: give `out`")
        return self


def run_skill_filter(config: SkillFilterConfig) -> dict[str, Any]:
    """Fit, evaluate and save the filter as ``config`` says; returns the report."""
    from workembed.data.skillspan import read_skillspan
    from workembed.models import Encoder
    from workembed.models.skill_filter import fit_skill_filter, precision_recall
    from workembed.retrieval.leakage import benchmark_texts, every_key, leaked, text_key

    folder = Path(resolve_data_path(config.skillspan))
    train, dev = read_skillspan(folder / "train.json"), read_skillspan(folder / "dev.json")
    benchmark = benchmark_texts(resolve_data_path(config.benchmarks))
    hits = leaked([s.text for s in train], benchmark)
    excluded = every_key(benchmark)
    kept = [s for s in train if text_key(s.text) not in excluded]
    logger.info(
        "SkillSpan train: %d sentences, %d dropped as benchmark sentences", len(train), len(train) - len(kept)
    )
    encoder = Encoder(
        config.model, max_length=config.max_length, batch_size=config.batch_size, device=config.device
    )
    labels = np.array([s.has_skill for s in kept])
    fitted = fit_skill_filter(
        encoder.embed([s.text for s in kept], "skill_sentence"),
        labels,
        regularization=config.regularization,
        threshold=config.threshold,
        seed=config.seed,
    )
    dev_labels = np.array([s.has_skill for s in dev])
    dev_vectors = encoder.embed([s.text for s in dev], "skill_sentence")
    report = {
        "model": config.model,
        "train": {
            "sentences": len(train),
            "benchmark_sentences_dropped": len(train) - len(kept),
            "dropped_by_file": {name: len(texts) for name, texts in sorted(hits.items())},
            "used": len(kept),
            "with_skill": int(labels.sum()),
            "fingerprint": hashlib.sha256("\n".join(s.text for s in kept).encode()).hexdigest(),
        },
        "dev": {
            "sentences": len(dev),
            "with_skill": int(dev_labels.sum()),
            **precision_recall(fitted.keep(dev_vectors), dev_labels),
        },
        "threshold": config.threshold,
        "regularization": config.regularization,
    }
    skill_filter = dataclasses.replace(fitted, info={"model": config.model, "fitted": report["train"]})
    out = Path(config.out if config.out is not None else encoder.path)
    out.mkdir(parents=True, exist_ok=True)
    report["filter"] = str(skill_filter.save(out))
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    dev_report = report["dev"]
    logger.info(
        "SkillSpan dev: precision %.3f, recall %.3f, %.1f%% of sentences dropped; wrote %s",
        dev_report["precision"],
        dev_report["recall"],
        100 * dev_report["dropped"],
        report["filter"],
    )
    return report
