"""Target spaces a served model ranks: ``esco-skills`` and ``esco-occupations`` (id = concept URI, label =
preferred label, embedded text = preferred label) and custom spaces read from TSV or JSONL files.

A custom TSV file has the header ``id<TAB>label`` or ``id<TAB>label<TAB>text`` and one target per line; a
JSONL file has one object per line with ``id``, ``label`` and optionally ``text``. The embedded text is
``text`` when given, else the label. Blank lines are skipped; every other problem is a :class:`ValueError`
naming ``file:line``. The taxonomy is read once per location (shared by every catalog in the process), a
custom file once per catalog, both on first use.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from workembed.config import resolve_data_path
from workembed.errors import DatasetError, InputError
from workembed.serving.config import ESCO_SPACES, ServeConfig, SpaceConfig

TSV_HEADERS = (("id", "label"), ("id", "label", "text"))
JSONL_KEYS = ("id", "label", "text")


class UnknownSpaceError(InputError, KeyError):
    """A request named a target space the served model does not have (HTTP 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class TargetSpace:
    """Targets in a fixed order: ``ids[i]`` has ``labels[i]`` and is embedded from ``texts[i]``."""

    name: str
    ids: tuple[str, ...]
    labels: tuple[str, ...]
    texts: tuple[str, ...]
    description: str = ""
    kind: str | None = None  # input type of the texts (picks a projection model's side; None: its default)

    def __len__(self) -> int:
        return len(self.ids)

    def corpus(self) -> dict[str, str]:
        """``{id: text}`` in order (the input of :func:`~workembed.retrieval.embedding.target_embeddings`)."""
        return dict(zip(self.ids, self.texts, strict=True))


# ------------------------------------------------------------------------------------------ ESCO


@lru_cache(maxsize=4)
def esco_spaces(location: str) -> dict[str, TargetSpace]:
    """``esco-skills`` and ``esco-occupations`` of the taxonomy at ``location`` (read once per location)."""
    from workembed.taxonomy import load_esco

    taxonomy = load_esco(location)
    spaces = {}
    for name, concepts, what, kind in (
        ("esco-skills", taxonomy.skills, "skills", "skill_name"),
        ("esco-occupations", taxonomy.occupations, "occupations", "job_title"),
    ):
        labels = tuple(" ".join(concept.preferred_label.split()) for concept in concepts.values())
        spaces[name] = TargetSpace(
            name=name,
            ids=tuple(concepts),
            labels=labels,
            texts=labels,
            description=f"ESCO {what} ({location}): id = concept URI, matched on the preferred label",
            kind=kind,
        )
    return spaces


# ---------------------------------------------------------------------------------------- custom


def read_space(name: str, path: str | Path, description: str = "") -> TargetSpace:
    """A custom target space from a ``.tsv`` or ``.jsonl`` file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"space '{name}': file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".tsv":
        rows = _tsv_rows(path)
    elif suffix == ".jsonl":
        rows = _jsonl_rows(path)
    else:
        raise DatasetError(f"space '{name}': {path} must be a .tsv or .jsonl file")
    ids, labels, texts = [], [], []
    first_line: dict[str, int] = {}
    for line, target_id, label, text in rows:
        if target_id in first_line:
            raise DatasetError(
                f"{path}:{line}: duplicate id '{target_id}' (first on line {first_line[target_id]})"
            )
        first_line[target_id] = line
        ids.append(target_id)
        labels.append(label)
        texts.append(text or label)
    if not ids:
        raise DatasetError(f"space '{name}': {path} holds no targets")
    return TargetSpace(name, tuple(ids), tuple(labels), tuple(texts), description)


def _tsv_rows(path: Path) -> list[tuple[int, str, str, str]]:
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = tuple(cell.strip() for cell in lines[0].split("\t")) if lines else ()
    if header not in TSV_HEADERS:
        expected = " or ".join("'" + "<TAB>".join(h) + "'" for h in TSV_HEADERS)
        raise DatasetError(
            f"{path}:1: the header must be {expected}, got {'<TAB>'.join(header) or 'nothing'}"
        )
    rows = []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        cells = [cell.strip() for cell in raw.split("\t")]
        if len(cells) != len(header):
            raise DatasetError(f"{path}:{number}: {len(cells)} columns, the header has {len(header)}")
        values = dict(zip(header, cells, strict=True))
        rows.append(_row(path, number, values))
    return rows


def _jsonl_rows(path: Path) -> list[tuple[int, str, str, str]]:
    rows = []
    for number, raw in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DatasetError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
        unknown = sorted(set(record) - set(JSONL_KEYS))
        if unknown:
            raise DatasetError(
                f"{path}:{number}: unknown key(s) {', '.join(unknown)} (expected id, label, text)"
            )
        for key, value in record.items():
            if not isinstance(value, str):
                raise DatasetError(f"{path}:{number}: '{key}' must be a string, got {type(value).__name__}")
        rows.append(_row(path, number, {key: value.strip() for key, value in record.items()}))
    return rows


def _row(path: Path, number: int, values: Mapping[str, str]) -> tuple[int, str, str, str]:
    for key in ("id", "label"):
        if not values.get(key):
            raise DatasetError(f"{path}:{number}: '{key}' is missing or empty")
    return number, values["id"], " ".join(values["label"].split()), " ".join(values.get("text", "").split())


# --------------------------------------------------------------------------------------- catalog


class SpaceCatalog:
    """The target spaces of a serving config, each loaded on first use and kept."""

    def __init__(self, esco: str, spaces: Mapping[str, SpaceConfig] | None = None):
        self.esco = esco
        self.custom = dict(spaces or {})
        self._loaded: dict[str, TargetSpace] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, config: ServeConfig) -> SpaceCatalog:
        return cls(config.esco, config.spaces)

    def names(self) -> list[str]:
        """``esco-skills``, ``esco-occupations``, then the custom spaces in config order."""
        return [*ESCO_SPACES, *self.custom]

    def get(self, name: str) -> TargetSpace:
        """The space called ``name``; :class:`UnknownSpaceError` when there is none."""
        if name not in ESCO_SPACES and name not in self.custom:
            raise UnknownSpaceError(f"unknown target space '{name}' (known: {', '.join(self.names())})")
        with self._lock:
            if name not in self._loaded:
                if name in ESCO_SPACES:
                    self._loaded[name] = esco_spaces(self.esco)[name]
                else:
                    space = self.custom[name]
                    self._loaded[name] = read_space(name, resolve_data_path(space.path), space.description)
            return self._loaded[name]
