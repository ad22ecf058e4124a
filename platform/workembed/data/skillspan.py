"""SkillSpan (Zhang et al., 2022, "SkillSpan: Hard and Soft Skill Extraction from English Job Postings"):
job-posting sentences as JSON lines of ``tokens`` with BIO ``tags_skill`` and ``tags_knowledge``.

A sentence is skill-bearing when any token is tagged (a skill or a knowledge span); its text is its tokens
joined by single spaces (the anonymised ``<ORGANIZATION>``-style tokens kept).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workembed.errors import DatasetError

OUTSIDE = "O"


class SkillSpanFormatError(DatasetError):
    """A SkillSpan file that cannot be read as documented."""


@dataclass(frozen=True)
class SpanSentence:
    """One SkillSpan sentence."""

    text: str
    has_skill: bool
    source: str  # the posting collection: tech, house


def read_skillspan(path: str | Path) -> list[SpanSentence]:
    """The sentences of a SkillSpan split (``train.json``, ``dev.json``), in file order."""
    path = Path(path)
    if not path.is_file():
        raise SkillSpanFormatError(f"SkillSpan file not found: {path}")
    sentences = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                tokens, skill, knowledge = record["tokens"], record["tags_skill"], record["tags_knowledge"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise SkillSpanFormatError(f"{path}:{number}: not a SkillSpan record ({err})") from None
            if not len(tokens) == len(skill) == len(knowledge):
                raise SkillSpanFormatError(f"{path}:{number}: tokens and tags differ in length")
            tagged = any(tag != OUTSIDE for tag in (*skill, *knowledge))
            sentences.append(SpanSentence(" ".join(tokens), tagged, str(record.get("source", ""))))
    return sentences
