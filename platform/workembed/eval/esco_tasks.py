"""Ranking tasks built from ESCO, written in the generic format of :mod:`workembed.retrieval.ranking_dataset`.

Four tasks, each "rank a target space for a query":

- ``job-skill``: an occupation's preferred label → all skill preferred labels; relevant = the skills it
  requires, essential and optional alike (relevance 1 for both).
- ``skill-job``: a skill's preferred label → all occupation preferred labels; relevant = the occupations
  that require it (essential or optional, relevance 1).
- ``skill-normalization``: a skill alternative label → all skill preferred labels; relevant = its skill.
- ``job-normalization``: an occupation alternative label → all occupation preferred labels.

Ids are the last path segment of the ESCO URI (a UUID); alternative-label queries are
``<uuid>#alt<i>``, ``i`` the label's 0-based position in the concept's ``alt_labels``. Texts have their
whitespace collapsed (some ESCO labels end in a space). Relations naming a concept the export lacks
(``Taxonomy.dangling_relations``) are left out and counted.

Alternative labels are compared case-insensitively (after collapsing whitespace) and handled so:

- equal to the concept's own preferred label: dropped (the query would be its target verbatim);
- equal to *another* concept's preferred label: dropped (ambiguous: the corpus holds it verbatim as a
  different concept);
- repeated within one concept: kept once (the first position);
- shared by several concepts: one query (id from the first owner by id, then position) whose relevant
  documents are all its owners.

Held-apart split: :func:`held_out_concepts` keeps a concept apart when ``sha256("<seed>:<uri>")`` read as
a fraction of 2**64 is below ``fraction``. The choice is per concept, so it is stable across runs,
machines, dict orders and ESCO releases (a concept held apart in one release stays apart in the next),
and the held-apart share is ``fraction`` in expectation, not exactly. With ``split="held-out"`` a task
keeps the queries whose query concept is held apart (for a shared alternative label: any of its owners),
while the corpus stays the full target space; ``split.json`` lists the held-apart URIs so that a training
job drops every edge touching them. ``split="all"`` builds the tasks over every concept (no split.json).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field

from workembed.config import Config
from workembed.errors import ConfigError
from workembed.retrieval.esco_concepts import (
    SPLIT_FILE,
    concept_corpus,
    concept_ids,
    esco_info,
    label_key,
    tidy,
)
from workembed.retrieval.ranking_dataset import RankingDataset, ranking_dataset, write_dataset
from workembed.taxonomy import EscoConfig, Occupation, Skill, Taxonomy, load_esco_config

TASKS: tuple[str, ...] = ("job-skill", "skill-job", "skill-normalization", "job-normalization")
RELEVANCE = 1
Split = Literal["held-out", "all"]


# ---------------------------------------------------------------------------------------------- split


def held_out_score(uri: str, seed: int) -> float:
    """A uniform number in [0, 1) drawn from ``(seed, uri)`` alone."""
    digest = hashlib.sha256(f"{seed}:{uri}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out_concepts(
    taxonomy: Taxonomy, fraction: float = 0.1, seed: int = 0
) -> tuple[frozenset[str], frozenset[str]]:
    """The held-apart ``(skill_uris, occupation_uris)``: those whose :func:`held_out_score` < fraction."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    skills = frozenset(uri for uri in taxonomy.skills if held_out_score(uri, seed) < fraction)
    occupations = frozenset(uri for uri in taxonomy.occupations if held_out_score(uri, seed) < fraction)
    return skills, occupations


def split_record(taxonomy: Taxonomy, fraction: float = 0.1, seed: int = 0) -> dict:
    """The contents of ``split.json``: the method, its parameters and the held-apart URIs (sorted)."""
    skills, occupations = held_out_concepts(taxonomy, fraction, seed)
    return {
        "method": "a concept is held apart when int(sha256(f'{seed}:{uri}')[:8 bytes]) / 2**64 < fraction",
        "fraction": fraction,
        "seed": seed,
        "esco": esco_info(taxonomy),
        "counts": {
            "skills": len(skills),
            "skills_total": len(taxonomy.skills),
            "occupations": len(occupations),
            "occupations_total": len(taxonomy.occupations),
        },
        "usage": "training drops every edge (relation, alternative label, ...) touching a held-apart concept",
        "skills": sorted(skills),
        "occupations": sorted(occupations),
    }


# ---------------------------------------------------------------------------------------------- tasks


