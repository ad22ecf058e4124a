"""Reader for the official ESCO CSV export, as published.

An export is a zip (``classification-en-csv.zip``, ``relations-csv.zip``), a folder holding such zips, or
a folder of the extracted CSV files; local or on any fsspec filesystem (``s3://bucket/esco/v1.1.1``).
Language-specific folders (``occupations_fr.csv``, ``skillGroups_fr.csv``, ...) attach as translations.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import fsspec
import pandas as pd

from workembed.errors import DatasetError
from workembed.taxonomy.model import (
    BroaderRelation,
    HierarchyRow,
    Labels,
    Occupation,
    OccupationSkillRelation,
    Skill,
    SkillGroup,
    SkillSkillRelation,
    Taxonomy,
)


class EscoFormatError(DatasetError):
    """An ESCO export misses a file or a column, or cannot be read."""


@dataclass(frozen=True)
class _Table:
    names: tuple[str, ...]  # accepted file names, "{lang}" filled in
    columns: tuple[str, ...]


_SKILLS = _Table(
    ("skills_{lang}.csv",),
    ("conceptUri", "skillType", "reuseLevel", "preferredLabel", "altLabels", "description"),
)
_OCCUPATIONS = _Table(
    ("occupations_{lang}.csv",),
    ("conceptUri", "iscoGroup", "preferredLabel", "altLabels", "description", "code"),
)
_SKILL_GROUPS = _Table(
    ("skillGroups_{lang}.csv",),
    ("conceptUri", "preferredLabel", "altLabels", "description", "code"),
)
_HIERARCHY = _Table(
    ("skillsHierarchy_{lang}.csv",),
    tuple(f"Level {i} {kind}" for i in range(4) for kind in ("URI", "preferred term"))
    + tuple(f"Level {i} code" for i in range(4)),
)
_RELATIONS = _Table(
    ("occupationSkillRelations.csv", "occupationSkillRelations_{lang}.csv"),
    ("occupationUri", "relationType", "skillType", "skillUri"),
)
_BROADER_SKILL = _Table(
    ("broaderRelationsSkillPillar.csv", "broaderRelationsSkillPillar_{lang}.csv"),
    ("conceptType", "conceptUri", "broaderType", "broaderUri"),
)
_SKILL_SKILL = _Table(
    ("skillSkillRelations.csv", "skillSkillRelations_{lang}.csv"),
    ("originalSkillUri", "relationType", "relatedSkillUri"),
)

_LANGUAGE_FILE = re.compile(r"^(skills|occupations|skillGroups)_([a-z]{2,3}(?:-[a-z]+)?)\.csv$")


class ExportFiles:
    """The CSV files of an export by base name, whether they sit in zips or in a folder."""

    def __init__(self, location: str, storage_options: dict | None = None):
        self.location = location
        self._openers: dict[str, Callable[[], bytes]] = {}
        try:
            fs, root = fsspec.core.url_to_fs(location, **(storage_options or {}))
        except Exception as err:  # noqa: BLE001 - any filesystem set-up error
            raise EscoFormatError(f"cannot open ESCO location '{location}': {err}") from None
        if fs.isdir(root):
            for entry in sorted(fs.ls(root, detail=False)):
                self._add(fs, entry)
        elif fs.isfile(root):
            self._add(fs, root)
        else:
            raise EscoFormatError(f"ESCO location not found: '{location}'")
        if not self._openers:
            raise EscoFormatError(f"no ESCO CSV files (or zips of them) in '{location}'")

    def names(self) -> list[str]:
        return sorted(self._openers)

    def has(self, name: str) -> bool:
        return name in self._openers

    def read(self, name: str) -> bytes:
        return self._openers[name]()

    def _add(self, fs, path: str) -> None:
        base = path.rsplit("/", 1)[-1]
        if base.endswith(".csv"):
            self._openers.setdefault(base, lambda p=path: fs.cat_file(p))
        elif base.endswith(".zip"):
            try:
                archive = zipfile.ZipFile(io.BytesIO(fs.cat_file(path)))
            except zipfile.BadZipFile:
                raise EscoFormatError(f"not a valid zip file: '{path}'") from None
            for member in archive.namelist():
                member_base = member.rsplit("/", 1)[-1]
                if member_base.endswith(".csv"):
                    self._openers.setdefault(member_base, lambda a=archive, m=member: a.read(m))


def _frame(files: ExportFiles, table: _Table, lang: str, *, required: bool = True) -> pd.DataFrame | None:
    names = [n.format(lang=lang) for n in table.names]
    name = next((n for n in names if files.has(n)), None)
    if name is None:
        if not required:
            return None
        raise EscoFormatError(
            f"ESCO export '{files.location}' has no {' or '.join(names)} (found: {', '.join(files.names())})"
        )
    try:
        frame = pd.read_csv(io.BytesIO(files.read(name)), dtype=str, keep_default_na=False)
    except Exception as err:  # noqa: BLE001 - report any parse failure by file name
        raise EscoFormatError(f"cannot parse {name} in '{files.location}': {err}") from None
    missing = [c for c in table.columns if c not in frame.columns]
    if missing:
        raise EscoFormatError(f"{name} in '{files.location}' lacks column(s): {', '.join(missing)}")
    return frame


def split_labels(text: str) -> tuple[str, ...]:
    """ESCO packs alternative labels into one cell, one per line."""
    return tuple(label.strip() for label in text.split("\n") if label.strip())


def read_export(location: str, lang: str = "en", storage_options: dict | None = None) -> Taxonomy:
    """Read a full ESCO export (skills, occupations, relations, hierarchy, groups, pillar relations)."""
    files = ExportFiles(location, storage_options)
    skills = {
        r.conceptUri: Skill(
            uri=r.conceptUri,
            preferred_label=r.preferredLabel,
            alt_labels=split_labels(r.altLabels),
            description=r.description,
            skill_type=r.skillType,
            reuse_level=r.reuseLevel,
        )
        for r in _frame(files, _SKILLS, lang).itertuples(index=False)
    }
    occupations = {
        r.conceptUri: Occupation(
            uri=r.conceptUri,
            preferred_label=r.preferredLabel,
            alt_labels=split_labels(r.altLabels),
            description=r.description,
            isco_group=r.iscoGroup,
            code=r.code,
        )
        for r in _frame(files, _OCCUPATIONS, lang).itertuples(index=False)
    }
    relations = [
        OccupationSkillRelation(r.occupationUri, r.skillUri, r.relationType, r.skillType)
        for r in _frame(files, _RELATIONS, lang).itertuples(index=False)
    ]
    groups = {
        r.conceptUri: SkillGroup(
            uri=r.conceptUri,
            preferred_label=r.preferredLabel,
            alt_labels=split_labels(r.altLabels),
            description=r.description,
            code=r.code,
        )
        for r in _frame(files, _SKILL_GROUPS, lang).itertuples(index=False)
    }
    hierarchy_frame = _frame(files, _HIERARCHY, lang)
    hierarchy = [
        HierarchyRow(
            level_uris=tuple(row[f"Level {i} URI"] for i in range(4)),
            level_labels=tuple(row[f"Level {i} preferred term"] for i in range(4)),
            level_codes=tuple(row[f"Level {i} code"] for i in range(4)),
        )
        for row in hierarchy_frame.to_dict("records")
    ]
    broader = [
        BroaderRelation(r.conceptType, r.conceptUri, r.broaderType, r.broaderUri)
        for r in _frame(files, _BROADER_SKILL, lang).itertuples(index=False)
    ]
    skill_skill = [
        SkillSkillRelation(r.originalSkillUri, r.relatedSkillUri, r.relationType)
        for r in _frame(files, _SKILL_SKILL, lang).itertuples(index=False)
    ]
    return Taxonomy(
        source=location,
        skills=skills,
        occupations=occupations,
        relations=relations,
        hierarchy=hierarchy,
        skill_groups=groups,
        skill_broader=broader,
        skill_relations=skill_skill,
        languages=(lang,),
    )


def attach_translations(
    taxonomy: Taxonomy, location: str, storage_options: dict | None = None
) -> dict[str, int]:
    """Attach the labels of a language-specific export (``occupations_fr.csv``, ...) to ``taxonomy``.

    Returns, per file, how many of its concepts were attached; concepts unknown to the taxonomy are
    counted under ``<file>:unmatched`` (not silently ignored).
    """
    files = ExportFiles(location, storage_options)
    report: dict[str, int] = {}
    targets = {
        "skills": taxonomy.skills,
        "occupations": taxonomy.occupations,
        "skillGroups": taxonomy.skill_groups,
    }
    found_language = False
    for name in files.names():
        match = _LANGUAGE_FILE.match(name)
        if not match:
            continue
        kind, lang = match.groups()
        table = {"skills": _SKILLS, "occupations": _OCCUPATIONS, "skillGroups": _SKILL_GROUPS}[kind]
        frame = _frame(files, table, lang)
        attached, unmatched = _attach(targets[kind], frame.itertuples(index=False), lang)
        report[name] = attached
        report[f"{name}:unmatched"] = unmatched
        found_language = True
        if lang not in taxonomy.languages:
            taxonomy.languages = (*taxonomy.languages, lang)
    if not found_language:
        raise EscoFormatError(
            f"'{location}' holds no language-specific ESCO file (skills_xx.csv, occupations_xx.csv, "
            "skillGroups_xx.csv)"
        )
    return report


def _attach(concepts: dict, rows: Iterable, lang: str) -> tuple[int, int]:
    attached = unmatched = 0
    for row in rows:
        concept = concepts.get(row.conceptUri)
        if concept is None:
            unmatched += 1
            continue
        concept.translations[lang] = Labels(row.preferredLabel, split_labels(row.altLabels))
        attached += 1
    return attached, unmatched
