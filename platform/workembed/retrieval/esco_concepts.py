"""ESCO concepts as ranking datasets name them, and the held-apart split a task build writes.

A concept's id is the last path segment of its URI (a UUID); texts have their whitespace collapsed (some ESCO
labels end in a space) and labels compare case-insensitively after that. ``split.json`` (written by
:mod:`workembed.eval.esco_tasks`) lists the skill and occupation URIs held apart for evaluation, which
training drops.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

from workembed.errors import DatasetError
from workembed.taxonomy import Occupation, Skill, Taxonomy

SPLIT_FILE = "split.json"

_VERSION = re.compile(r"v\d+(?:\.\d+)+")


def concept_id(uri: str) -> str:
    """The dataset id of a concept: the last path segment of its URI."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def tidy(text: str) -> str:
    """Collapse runs of whitespace and strip the ends."""
    return " ".join(text.split())


def label_key(text: str) -> str:
    """The form under which labels count as equal: whitespace collapsed, case folded."""
    return tidy(text).casefold()


def esco_version(taxonomy: Taxonomy) -> str | None:
    """The release named in the taxonomy's source (``.../esco/v1.1.1`` → ``v1.1.1``), else None."""
    found = _VERSION.findall(taxonomy.source)
    return found[-1] if found else None


def esco_info(taxonomy: Taxonomy) -> dict[str, str | None]:
    """Where a task's ESCO data came from, for ``meta.json``."""
    return {"source": taxonomy.source, "version": esco_version(taxonomy)}


def concept_ids(concepts: Mapping[str, Skill | Occupation], kind: str) -> dict[str, str]:
    """URI → id, refusing two URIs that share an id."""
    ids = {uri: concept_id(uri) for uri in concepts}
    if len(set(ids.values())) != len(ids):
        clash = [i for i, n in Counter(ids.values()).items() if n > 1][:3]
        raise DatasetError(f"{kind} URIs share ids (last path segment): {clash}")
    return ids


def concept_corpus(concepts: Mapping[str, Skill | Occupation], ids: Mapping[str, str]) -> dict[str, str]:
    """Id → preferred label of ``concepts`` (``ids``: URI → id), in id order."""
    return {ids[uri]: tidy(concepts[uri].preferred_label) for uri in sorted(concepts, key=ids.__getitem__)}


def esco_corpus(concepts: Mapping[str, Skill | Occupation], kind: str) -> dict[str, str]:
    """The target space of a concept kind: id → preferred label, in id order."""
    return concept_corpus(concepts, concept_ids(concepts, kind))


def read_split(path: str | Path) -> tuple[frozenset[str], frozenset[str]]:
    """The held-apart ``(skill_uris, occupation_uris)`` of a ``split.json`` (file or its folder)."""
    path = Path(path)
    record = json.loads((path / SPLIT_FILE if path.is_dir() else path).read_text(encoding="utf-8"))
    return frozenset(record["skills"]), frozenset(record["occupations"])