def _relation_task(
    taxonomy: Taxonomy, name: str, from_occupation: bool, keep: Collection[str] | None
) -> RankingDataset:
    sides = [
        (taxonomy.occupations, concept_ids(taxonomy.occupations, "occupation")),
        (taxonomy.skills, concept_ids(taxonomy.skills, "skill")),
    ]
    (sources, source_ids), (targets, target_ids) = sides if from_occupation else sides[::-1]
    links: dict[str, set[str]] = {}
    dangling = duplicates = 0
    types: Counter[str] = Counter()
    for rel in taxonomy.relations:
        if rel.occupation_uri not in taxonomy.occupations or rel.skill_uri not in taxonomy.skills:
            dangling += 1
            continue
        source, target = (
            (rel.occupation_uri, rel.skill_uri) if from_occupation else (rel.skill_uri, rel.occupation_uri)
        )
        linked = links.setdefault(source, set())
        if target in linked:
            duplicates += 1
            continue
        linked.add(target)
        types[rel.relation_type] += 1
    kept = [uri for uri in links if keep is None or uri in keep]
    kept.sort(key=source_ids.__getitem__)
    queries = {source_ids[uri]: tidy(sources[uri].preferred_label) for uri in kept}
    qrels = {
        source_ids[uri]: {target_ids[t]: RELEVANCE for t in sorted(links[uri], key=target_ids.__getitem__)}
        for uri in kept
    }
    source_kind = "occupation" if from_occupation else "skill"
    dropped = {
        "dangling_relations": dangling,
        "duplicate_relations": duplicates,
        f"{source_kind}s_without_relations": len(sources) - len(links),
        f"not_held_out_{source_kind}s": len(links) - len(kept),
    }
    target_kind = "skill" if from_occupation else "occupation"
    meta = {
        "language": "en",
        "direction": f"{source_kind} -> {target_kind}",
        "query": f"{source_kind} preferred label",
        "corpus": f"{target_kind} preferred labels (all)",
        "relevance": {"essential": RELEVANCE, "optional": RELEVANCE, "other": RELEVANCE},
        "relation_types": dict(sorted(types.items())),
    }
    return ranking_dataset(name, queries, concept_corpus(targets, target_ids), qrels, meta, dropped)


def job_skill_task(taxonomy: Taxonomy, keep: Collection[str] | None = None) -> RankingDataset:
    """``job-skill``: queries for the occupations in ``keep`` (None: all) with at least one relation."""
    return _relation_task(taxonomy, "job-skill", True, keep)


def skill_job_task(taxonomy: Taxonomy, keep: Collection[str] | None = None) -> RankingDataset:
    """``skill-job``: queries for the skills in ``keep`` (None: all) that some occupation requires."""
    return _relation_task(taxonomy, "skill-job", False, keep)


def _normalization_task(
    concepts: Mapping[str, Skill | Occupation], name: str, kind: str, keep: Collection[str] | None
) -> RankingDataset:
    ids = concept_ids(concepts, kind)
    preferred = {label_key(c.preferred_label) for c in concepts.values()}
    groups: dict[str, list[tuple[str, int, str]]] = {}  # label key → (id, position, uri) per owner
    dropped: Counter[str] = Counter()
    for uri, concept in concepts.items():
        own = label_key(concept.preferred_label)
        seen: set[str] = set()
        for position, label in enumerate(concept.alt_labels):
            key = label_key(label)
            if not key:
                dropped["alt_empty"] += 1
            elif key == own:
                dropped["alt_same_as_own_preferred"] += 1
            elif key in preferred:
                dropped["alt_same_as_other_preferred"] += 1
            elif key in seen:
                dropped["alt_repeated_within_concept"] += 1
            else:
                seen.add(key)
                groups.setdefault(key, []).append((ids[uri], position, uri))
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    shared = 0
    for owners in sorted(groups.values(), key=min):  # by first owner id, then label position
        owners.sort()
        if keep is not None and not any(uri in keep for _, _, uri in owners):
            dropped["not_held_out"] += 1
            continue
        first_id, position, first_uri = owners[0]
        qid = f"{first_id}#alt{position}"
        queries[qid] = tidy(concepts[first_uri].alt_labels[position])
        qrels[qid] = {owner: RELEVANCE for owner, _, _ in owners}
        shared += len(owners) > 1
    meta = {
        "language": "en",
        "direction": f"{kind} alternative label -> {kind}",
        "query": f"{kind} alternative label (id <{kind}-id>#alt<position>)",
        "corpus": f"{kind} preferred labels (all)",
        "relevance": {"owner": RELEVANCE},
        "labels_compared": "case-insensitively, whitespace collapsed",
        "shared_label_queries": shared,
        "alt_labels_merged_into_shared": sum(len(o) - 1 for o in groups.values()),
    }
    return ranking_dataset(
        name, queries, concept_corpus(concepts, ids), qrels, meta, dict(sorted(dropped.items()))
    )


