"""``workembed eval convert``: the development sets under ``benchmarks/`` written as ranking datasets.

The readers (:mod:`workembed.retrieval.benchmarks`) return each benchmark as a :class:`RankingDataset` in
memory; each ``convert_*`` here writes one with :func:`write_dataset` and returns its summary (counts, drops
and their reasons).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import Field

from workembed.config import Config, resolve_data_path
from workembed.retrieval.benchmarks import (
    benchmark_datasets,
    jobbert_dataset,
    melo_dataset,
    skill_extraction_dataset,
    skillskape_dataset,
)
from workembed.retrieval.ranking_dataset import RankingDataset, write_dataset
from workembed.taxonomy import EscoConfig, Taxonomy, load_esco_config


def _write(dataset: RankingDataset, out_dir: str | Path) -> dict:
    path = write_dataset(out_dir, dataset.queries, dataset.corpus, dataset.qrels, dataset.meta)
    return {"name": dataset.name, "out": str(path), **dataset.meta["counts"], **_report(dataset.meta)}


def _report(meta: Mapping) -> dict:
    keys = ("dropped", "labels", "unknown_labels", "merged")
    return {key: meta[key] for key in keys if key in meta}


def convert_skill_extraction(
    source: str | Path, out_dir: str | Path, labels: str | Path | None = None
) -> dict:
    """Write one skill-extraction annotation file as a dataset in ``out_dir``; return its summary."""
    return _write(skill_extraction_dataset(source, labels), out_dir)


def convert_skillskape(source: str | Path, out_dir: str | Path, taxonomy: Taxonomy) -> dict:
    """Write SkillSkape (dev) as a dataset in ``out_dir``; return its summary."""
    return _write(skillskape_dataset(source, taxonomy), out_dir)


def convert_jobbert(source: str | Path, out_dir: str | Path, taxonomy: Taxonomy) -> dict:
    """Write the JobBERT validation titles as a dataset in ``out_dir``; return its summary."""
    return _write(jobbert_dataset(source, taxonomy), out_dir)


def convert_melo(source: str | Path, out_dir: str | Path) -> dict:
    """Write one MELO folder as a dataset in ``out_dir``; return its summary."""
    return _write(melo_dataset(source), out_dir)


def convert_all(data_root: str | Path, out_dir: str | Path, taxonomy: Taxonomy) -> dict[str, dict]:
    """Write every development set into ``out_dir/<name>/``; return the summaries by name."""
    out = Path(out_dir)
    return {name: _write(ds, out / name) for name, ds in benchmark_datasets(data_root, taxonomy).items()}


class ConvertConfig(Config):
    """Settings of ``workembed eval convert``."""

    source: str = Field(
        "benchmarks", description="The benchmarks folder (relative: the data root) or the data root itself."
    )
    esco: EscoConfig = Field(
        default_factory=EscoConfig,
        description="ESCO release: the SkillSkape / JobBERT targets.",
    )
    out: str = Field(
        "eval-tasks/benchmarks", description="Output folder (local): one sub-folder per dataset."
    )


def run_convert(config: ConvertConfig) -> dict[str, dict]:
    """Load the taxonomy a config names and convert every development set."""
    return convert_all(resolve_data_path(config.source), config.out, load_esco_config(config.esco))
