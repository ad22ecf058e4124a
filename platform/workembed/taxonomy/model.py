"""The ESCO taxonomy as plain, typed Python objects."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Labels:
    """A concept's labels in one language."""

    preferred: str
    alt: tuple[str, ...] = ()


@dataclass(frozen=True)
class Skill:
    """An ESCO skill or knowledge concept."""

    uri: str
    preferred_label: str
    alt_labels: tuple[str, ...]
    description: str
    skill_type: str  # "skill/competence" | "knowledge" | "" (unknown)
    reuse_level: str  # "transversal" | "cross-sector" | "sector-specific" | "occupation-specific" | ""
    translations: dict[str, Labels] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Occupation:
    """An ESCO occupation."""

    uri: str
    preferred_label: str
    alt_labels: tuple[str, ...]
    description: str
    isco_group: str
    code: str
    translations: dict[str, Labels] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SkillGroup:
    """A node of the skill hierarchy (skill groups, ISCED-F fields, transversal groups)."""

    uri: str
    preferred_label: str
    alt_labels: tuple[str, ...]
    description: str
    code: str
    translations: dict[str, Labels] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class OccupationSkillRelation:
    """An occupation requires a skill; ``relation_type`` is essential, optional or unspecified."""

    occupation_uri: str
    skill_uri: str
    relation_type: str
    skill_type: str


@dataclass(frozen=True)
class HierarchyRow:
    """One row of the skills hierarchy: the URIs of levels 0..3 (empty below the row's depth)."""

    level_uris: tuple[str, str, str, str]
    level_labels: tuple[str, str, str, str]
    level_codes: tuple[str, str, str, str]

    @property
    def depth(self) -> int:
        """Deepest filled level (0..3)."""
        return max(i for i, uri in enumerate(self.level_uris) if uri)


@dataclass(frozen=True)
class BroaderRelation:
    """``concept_uri`` sits directly under ``broader_uri`` in the skill pillar."""

    concept_type: str
    concept_uri: str
    broader_type: str
    broader_uri: str


@dataclass(frozen=True)
class SkillSkillRelation:
    """A skill is related to another (essential or optional)."""

    original_uri: str
    related_uri: str
    relation_type: str


@dataclass
class Taxonomy:
    """A loaded ESCO release (or a subset of one, such as the built-in sample)."""

    source: str
    skills: dict[str, Skill]
    occupations: dict[str, Occupation]
    relations: list[OccupationSkillRelation]
    hierarchy: list[HierarchyRow] = field(default_factory=list)
    skill_groups: dict[str, SkillGroup] = field(default_factory=dict)
    skill_broader: list[BroaderRelation] = field(default_factory=list)
    skill_relations: list[SkillSkillRelation] = field(default_factory=list)
    languages: tuple[str, ...] = ("en",)
    notes: dict[str, int] = field(default_factory=dict)

    def stats(self) -> dict[str, object]:
        """Counts of every part, as printed by ``workembed esco stats``."""
        relation_types = Counter(r.relation_type for r in self.relations)
        return {
            "source": self.source,
            "languages": list(self.languages),
            "skills": len(self.skills),
            "occupations": len(self.occupations),
            "relations": len(self.relations),
            "relations_essential": relation_types.get("essential", 0),
            "relations_optional": relation_types.get("optional", 0),
            "relations_unspecified": relation_types.get("unspecified", 0),
            "relations_dangling": len(self.dangling_relations()),
            "hierarchy_rows": len(self.hierarchy),
            "skill_groups": len(self.skill_groups),
            "skill_broader_relations": len(self.skill_broader),
            "skill_skill_relations": len(self.skill_relations),
            "skill_alt_labels": sum(len(s.alt_labels) for s in self.skills.values()),
            "occupation_alt_labels": sum(len(o.alt_labels) for o in self.occupations.values()),
            **self.notes,
        }

    def dangling_relations(self) -> list[OccupationSkillRelation]:
        """Relations naming an occupation or skill the export does not hold (ESCO v1.1.1 has 67)."""
        return [
            r
            for r in self.relations
            if r.occupation_uri not in self.occupations or r.skill_uri not in self.skills
        ]

    def broader_map(self) -> dict[str, list[str]]:
        """concept URI → the URIs directly above it in the skill pillar."""
        parents: dict[str, list[str]] = {}
        for rel in self.skill_broader:
            parents.setdefault(rel.concept_uri, []).append(rel.broader_uri)
        return parents
