"""The bipartite training graphs as ``edges`` rows.

Left is the query side (a text: alt label, job title, sentence, project), right the target (an ESCO concept or
a profile). Tasks:

| task | left → right | origin | weight |
| --- | --- | --- | --- |
| ``skill-alt`` | skill alternative label → skill | esco | 1 |
| ``skill-job`` | occupation → skill (ESCO relation¹) | esco | essential / optional / unspecified weight |
| ``skill-job`` | grounded ad title → each skill grounded in the ad | vacancy | best score |
| ``job-alt`` | occupation alternative label → occupation | esco | 1 |
| ``job-title`` | ad title → grounded occupation | vacancy | score |
| ``skill-sentence`` | ad sentence → grounded skill | vacancy | score (lexical 1) |
| ``skill-sentence`` | SkillSkape sentence → each of its ESCO skills | synthetic | 1 |
| ``project-profile`` | project → profile (see :mod:`workembed.data.matching`) | vacancy | +1 / -1 |

¹ A relation whose occupation or skill the export does not hold has nothing to connect; it is counted
(``Taxonomy.dangling_relations``, reported in the ingest summary) and gives no edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from workembed.data.config import GraphConfig
from workembed.data.ground import GROUNDED
from workembed.taxonomy import Taxonomy

EDGE_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("left_id", pa.string()),
        ("left_text", pa.string()),
        ("right_id", pa.string()),
        ("right_text", pa.string()),
        ("weight", pa.float32()),
        ("origin", pa.string()),
    ]
)
ESCO, VACANCY = "esco", "vacancy"
SYNTHETIC, SYNTHETIC_TEST = "synthetic", "synthetic-test"
"""Origins of LLM-written edges; ``synthetic-test`` marks a test model's output, never trained on."""


def _edge(task, left_id, left_text, right_id, right_text, weight, origin) -> dict:
    return {
        "task": task,
        "left_id": left_id,
        "left_text": left_text,
        "right_id": right_id,
        "right_text": right_text,
        "weight": float(weight),
        "origin": origin,
    }


def esco_edges(taxonomy: Taxonomy, config: GraphConfig) -> Iterator[dict]:
    """S–A, S–J and J–A edges straight from the taxonomy (one S–J edge per relation that is not dangling)."""
    weights = {
        "essential": config.essential_weight,
        "optional": config.optional_weight,
        "unspecified": config.unspecified_weight,
    }
    for skill in taxonomy.skills.values():
        for index, alt in enumerate(skill.alt_labels):
            yield _edge(
                "skill-alt", f"{skill.uri}#alt{index}", alt, skill.uri, skill.preferred_label, 1.0, ESCO
            )
    for relation in taxonomy.relations:
        occupation = taxonomy.occupations.get(relation.occupation_uri)
        skill = taxonomy.skills.get(relation.skill_uri)
        if occupation is None or skill is None:
            continue
        yield _edge(
            "skill-job",
            occupation.uri,
            occupation.preferred_label,
            skill.uri,
            skill.preferred_label,
            weights.get(relation.relation_type, config.unspecified_weight),
            ESCO,
        )
    for occupation in taxonomy.occupations.values():
        for index, alt in enumerate(occupation.alt_labels):
            yield _edge(
                "job-alt",
                f"{occupation.uri}#alt{index}",
                alt,
                occupation.uri,
                occupation.preferred_label,
                1.0,
                ESCO,
            )


def esco_edges_table(taxonomy: Taxonomy, config: GraphConfig) -> pa.Table:
    return pa.Table.from_pylist(list(esco_edges(taxonomy, config)), schema=EDGE_SCHEMA)


def skillskape_edges_table(source: str | Path, taxonomy: Taxonomy) -> tuple[pa.Table, dict]:
    """``skill-sentence`` edges of a SkillSkape CSV (``sentence``, ``skills``: a list of ESCO preferred
    labels): each sentence → each of its skills that ``taxonomy`` holds (labels matched exactly, then
    case-insensitively); ``UNK``-only sentences and unknown labels give no edge and are counted."""
    from workembed.retrieval.benchmarks import skillskape_dataset
    from workembed.retrieval.esco_concepts import concept_id

    dataset = skillskape_dataset(source, taxonomy, name="skillskape-train")
    uris = {concept_id(uri): uri for uri in taxonomy.skills}
    rows = [
        _edge("skill-sentence", f"skillskape-{qid}", text, uris[skill], dataset.corpus[skill], 1.0, SYNTHETIC)
        for qid, text in dataset.queries.items()
        for skill in sorted(dataset.positives(qid))
    ]
    summary = {
        "sentences": len(dataset.queries),
        "edges": len(rows),
        "dropped": dict(dataset.meta.get("dropped", {})),
        **{key: dataset.meta[key] for key in ("labels", "unknown_labels") if key in dataset.meta},
    }
    return pa.Table.from_pylist(rows, schema=EDGE_SCHEMA), summary


class VacancyEdges:
    """Ray Data callable: grounded ads → S–V, S–J and job-title edges."""

    def __init__(self, skill_labels: dict[str, str], occupation_labels: dict[str, str]):
        self._skills = skill_labels
        self._occupations = occupation_labels

    def __call__(self, batch: pa.Table) -> pa.Table:
        edges: list[dict] = []
        for ad in batch.to_pylist():
            if ad.get("grounding") == GROUNDED:
                edges.extend(self.edges(ad))
        return pa.Table.from_pylist(edges, schema=EDGE_SCHEMA)

    def edges(self, ad: dict) -> Iterator[dict]:
        best: dict[str, float] = {}
        for index, (sentence, matches) in enumerate(zip(ad["sentences"], ad["sentence_skills"], strict=True)):
            for match in matches:
                yield _edge(
                    "skill-sentence",
                    f"{ad['ad_id']}#{index}",
                    sentence,
                    match["uri"],
                    self._skills[match["uri"]],
                    match["score"],
                    VACANCY,
                )
                best[match["uri"]] = max(best.get(match["uri"], 0.0), match["score"])
        occupation = ad.get("occupation_uri")
        if occupation and ad["title"]:
            yield _edge(
                "job-title",
                ad["ad_id"],
                ad["title"],
                occupation,
                self._occupations[occupation],
                ad["occupation_score"],
                VACANCY,
            )
            for uri, score in sorted(best.items()):
                yield _edge("skill-job", ad["ad_id"], ad["title"], uri, self._skills[uri], score, VACANCY)
