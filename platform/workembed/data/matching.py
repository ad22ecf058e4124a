"""Project → profile edges (task ``project-profile``, origin ``vacancy``) from the matching data.

A directory holds ``upwork_projects.csv`` (projects), ``resumes.csv`` (profiles) and
``job_cv_pairs_llm_scored.csv`` (offer–CV pairs scored 0–1 by an LLM). Weight +1 marks a fit, -1 a known
mismatch; unknown pairs (adjacency 0) are not written. Edge texts are cut to 2,000 characters. The rule:

1. Project: title without " - Upwork"; description = ``raw_description`` before its RSS footer (``<b>Posted
   On</b>``: category and skills again) as plain text; text = title + blank line + description; skills and
   category HTML-unescaped; id ``upwork-<~01… job key of the link>`` (else ``upwork-<sha1(link)[:16]>``).
   Profile: id ``resume-<row index>``, text the stripped resume (mojibake kept). Rejected, never dropped
   silently: empty description or resume, unparseable skills, a project id or whitespace-normalised resume
   text seen before (``resumes.csv`` holds 166 distinct resumes in 962 rows).
2. A resume mentions a skill when the skill occurs case-insensitively (as written for skills of ≤ 2
   characters: "R", "C", "Go") with no letter, digit or "_" on either side, nor "+"/"#" right after a final
   letter or digit: "R" is not in "React", "C" not in "C++" or "C#", "C++" is in "C++,".
3. Positive (+1): ``shared >= min_shared_skills`` (3) of the project's skills are mentioned and
   ``shared / len(skills) >= min_skill_fraction`` (0.3); per project the ``max_positives_per_project`` (20)
   best by shared count, ties by profile_id.
4. Negative (-1): no project skill mentioned and the resume category outside :data:`COMPATIBLE` of the
   project's category; ``negatives_per_project`` (5) drawn without replacement from those (sorted by
   profile_id) with ``numpy.random.default_rng([seed, sha1(project_id)])``. Categories absent from the map
   (Data Entry, General Virtual Assistance, Technical Writing: anyone may fit) get no negatives.
5. LLM pairs: scores come in clusters: 0.02–0.15 unrelated fields, 0.20–0.25 partial overlap, 0.32–0.45 same
   field but another role, 0.62–0.72 clear fits. ``score >= llm_positive_min_score`` (0.6) → +1, ``score <=
   llm_negative_max_score`` (0.15) → -1, else not written; a repeated pair's scores are averaged first. Left
   id ``offer-<sha1(text)[:16]>``; the CV (minus "Résumé:") is the ``resumes.csv`` profile with the same
   whitespace-normalised text if any (id and text), else ``cv-<sha1(text)[:16]>``. Empty texts and scores
   outside [0, 1] are rejected.
"""

from __future__ import annotations

import ast
import hashlib
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import ahocorasick
import numpy as np
import pandas as pd
from inscriptis import get_text
from pydantic import Field, model_validator

from workembed.config import Config
from workembed.errors import ConfigError, DatasetError

TASK, ORIGIN, STAGE = "project-profile", "vacancy", "matching"
EDGE_COLUMNS = ["task", "left_id", "left_text", "right_id", "right_text", "weight", "origin"]
REJECT_COLUMNS = ["stage", "reason", "raw"]
PROJECTS_FILE, PROFILES_FILE, PAIRS_FILE = "upwork_projects.csv", "resumes.csv", "job_cv_pairs_llm_scored.csv"
MAX_TEXT_CHARS = 2000
CASE_SENSITIVE_CHARS = 2
FOOTER = "<b>Posted On</b>"
_JOB_KEY = re.compile(r"~(0[0-9a-f]{8,})")