def skill_normalization_task(taxonomy: Taxonomy, keep: Collection[str] | None = None) -> RankingDataset:
    """``skill-normalization``: alternative labels of skills (in ``keep``; None: all) → skills."""
    return _normalization_task(taxonomy.skills, "skill-normalization", "skill", keep)


def job_normalization_task(taxonomy: Taxonomy, keep: Collection[str] | None = None) -> RankingDataset:
    """``job-normalization``: alternative labels of occupations (in ``keep``; None: all) → occupations."""
    return _normalization_task(taxonomy.occupations, "job-normalization", "occupation", keep)


def esco_tasks(
    taxonomy: Taxonomy, fraction: float = 0.1, seed: int = 0, split: Split = "held-out"
) -> dict[str, RankingDataset]:
    """The four tasks in memory, by name, their meta naming the ESCO source, split, fraction and seed."""
    if split not in ("held-out", "all"):
        raise ConfigError(f"split must be 'held-out' or 'all', got {split!r}")
    skills: frozenset[str] | None = None
    occupations: frozenset[str] | None = None
    if split == "held-out":
        skills, occupations = held_out_concepts(taxonomy, fraction, seed)
    tasks = {
        "job-skill": job_skill_task(taxonomy, occupations),
        "skill-job": skill_job_task(taxonomy, skills),
        "skill-normalization": skill_normalization_task(taxonomy, skills),
        "job-normalization": job_normalization_task(taxonomy, occupations),
    }
    extra: dict = {"esco": esco_info(taxonomy), "split": split, "fraction": fraction, "seed": seed}
    if split == "held-out":
        extra["split_file"] = f"../{SPLIT_FILE}"
    for task in tasks.values():
        task.meta.update(extra)
    return tasks


def build_esco_tasks(
    taxonomy: Taxonomy,
    out_dir: str | Path,
    fraction: float = 0.1,
    seed: int = 0,
    split: Split = "held-out",
) -> dict:
    """Write ``out_dir/<task>/`` for the four tasks (and, held out, ``out_dir/split.json``); summarise.

    A task left without queries is not written (its summary says ``out: None``). With ``split="all"``
    no concept is held apart: a ``split.json`` left in ``out_dir`` by an earlier build is removed, so
    that a training job never drops concepts for an evaluation that does not hold them apart.
    """
    out = Path(out_dir)
    tasks = esco_tasks(taxonomy, fraction, seed, split)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"out": str(out), "esco": esco_info(taxonomy), "split": split}
    summary.update(fraction=fraction, seed=seed)
    split_path = out / SPLIT_FILE
    if split == "held-out":
        record = split_record(taxonomy, fraction, seed)
        split_path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        summary.update(split_file=str(split_path), held_out=record["counts"])
    else:
        split_path.unlink(missing_ok=True)
    summary["tasks"] = {}
    for name, task in tasks.items():
        path = None  # a task without queries (a tiny taxonomy, a small fraction) is not written
        if task.queries:
            path = str(write_dataset(out / name, task.queries, task.corpus, task.qrels, task.meta))
        summary["tasks"][name] = {"out": path, **task.meta["counts"], "dropped": task.meta["dropped"]}
    return summary


# --------------------------------------------------------------------------------------------- config


class BuildTasksConfig(Config):
    """Settings of ``workembed eval build-tasks``."""

    esco: EscoConfig = Field(default_factory=EscoConfig, description="The ESCO release to build from.")
    out: str = Field("eval-tasks/esco", description="Output folder (local): one sub-folder per task.")
    fraction: float = Field(
        0.1, gt=0, le=1, description="Expected share of skills and occupations held apart for evaluation."
    )
    seed: int = Field(0, description="Seed of the held-apart hash; another seed draws another split.")
    split: Split = Field(
        "held-out",
        description="'held-out': queries of held-apart concepts only; 'all': queries of every concept.",
    )


def run_build_tasks(config: BuildTasksConfig) -> dict:
    """Load the taxonomy a config names and build its tasks."""
    taxonomy = load_esco_config(config.esco)
    return build_esco_tasks(taxonomy, config.out, config.fraction, config.seed, config.split)
