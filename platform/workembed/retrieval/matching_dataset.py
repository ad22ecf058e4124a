"""The project → profile matching data as items and labelled interactions (Malt retriever format).

Projects and profiles are :class:`Item` s (id, category, skill set, text), interactions are labelled
(project, profile) pairs (+1 a fit, −1 a mismatch). :func:`matching_dataset` builds them from the matching
data (``upwork_projects.csv``, ``resumes.csv``) with the rules of :mod:`workembed.data.matching` (see
:mod:`workembed.eval.matching_metrics` for the rules and the metrics computed on them);
:func:`matching_folder` finds that data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from workembed.config import resolve_data_path
from workembed.data.matching import (
    CASE_SENSITIVE_CHARS,
    PROFILES_FILE,
    PROJECTS_FILE,
    MatchingConfig,
    load_profiles,
    load_projects,
    mention_counts,
    skill_edges,
)
from workembed.errors import NotFoundError


@dataclass(frozen=True)
class Item:
    """A project or a profile."""

    id: str
    category: str
    skills: frozenset[str]
    text: str = ""


@dataclass(frozen=True)
class Interaction:
    """A labelled project → profile pair: +1 a fit, −1 a mismatch."""

    project_id: str
    profile_id: str
    label: int


def matching_dataset(
    data_root: str | Path, config: MatchingConfig | None = None
) -> tuple[list[Item], list[Item], list[Interaction]]:
    """Projects, profiles and skill-derived interactions from ``<data_root>/<config.directory>``."""
    config = config or MatchingConfig()
    directory = Path(data_root) / config.directory
    projects, _ = load_projects(str(directory / PROJECTS_FILE))
    profiles, _ = load_profiles(str(directory / PROFILES_FILE))
    positives, negatives = skill_edges(projects, profiles, config)
    interactions = [Interaction(row[1], row[3], int(row[5])) for row in positives + negatives]
    project_items = [
        Item(p.project_id, p.category, frozenset(map(skill_key, p.skills)), p.text)
        for p in projects.itertuples(index=False)
    ]
    mentioned = profile_skill_sets(profiles, sorted({s for item in project_items for s in item.skills}))
    profile_items = [
        Item(p.profile_id, p.category, skills, p.text)
        for p, skills in zip(profiles.itertuples(index=False), mentioned, strict=True)
    ]
    return project_items, profile_items, interactions


def profile_skill_sets(profiles: pd.DataFrame, vocabulary: Sequence[str]) -> list[frozenset[str]]:
    """For each profile, the (normalised) skills of ``vocabulary`` its text mentions
    (:func:`~workembed.data.matching.mention_counts` with one single-skill project per skill)."""
    if not len(vocabulary):
        return [frozenset() for _ in range(len(profiles))]
    single = pd.DataFrame({"skills": [[skill] for skill in vocabulary]})
    counts = mention_counts(single, profiles)  # [n_skills, n_profiles], 0 or 1
    return [frozenset(vocabulary[i] for i in np.flatnonzero(column)) for column in counts.T]


def skill_key(skill: str) -> str:
    """A skill as the mention rule compares it: lower-cased unless it has ≤ 2 characters."""
    return skill if len(skill) <= CASE_SENSITIVE_CHARS else skill.lower()


def matching_folder(location: str | Path, directory: str = MatchingConfig().directory) -> Path:
    """The folder holding the projects and profiles files: ``location`` itself or ``location/directory``
    (``location`` resolved against the data root)."""
    path = Path(resolve_data_path(location))
    for folder in (path, path / directory):
        if (folder / PROJECTS_FILE).is_file() and (folder / PROFILES_FILE).is_file():
            return folder
    raise NotFoundError(f"no {PROJECTS_FILE} and {PROFILES_FILE} in {path} nor in {path / directory}")