_RESUME_GROUPS = """
data: Data Science, Python Developer, Database, ETL Developer, Hadoop, Business Analyst, SAP Developer
dev: Java Developer, Python Developer, DotNet Developer, Web Designing, Blockchain, SAP Developer, Database
dev: DevOps Engineer, Testing, Automation Testing
infra: DevOps Engineer, Network Security Engineer, Database, Hadoop, Python Developer, Java Developer
infra: DotNet Developer
business: Business Analyst, PMO, Operations Manager, Sales, Data Science
finance: Business Analyst, Operations Manager, SAP Developer, PMO
marketing: Sales, Business Analyst, Web Designing, Operations Manager
people: HR, Operations Manager, PMO
design: Arts, Web Designing
testing: Testing, Automation Testing, Business Analyst
engineering: Electrical Engineering, Mechanical Engineer, Civil Engineer
"""
_UPWORK_GROUPS = """
Data Visualization, Data Analytics, Data Engineering, Machine Learning, Data Extraction, Data Mining: data
Data Processing, Mathematics: data
Database Administration, Database Development: data + infra
Full Stack Development, Back-End Development, Front-End Development, Mobile App Development: dev
Desktop Software Development, Ecommerce Website Development, Web Design: dev
Scripting & Automation, Business Applications Development: data + dev
Solution Architecture: data + dev + infra
Cloud Engineering, DevOps Engineering, Systems Administration, Network Security, Tech Support: infra
Information Security: infra
Manual Testing: testing
Business Analysis & Strategy, Management Consulting, Digital Project Management, Market Research: business
Logistics & Supply Chain Management: business
Development & IT Project Management: business + dev
Accounting, Bookkeeping: finance
Financial Analysis & Modeling: finance + data
Lead Generation, Sales & Business Development, SEO, Search Engine Marketing: marketing
Social Media Marketing, Marketing Automation, Community Management: marketing
Recruiting & Talent Sourcing, Training & Development, Career Coaching, Instructional Design: people
Graphic Design, UX/UI Design, Prototyping, Presentation Design, 3D Animation, Audio Editing: design
Creative Writing: design
Electrical Engineering: engineering
Firmware Development: engineering + dev
"""


def _table(text: str) -> dict[str, set[str]]:
    """``a, b, ...: x + y`` lines → {a: {x, y}, b: {x, y}} (repeated keys accumulate)."""
    table: dict[str, set[str]] = {}
    for line in filter(str.strip, text.splitlines()):
        keys, values = line.rsplit(":", 1)
        for key in keys.split(","):
            table.setdefault(key.strip(), set()).update(v.strip() for v in re.split(r"[+,]", values))
    return table


_RESUMES_OF = _table(_RESUME_GROUPS)
COMPATIBLE = {
    category: frozenset().union(*(_RESUMES_OF[g] for g in groups))
    for category, groups in _table(_UPWORK_GROUPS).items()
}
"""Upwork project category → resume categories that may fit it (never drawn as negatives)."""


class MatchingConfig(Config):
    """Where the matching data lives and how project–profile edges are derived from it."""

    directory: str = Field("matching", description="Folder of the three CSV files (relative: data root).")
    min_shared_skills: int = Field(3, ge=1, description="Positive: at least this many skills mentioned.")
    min_skill_fraction: float = Field(0.3, ge=0, le=1, description="Positive: and this share of them.")
    max_positives_per_project: int = Field(20, ge=0, description="Best positives kept per project.")
    negatives_per_project: int = Field(5, ge=0, description="Negatives drawn per project.")
    llm_positive_min_score: float = Field(0.6, ge=0, le=1, description="LLM score from which a pair is +1.")
    llm_negative_max_score: float = Field(0.15, ge=0, le=1, description="LLM score up to which it is -1.")
    seed: int = Field(0, description="Seed of the negative draws.")

    @model_validator(mode="after")
    def _ordered_scores(self) -> MatchingConfig:
        if self.llm_negative_max_score >= self.llm_positive_min_score:
            raise ValueError("llm_negative_max_score must be below llm_positive_min_score")
        return self


