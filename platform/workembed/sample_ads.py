"""A built-in sample of job ads, written from an ESCO taxonomy, for the demo and for smoke runs.

Each ad is for one occupation: its title is the occupation's preferred or an alternative label, and its
requirement sentences name skills the taxonomy relates to that occupation, phrased by skill type (a
competence as a task, knowledge as something to know). The output is deterministic for a given seed. Two
rows are deliberately bad (an ad without text and an exact copy of another ad) so that a run over the
sample shows quarantine and de-duplication at work. :func:`write_extraction_sample` writes requirement
sentences written the same way, labelled with the skill each names, as a skill-extraction ranking dataset
(calibration of the extraction threshold on the sample).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from workembed.errors import DatasetError
from workembed.taxonomy.model import Taxonomy

COMPANIES = (
    "Northwind Digital",
    "Blue Harbor Systems",
    "Kestrel Analytics",
    "Ostara Health IT",
    "Lumen Rail",
)
CITIES = ("Leeds", "Bristol", "Dublin", "Manchester", "Edinburgh", "Cardiff")
INTROS = (
    "{company} is hiring a {title} in {city}.",
    "Join {company} in {city} as our next {title}.",
    "We are looking for a {title} to strengthen our team in {city}.",
)
COMPETENCE = (
    "You will {label}.",
    "We expect you to {label}.",
    "Day to day you {label} together with the team.",
    "A key part of the role is to {label}.",
)
KNOWLEDGE = (
    "Knowledge of {label} is required.",
    "Experience with {label} is a plus.",
    "You are familiar with {label}.",
    "Hands-on experience in {label} is essential.",
)
OUTROS = ("We offer flexible hours and a hybrid setup.", "Apply with your CV; we answer within two weeks.")


def requirement_sentence(rng: random.Random, taxonomy: Taxonomy, skill_uri: str) -> str:
    """A job-ad requirement sentence naming the skill, phrased by its type."""
    skill = taxonomy.skills[skill_uri]
    templates = KNOWLEDGE if skill.skill_type == "knowledge" else COMPETENCE
    return rng.choice(templates).format(label=skill.preferred_label)


def sample_ads(taxonomy: Taxonomy, n_ads: int = 120, seed: int = 0, skills_per_ad: int = 5) -> list[dict]:
    """``n_ads`` job ads (``id``, ``title``, ``description``, ``company``, ``location``, ``occupation_uri``)
    followed by one ad without text and one exact copy of the first ad."""
    rng = random.Random(seed)
    related: dict[str, list[str]] = defaultdict(list)
    for relation in taxonomy.relations:
        if relation.skill_uri in taxonomy.skills:
            related[relation.occupation_uri].append(relation.skill_uri)
    occupations = sorted(
        uri for uri, skills in related.items() if len(skills) >= 3 and uri in taxonomy.occupations
    )
    if not occupations:
        raise DatasetError("the taxonomy relates no occupation to 3 or more skills: no ads can be written")
    ads = []
    for index in range(n_ads):
        occupation = taxonomy.occupations[occupations[index % len(occupations)]]
        title = rng.choice((occupation.preferred_label, *occupation.alt_labels[:3]))
        company, city = rng.choice(COMPANIES), rng.choice(CITIES)
        chosen = rng.sample(related[occupation.uri], min(skills_per_ad, len(related[occupation.uri])))
        sentences = [rng.choice(INTROS).format(company=company, title=title, city=city)]
        sentences.extend(requirement_sentence(rng, taxonomy, uri) for uri in chosen)
        sentences.append(rng.choice(OUTROS))
        ads.append(
            {
                "id": f"sample-{index:04d}",
                "title": title,
                "description": "\n".join(sentences),
                "company": company,
                "location": city,
                "occupation_uri": occupation.uri,
            }
        )
    ads.append({**ads[0], "id": f"sample-{n_ads:04d}", "description": "   "})  # no usable text: rejected
    ads.append({**ads[0], "id": f"sample-{n_ads + 1:04d}"})  # exact copy of the first ad: de-duplicated
    return ads


def write_sample_ads(path: str | Path, taxonomy: Taxonomy, n_ads: int = 120, seed: int = 0) -> Path:
    """Write :func:`sample_ads` as JSON Lines to ``path``; returns it."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:
        for ad in sample_ads(taxonomy, n_ads, seed):
            handle.write(json.dumps(ad, ensure_ascii=False) + "\n")
    return out


def write_extraction_sample(
    folder: str | Path, taxonomy: Taxonomy, n_sentences: int = 200, seed: int = 1
) -> Path:
    """A skill-extraction ranking dataset: ``n_sentences`` requirement sentences (queries), the taxonomy's
    skills (corpus: URI → preferred label) and, as gold, the skill each sentence names (qrels)."""
    from workembed.retrieval.ranking_dataset import write_dataset

    rng = random.Random(seed)
    skills = sorted(taxonomy.skills)
    queries, qrels = {}, {}
    for index in range(n_sentences):
        uri = rng.choice(skills)
        qid = f"S{index:05d}"
        queries[qid] = requirement_sentence(rng, taxonomy, uri)
        qrels[qid] = {uri: 1}
    corpus = {uri: taxonomy.skills[uri].preferred_label for uri in skills}
    meta = {"direction": "sentence -> skill label", "source": "workembed sample sentences", "seed": seed}
    return write_dataset(folder, queries, corpus, qrels, meta)
