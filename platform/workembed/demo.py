"""A first look at workembed on the built-in sample: the ESCO ICT taxonomy and the packaged encoder.

Embeds every skill of the built-in ESCO sample and a few job-ad sentences with all-MiniLM-L6-v2, and prints
the closest skills for each sentence. Run with ``python -m workembed.demo`` (``make demo``).
"""

from __future__ import annotations

import json

import numpy as np

from workembed.models import Encoder
from workembed.taxonomy import BUILTIN, load_esco

SAMPLE_SENTENCES = (
    "You will design and maintain PostgreSQL databases and tune slow SQL queries.",
    "Experience with Kubernetes and Docker for deploying microservices is required.",
    "We expect strong skills in Python and machine learning libraries such as PyTorch.",
    "You protect our network from cyber attacks and manage firewalls.",
)


def main(top_k: int = 3) -> None:
    taxonomy = load_esco(BUILTIN)
    stats = taxonomy.stats()
    print(json.dumps({key: stats[key] for key in ("source", "skills", "occupations", "relations")}, indent=2))
    skills = sorted(taxonomy.skills.values(), key=lambda skill: skill.uri)
    encoder = Encoder("minilm")
    skill_vectors = encoder.embed([skill.preferred_label for skill in skills])
    sentence_vectors = encoder.embed(list(SAMPLE_SENTENCES))
    scores = sentence_vectors @ skill_vectors.T
    for sentence, row in zip(SAMPLE_SENTENCES, scores, strict=True):
        print(f"\n{sentence}")
        for index in np.argsort(-row)[:top_k]:
            print(f"  {row[index]:.3f}  {skills[index].preferred_label}  <{skills[index].uri}>")


if __name__ == "__main__":
    main()