def load_projects(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Projects (project_id, title, category, skills, text) and rejected rows."""
    rows, rejects, seen = [], [], set()
    for record in _read(path):
        title = html.unescape(record.get("title", "")).strip().removesuffix(" - Upwork").strip()
        description = _html_text(record.get("raw_description", "").split(FOOTER)[0])
        project_id = _project_id(record.get("link", ""), title + description)
        try:
            skills = _parse_skills(record.get("skills", ""))
        except (ValueError, SyntaxError, TypeError):
            rejects.append(_reject("unparseable project skills", record))
            continue
        if not description:
            rejects.append(_reject("empty project description", record))
        elif project_id in seen:
            rejects.append(_reject("duplicate project", record))
        else:
            seen.add(project_id)
            category = html.unescape(record.get("category", "")).strip()
            rows.append((project_id, title, category, skills, f"{title}\n\n{description}".strip()))
    columns = ["project_id", "title", "category", "skills", "text"]
    return pd.DataFrame(rows, columns=columns), _rejects(rejects)


def load_profiles(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Profiles (profile_id ``resume-<row index>``, category, text) and rejected rows."""
    rows, rejects, seen = [], [], set()
    for index, record in enumerate(_read(path)):
        text = record.get("Resume", "").strip()
        if not text:
            rejects.append(_reject("empty resume", record))
        elif _squash(text) in seen:
            rejects.append(_reject("duplicate resume", record))
        else:
            seen.add(_squash(text))
            rows.append((f"resume-{index}", record.get("Category", "").strip(), text))
    return pd.DataFrame(rows, columns=["profile_id", "category", "text"]), _rejects(rejects)


def load_scored_pairs(path: str, profiles: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """LLM-scored pairs (left_id, left_text, right_id, right_text, mean score) and rejected rows."""
    known = {_squash(text): (pid, text) for pid, text in zip(profiles.profile_id, profiles.text, strict=True)}
    rows, rejects = [], []
    for record in _read(path):
        offer = "\n".join(line.strip() for line in record.get("offer_text", "").splitlines() if line.strip())
        cv = record.get("cv_text", "").strip().removeprefix("Résumé:").strip()
        score = pd.to_numeric(record.get("score", ""), errors="coerce")
        reason = "empty offer_text" if not offer else "empty cv_text" if not cv else None
        if reason is None and not 0 <= score <= 1:
            reason = "invalid score"
        if reason:
            rejects.append(_reject(reason, record))
            continue
        right_id, right_text = known.get(_squash(cv), (f"cv-{_sha1(cv)[:16]}", cv))
        rows.append((f"offer-{_sha1(offer)[:16]}", offer, right_id, right_text, float(score)))
    pairs = pd.DataFrame(rows, columns=["left_id", "left_text", "right_id", "right_text", "score"])
    keys = ["left_id", "left_text", "right_id", "right_text"]
    return pairs.groupby(keys, as_index=False, sort=True)["score"].mean(), _rejects(rejects)


def mention_counts(projects: pd.DataFrame, profiles: pd.DataFrame) -> np.ndarray:
    """``counts[i, j]``: how many skills of project ``i`` the resume of profile ``j`` mentions."""
    counts = np.zeros((len(projects), len(profiles)), dtype=np.int64)
    automaton = ahocorasick.Automaton()
    for key in {_key(skill) for skills in projects.skills for skill in skills}:
        automaton.add_word(key.lower(), (key.lower(), automaton.get(key.lower(), ("", ()))[1] + (key,)))
    if not len(automaton):
        return counts
    automaton.make_automaton()
    mentioned = [_mentions(automaton, text) for text in profiles.text]
    for i, skills in enumerate(projects.skills):
        keys = {_key(skill) for skill in skills}
        counts[i] = [len(found & keys) for found in mentioned]
    return counts


def skill_edges(projects: pd.DataFrame, profiles: pd.DataFrame, config: MatchingConfig) -> tuple[list, list]:
    """Positive and negative edge rows (tuples in ``EDGE_COLUMNS`` order) from skill mentions."""
    counts, people = mention_counts(projects, profiles), list(profiles.itertuples(index=False))
    order = sorted(range(len(people)), key=lambda j: people[j].profile_id)
    positives, negatives = [], []
    for project, shared in zip(projects.itertuples(index=False), counts, strict=True):
        n_skills, minimum = max(len(project.skills), 1), config.min_shared_skills
        fits = [
            j for j in order if shared[j] >= minimum and shared[j] / n_skills >= config.min_skill_fraction
        ]
        fits = sorted(fits, key=lambda j: -shared[j])  # stable: equal counts stay in profile_id order
        positives += [_edge(project, people[j], 1.0) for j in fits[: config.max_positives_per_project]]
        compatible = COMPATIBLE.get(project.category)
        if compatible is None:
            continue
        candidates = [j for j in order if shared[j] == 0 and people[j].category not in compatible]
        rng = np.random.default_rng([config.seed, int(_sha1(project.project_id)[:8], 16)])
        size = min(config.negatives_per_project, len(candidates))
        negatives += [
            _edge(project, people[candidates[k]], -1.0)
            for k in sorted(rng.choice(len(candidates), size, replace=False))
        ]
    return positives, negatives


def llm_edges(pairs: pd.DataFrame, config: MatchingConfig) -> list[tuple]:
    """Edge rows of the LLM-scored pairs that pass a threshold."""
    high, low = config.llm_positive_min_score, config.llm_negative_max_score
    labelled = pairs[(pairs.score >= high) | (pairs.score <= low)].itertuples(index=False)
    return [
        _row(p.left_id, p.left_text, p.right_id, p.right_text, 1.0 if p.score >= high else -1.0)
        for p in labelled
    ]


def build_matching_edges(
    config: MatchingConfig, directory: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Edges (``EDGE_COLUMNS``), rejected rows (``REJECT_COLUMNS``) and a summary of counts."""
    base = str(directory).rstrip("/")
    projects, rejected_projects = load_projects(f"{base}/{PROJECTS_FILE}")
    profiles, rejected_profiles = load_profiles(f"{base}/{PROFILES_FILE}")
    pairs, rejected_pairs = load_scored_pairs(f"{base}/{PAIRS_FILE}", profiles)
    positives, negatives = skill_edges(projects, profiles, config)
    llm = llm_edges(pairs, config)
    edges = pd.DataFrame(positives + negatives + llm, columns=EDGE_COLUMNS).astype({"weight": "float64"})
    rejects = pd.concat([rejected_projects, rejected_profiles, rejected_pairs], ignore_index=True)
    reasons = rejects.reason.value_counts().sort_index()
    summary = {
        "projects": len(projects),
        "profiles": len(profiles),
        "positives": len(positives),
        "negatives": len(negatives),
        "llm_pairs": len(pairs),
        "llm_positives": sum(edge[5] > 0 for edge in llm),
        "llm_negatives": sum(edge[5] < 0 for edge in llm),
        "projects_without_positive": len(projects) - len({edge[1] for edge in positives}),
        "rejected": len(rejects),
        "rejected_by_reason": {str(reason): int(n) for reason, n in reasons.items()},
    }
    return edges, rejects, summary


def held_out_projects(project_ids: Sequence[str], fraction: float, seed: int = 0) -> frozenset[str]:
    """The projects held apart from training for evaluation: the ``round(fraction · n)`` ids with the
    smallest SHA-256 of ``"<seed>\\0<id>"`` (a pure function of the ids, the fraction and the seed)."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"the held-out fraction must lie in [0, 1), got {fraction}")
    ranked = sorted(set(project_ids), key=lambda pid: hashlib.sha256(f"{seed}\0{pid}".encode()).digest())
    return frozenset(ranked[: round(fraction * len(ranked))])


def _read(path: str) -> list[dict[str, str]]:
    return pd.read_csv(path, dtype=str, keep_default_na=False).to_dict("records")


def _reject(reason: str, record: dict[str, str]) -> dict[str, str]:
    return {"stage": STAGE, "reason": reason, "raw": json.dumps(record, ensure_ascii=False)}


def _rejects(rows: list[dict[str, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=REJECT_COLUMNS)


def _row(left_id: str, left_text: str, right_id: str, right_text: str, weight: float) -> tuple:
    return (TASK, left_id, left_text[:MAX_TEXT_CHARS], right_id, right_text[:MAX_TEXT_CHARS], weight, ORIGIN)


def _edge(project: Any, profile: Any, weight: float) -> tuple:
    return _row(project.project_id, project.text, profile.profile_id, profile.text, weight)


def _html_text(fragment: str) -> str:
    lines = (line.strip() for line in get_text(fragment).splitlines()) if fragment.strip() else ()
    return "\n".join(line for line in lines if line)


def _parse_skills(value: str) -> list[str]:
    parsed = ast.literal_eval(value) if value.strip() else []
    if not isinstance(parsed, list | tuple) or not all(isinstance(s, str) for s in parsed):
        raise DatasetError(f"not a list of strings: {value[:80]}")
    unique: dict[str, str] = {}
    for skill in (" ".join(html.unescape(s).split()) for s in parsed):
        if skill:
            unique.setdefault(_key(skill), skill)
    return list(unique.values())


def _project_id(link: str, fallback: str) -> str:
    key = _JOB_KEY.search(unquote(link))
    return f"upwork-{key.group(1)}" if key else f"upwork-{_sha1(link or fallback)[:16]}"


def _mentions(automaton: ahocorasick.Automaton, text: str) -> set[str]:
    """Keys of the skills the text mentions between word boundaries (short ones as written)."""
    lowered = text.lower()
    if len(lowered) != len(text):  # a case folding that changes length would shift the offsets
        lowered = "".join(ch.lower() if len(ch.lower()) == 1 else ch for ch in text)
    found = set()
    for last, (word, keys) in automaton.iter(lowered):
        start, end = last - len(word) + 1, last + 1
        before, after = text[start - 1 : start] or " ", text[end : end + 1] or " "
        if _word(before) or _word(after) or (_word(text[end - 1]) and after in "+#"):
            continue
        found.update(key for key in keys if len(key) > CASE_SENSITIVE_CHARS or text[start:end] == key)
    return found


def _key(skill: str) -> str:
    return skill if len(skill) <= CASE_SENSITIVE_CHARS else skill.lower()


def _word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _squash(text: str) -> str:
    return " ".join(text.split())


def _sha1(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()
