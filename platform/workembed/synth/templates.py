"""Prompt templates and builders for synthetic job-ad text grounded in ESCO.

Three named, versioned templates (:data:`TEMPLATES`), each with its parameters in :class:`PromptsConfig`:

- ``long-tail`` (long-tail enrichment): every skill with fewer than ``edge_threshold`` skill–sentence edges
  gets a prompt for N requirement sentences that need it, grounded in its preferred label, its description
  and one occupation that requires it. The label is forbidden by default (``forbid_label``): real ads rarely
  quote an ESCO preferred label, and a sentence that copies it teaches an encoder string matching instead of
  the skill; the sentence must express the skill in its own words.
- ``multi-skill`` (hierarchy-conditioned): 2–3 skills of one ESCO level-2 skill group
  (:func:`skill_group_level2`), one sentence that requires all of them (a multi-label positive). Labels are
  allowed by default: the value of these sentences lies in several skills occurring together.
- ``title-skills``: an occupation (an ESCO occupation or a real job title) → the skill phrases the job
  requires, which the grounding step maps back to ESCO.

Each prompt is one row (:func:`build_prompts`), in chat form (``messages``) and as one plain text
(``prompt``). Everything is deterministic for a seed. A template's texts are fixed by its ``version``:
changing ``system``, ``user`` or a rule means a new version.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import string
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import comb
from typing import Literal

from pydantic import Field, field_validator, model_validator

from workembed.config import Config
from workembed.errors import ConfigError, DatasetError
from workembed.taxonomy import Occupation, Taxonomy

TemplateKind = Literal["sentences", "multi", "title-skills"]
OutputFormat = Literal["json", "lines"]

SENTENCE_TASK = "skill-sentence"

# ESCO's 28 languages: code → the name used in the language instruction.
LANGUAGES: dict[str, str] = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fi": "Finnish",
    "fr": "French",
    "ga": "Irish",
    "hr": "Croatian",
    "hu": "Hungarian",
    "is": "Icelandic",
    "it": "Italian",
    "lt": "Lithuanian",
    "lv": "Latvian",
    "mt": "Maltese",
    "nl": "Dutch",
    "no": "Norwegian",
    "pl": "Polish",
    "pt": "Portuguese",
    "ro": "Romanian",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sv": "Swedish",
    "uk": "Ukrainian",
}

_PLACEHOLDER = re.compile(r"\$(?:(\w+)|\{(\w+)\})")


@dataclass(frozen=True)
class Template:
    """A named, versioned prompt; texts use :class:`string.Template` placeholders (``$label``, ``${n}``).

    A line whose placeholders include an empty value is left out (optional context: a skill without a
    description, a title without an occupation). ``label_rule`` fills ``$label_rule`` when labels are
    forbidden, ``language_rule`` fills ``$language_rule`` when a language is set (``$language`` is its
    name), and ``item`` renders each listed skill of ``$skills`` (``$label``, ``$description``).
    """

    id: str
    version: int
    kind: TemplateKind
    system: str
    user: str
    output: OutputFormat
    forbid_label: bool  # default: a sentence must not contain a target's preferred label verbatim
    label_rule: str = ""
    language_rule: str = ""
    item: str = ""

    def messages(
        self, values: Mapping[str, str], *, forbid_label: bool, language: str | None
    ) -> list[dict[str, str]]:
        """The system and user messages with ``values`` filled in."""
        filled = dict(values)
        filled["label_rule"] = fill(self.label_rule, filled) if forbid_label else ""
        filled["language_rule"] = (
            fill(self.language_rule, {**filled, "language": LANGUAGES[language]}) if language else ""
        )
        return [
            {"role": "system", "content": fill(self.system, filled)},
            {"role": "user", "content": fill(self.user, filled)},
        ]

    def skill_items(self, items: Iterable[Mapping[str, str]]) -> str:
        """``$skills``: one rendered ``item`` per skill, line by line."""
        return "\n".join(fill(self.item, item) for item in items)


def fill(text: str, values: Mapping[str, str]) -> str:
    """Substitute ``values`` into ``text``, leaving out each line with a placeholder whose value is empty;
    a placeholder without a value is a :class:`KeyError`."""
    kept = [
        line
        for line in text.split("\n")
        if not any(values.get(a or b) == "" for a, b in _PLACEHOLDER.findall(line))
    ]
    return string.Template("\n".join(kept)).substitute(values)


_WRITER = (
    "You are an experienced recruiter who writes job advertisements for employers in every sector. "
    "You write the requirements sections of vacancies: concrete, natural and varied sentences that say what "
    "the candidate must know or be able to do. You follow the answer format exactly."
)
_ANALYST = (
    "You are an experienced recruiter and labour-market analyst. You know which skills and knowledge "
    "employers require for each job. You follow the answer format exactly."
)

TEMPLATES: dict[str, Template] = {
    t.id: t
    for t in (
        Template(
            id="long-tail",
            version=1,
            kind="sentences",
            output="json",
            forbid_label=True,
            system=_WRITER,
            user=(
                "Skill: $label\n"
                "Description: $description\n"
                "An occupation that requires it: $occupation\n"
                "\n"
                "Write $n different sentences that could appear in the requirements section of real job ads, "
                "each one asking the candidate for this skill.\n"
                "- Each sentence stands on its own, reads like a real vacancy and is 8 to 40 words long.\n"
                "- Vary the wording, the work setting, the level of seniority and the sentence structure.\n"
                "$label_rule\n"
                "$language_rule\n"
                "\n"
                'Answer with a JSON object of the form {"sentences": ["...", "..."]} holding exactly $n '
                "sentences, and nothing else."
            ),
            label_rule='- Do not use the exact words "$label": describe the skill in your own words, as '
            "employers do.",
            language_rule="- Write the sentences in $language.",
        ),
        Template(
            id="multi-skill",
            version=1,
            kind="multi",
            output="lines",
            forbid_label=False,
            system=_WRITER,
            user=(
                'Skills from the ESCO skill group "$group":\n'
                "$skills\n"
                "\n"
                "Write one sentence that could appear in the requirements section of a real job ad and that "
                "asks the candidate for all of these skills together.\n"
                "- The sentence reads naturally, as a recruiter would write it, and is 10 to 45 words long.\n"
                "- It fits one plausible job in which the skills are used together.\n"
                "$label_rule\n"
                "$language_rule\n"
                "\n"
                "Answer with the sentence alone on one line: no numbering, no quotation marks, "
                "no explanation."
            ),
            label_rule="- Do not copy the skill names word for word: express each skill in your own words.",
            language_rule="- Write the sentence in $language.",
            item="- $label\n  $description",
        ),
        Template(
            id="title-skills",
            version=1,
            kind="title-skills",
            output="lines",
            forbid_label=False,
            system=_ANALYST,
            user=(
                "Job title: $title\n"
                "Job description: $description\n"
                "\n"
                "List the $n skills and areas of knowledge that employers most often require for this job.\n"
                '- Write each one as a short skill phrase of 1 to 6 words, such as "prepare financial '
                'reports" or "Python".\n'
                "- Be specific to this job; leave out generic personal qualities unless the job depends on "
                "them.\n"
                "$language_rule\n"
                "\n"
                "Answer with one skill phrase per line: no numbering, no bullets, no explanation."
            ),
            language_rule="- Write the skill phrases in $language.",
        ),
    )
}


# ------------------------------------------------------------------------------------------------ config


class LongTailConfig(Config):
    """``long-tail``: sentences for skills with few skill–sentence edges."""

    enabled: bool = Field(True, description="Build long-tail prompts.")
    edge_threshold: int = Field(
        5,
        ge=1,
        description="Skills with fewer skill-sentence edges (summed over origins; absent skills count 0) "
        "get prompts.",
    )
    n_sentences: int = Field(5, ge=1, le=50, description="Sentences asked for per skill.")
    max_prompts: int | None = Field(
        1000, ge=1, description="At most this many skills (a seeded sample of the long tail); null: all."
    )
    forbid_label: bool = Field(
        True, description="Ask for (and accept only) sentences without the skill's preferred label verbatim."
    )
    description_chars: int = Field(
        400, ge=20, description="The skill description is shortened to this many characters (at a word)."
    )


class MultiSkillConfig(Config):
    """``multi-skill``: one sentence requiring 2–3 skills of one level-2 skill group."""

    enabled: bool = Field(True, description="Build multi-skill prompts (needs the ESCO skill hierarchy).")
    group_size: tuple[int, int] = Field(
        (2, 3),
        description="[min, max] skills per prompt, drawn uniformly in this range (2 <= min <= max <= 5).",
    )
    max_prompts: int = Field(
        1000, ge=1, description="Prompts to draw (groups in seeded round-robin, no skill set twice)."
    )
    forbid_label: bool = Field(
        False,
        description="Ask for (and accept only) sentences without the skills' preferred labels verbatim.",
    )
    description_chars: int = Field(
        200, ge=20, description="Each skill description is shortened to this many characters (at a word)."
    )

    @field_validator("group_size")
    @classmethod
    def _size_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not 2 <= low <= high <= 5:
            raise ValueError(f"must be [min, max] with 2 <= min <= max <= 5, got [{low}, {high}]")
        return value


class TitleSkillsConfig(Config):
    """``title-skills``: the skill phrases a job requires, from an ESCO occupation or a real title."""

    enabled: bool = Field(True, description="Build title-skills prompts.")
    source: Literal["occupations", "titles"] = Field(
        "occupations",
        description="'occupations': a seeded sample of ESCO occupations; 'titles': the real job titles "
        "passed to the builder (deduplicated, seeded sample).",
    )
    title_label: Literal["preferred", "any"] = Field(
        "preferred",
        description="Title of an ESCO occupation: its preferred label, or a seeded choice among its "
        "preferred and alternative labels.",
    )
    n_skills: int = Field(10, ge=1, le=50, description="Skill phrases asked for per title.")
    max_prompts: int | None = Field(1000, ge=1, description="At most this many titles; null: all.")
    description_chars: int = Field(
        400, ge=20, description="The occupation description is shortened to this many characters."
    )


class PromptsConfig(Config):
    """Which prompts to build, with each template's parameters."""

    seed: int = Field(0, description="Seed of every sample and choice; the same seed gives the same prompts.")
    language: str | None = Field(
        None,
        description="ISO 639-1 code of the language to write in (one of ESCO's 28, e.g. fr, de); null: no "
        "language instruction (English prompts, English output).",
    )
    long_tail: LongTailConfig = Field(default_factory=LongTailConfig, description="Template 'long-tail'.")
    multi_skill: MultiSkillConfig = Field(
        default_factory=MultiSkillConfig, description="Template 'multi-skill'."
    )
    title_skills: TitleSkillsConfig = Field(
        default_factory=TitleSkillsConfig, description="Template 'title-skills'."
    )

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str | None) -> str | None:
        if value is not None and value not in LANGUAGES:
            raise ValueError(f"unknown language '{value}'; known: {', '.join(LANGUAGES)}")
        return value

    @model_validator(mode="after")
    def _something_enabled(self) -> PromptsConfig:
        if not (self.long_tail.enabled or self.multi_skill.enabled or self.title_skills.enabled):
            raise ValueError("no template enabled: enable long_tail, multi_skill or title_skills")
        return self


# --------------------------------------------------------------------------------------------- builders


def build_prompts(
    taxonomy: Taxonomy,
    config: PromptsConfig,
    skill_edge_counts: Mapping[str, int] | None = None,
    titles: Sequence[str] | None = None,
) -> list[dict]:
    """The prompt rows of every enabled template, in template order (long-tail, multi-skill, title-skills).

    ``skill_edge_counts`` (skill URI → skill–sentence edges, see :func:`skill_sentence_counts`) selects the
    long tail; without it every skill counts 0. ``titles`` are the real job titles of
    ``title_skills.source: titles`` (and only then given).

    Row fields: prompt_id, template, template_version, kind, output, language (the code the output is asked
    in; ``en`` without a language), messages, prompt (system and user text joined by a blank line),
    targets, target_labels, forbid_label, n_sentences (sentences or skill phrases asked for), title,
    occupation_uri, group_uri (multi-skill: the level-2 group), seed.
    """
    if config.title_skills.enabled:
        source = config.title_skills.source
        if source == "titles" and titles is None:
            raise ConfigError("prompts.title_skills.source is 'titles' but no titles were given")
        if source == "occupations" and titles is not None:
            raise ConfigError("titles were given but prompts.title_skills.source is 'occupations'")
    rows: list[dict] = []
    if config.long_tail.enabled:
        rows += _long_tail_rows(taxonomy, config, skill_edge_counts or {})
    if config.multi_skill.enabled:
        rows += _multi_skill_rows(taxonomy, config)
    if config.title_skills.enabled:
        rows += _title_skill_rows(taxonomy, config, titles)
    return rows


def skill_sentence_counts(rows: Iterable[Mapping[str, object]]) -> dict[str, int]:
    """Skill URI → skill–sentence edges, from the rows of an ingest run's ``skill_edge_counts``
    (skill_uri, task, origin, count): the sum over origins of task ``skill-sentence``."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["task"] == SENTENCE_TASK:
            uri = str(row["skill_uri"])
            counts[uri] = counts.get(uri, 0) + int(row["count"])
    return counts


def long_tail_skills(
    taxonomy: Taxonomy,
    skill_edge_counts: Mapping[str, int] | None,
    threshold: int,
    limit: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Skills with fewer than ``threshold`` edges (absent: 0), seeded random order, the first ``limit``."""
    if threshold < 1:
        raise ConfigError(f"threshold must be >= 1, got {threshold}")
    counts = skill_edge_counts or {}
    chosen = sorted(uri for uri in taxonomy.skills if counts.get(uri, 0) < threshold)
    random.Random(f"{seed}/long-tail").shuffle(chosen)
    return chosen if limit is None else chosen[:limit]


def skill_group_level2(taxonomy: Taxonomy) -> dict[str, str]:
    """Skill URI → its level-2 skill group URI (skills without one are absent).

    A skill climbs the skill pillar's broader relations (through broader skills) to the first skill groups
    it meets; a group of level 3 stands for its level-2 parent in the hierarchy, one of level 0 or 1 gives
    none. Of several level-2 groups, the skill keeps the one of its own pillar first (knowledge concepts:
    the knowledge pillar's ISCED-F narrow fields; skills/competences: the skills pillar), then the other of
    those two, then transversal, then language groups; then the fewest broader steps, the group code and URI.
    """
    level2_of: dict[str, str] = {}  # group of level >= 2 → its level-2 group
    levels: dict[str, int] = {}
    pillar: dict[str, str] = {}  # level-2 group → level-0 code (S, K, T, L)
    code: dict[str, str] = {}
    for row in taxonomy.hierarchy:
        depth = row.depth
        levels[row.level_uris[depth]] = depth
        if depth >= 2:
            level2_of[row.level_uris[depth]] = row.level_uris[2]
        if depth == 2:
            pillar[row.level_uris[2]] = row.level_codes[0]
            code[row.level_uris[2]] = row.level_codes[2]
    parents = taxonomy.broader_map()
    groups: dict[str, str] = {}
    for uri, skill in taxonomy.skills.items():
        steps = _level2_steps(uri, parents, levels, level2_of)
        if steps:
            order = _KNOWLEDGE_FIRST if skill.skill_type == "knowledge" else _SKILLS_FIRST
            ranked = (
                (_pillar_rank(order, pillar.get(group, "")), n, code.get(group, ""), group)
                for group, n in steps.items()
            )
            groups[uri] = min(ranked)[-1]
    return groups


_SKILLS_FIRST = ("S", "K", "T", "L")  # level-0 codes: skills, knowledge, transversal, language
_KNOWLEDGE_FIRST = ("K", "S", "T", "L")


def _pillar_rank(order: tuple[str, ...], pillar: str) -> int:
    return order.index(pillar) if pillar in order else len(order)


def _level2_steps(
    uri: str, parents: Mapping[str, list[str]], levels: Mapping[str, int], level2_of: Mapping[str, str]
) -> dict[str, int]:
    """Level-2 groups above a skill → the fewest broader steps to reach them (breadth first)."""
    steps: dict[str, int] = {}
    frontier, seen, depth = [uri], {uri}, 0
    while frontier:
        depth += 1
        upper: list[str] = []
        for concept in frontier:
            for parent in parents.get(concept, ()):
                if parent in seen:
                    continue
                seen.add(parent)
                if parent in level2_of:
                    steps.setdefault(level2_of[parent], depth)
                elif parent not in levels:  # a broader skill: keep climbing
                    upper.append(parent)
        frontier = upper
    return steps


def _long_tail_rows(taxonomy: Taxonomy, config: PromptsConfig, counts: Mapping[str, int]) -> list[dict]:
    params = config.long_tail
    template = TEMPLATES["long-tail"]
    occupations = _occupations_by_skill(taxonomy)
    skills = long_tail_skills(taxonomy, counts, params.edge_threshold, params.max_prompts, config.seed)
    rows = []
    for index, uri in enumerate(skills):
        skill = taxonomy.skills[uri]
        candidates = occupations.get(uri, ())
        rng = random.Random(f"{config.seed}/long-tail/{uri}")
        occupation = candidates[rng.randrange(len(candidates))].preferred_label if candidates else ""
        values = {
            "label": skill.preferred_label,
            "description": _shorten(skill.description, params.description_chars),
            "occupation": occupation,
            "n": str(params.n_sentences),
        }
        rows.append(
            _row(
                template,
                index,
                values,
                config,
                targets=[uri],
                forbid_label=params.forbid_label,
                n_sentences=params.n_sentences,
                taxonomy=taxonomy,
            )
        )
    return rows


def _occupations_by_skill(taxonomy: Taxonomy) -> dict[str, list[Occupation]]:
    """Skill → the occupations requiring it as essential, or else as optional (known occupations, by URI)."""
    essential: dict[str, set[str]] = {}
    other: dict[str, set[str]] = {}
    for relation in taxonomy.relations:
        if relation.occupation_uri in taxonomy.occupations:
            target = essential if relation.relation_type == "essential" else other
            target.setdefault(relation.skill_uri, set()).add(relation.occupation_uri)
    return {
        skill: [taxonomy.occupations[uri] for uri in sorted(essential.get(skill) or other[skill])]
        for skill in essential.keys() | other.keys()
    }


def _multi_skill_rows(taxonomy: Taxonomy, config: PromptsConfig) -> list[dict]:
    params = config.multi_skill
    if not taxonomy.hierarchy:
        raise DatasetError(
            f"multi-skill prompts need the ESCO skill hierarchy, which '{taxonomy.source}' lacks "
            "(use a full ESCO export or set prompts.multi_skill.enabled: false)"
        )
    template = TEMPLATES["multi-skill"]
    members: dict[str, list[str]] = {}
    for skill, group in skill_group_level2(taxonomy).items():
        members.setdefault(group, []).append(skill)
    low, high = params.group_size
    eligible = {group: sorted(skills) for group, skills in members.items() if len(skills) >= low}
    rng = random.Random(f"{config.seed}/multi-skill")
    rows = []
    for index, (group, combo) in enumerate(_draw(eligible, low, high, params.max_prompts, rng)):
        items = [
            {
                "label": taxonomy.skills[uri].preferred_label,
                "description": _shorten(taxonomy.skills[uri].description, params.description_chars),
            }
            for uri in combo
        ]
        values = {"group": _group_label(taxonomy, group), "skills": template.skill_items(items)}
        rows.append(
            _row(
                template,
                index,
                values,
                config,
                targets=list(combo),
                forbid_label=params.forbid_label,
                n_sentences=1,
                taxonomy=taxonomy,
                group_uri=group,
            )
        )
    return rows


def _draw(
    groups: Mapping[str, list[str]], low: int, high: int, count: int, rng: random.Random
) -> list[tuple[str, tuple[str, ...]]]:
    """Up to ``count`` distinct skill sets: groups in a seeded round-robin, ``k`` uniform in
    [low, min(high, group size)], a group leaving the rotation once all its sets are drawn."""
    order = sorted(groups)
    rng.shuffle(order)
    left = {g: sum(comb(len(groups[g]), k) for k in range(low, min(high, len(groups[g])) + 1)) for g in order}
    seen: set[tuple[str, ...]] = set()
    draws: list[tuple[str, tuple[str, ...]]] = []
    while order and len(draws) < count:
        for group in list(order):
            skills = groups[group]
            combo = tuple(sorted(rng.sample(skills, rng.randint(low, min(high, len(skills))))))
            if combo in seen:
                continue
            seen.add(combo)
            draws.append((group, combo))
            left[group] -= 1
            if not left[group]:
                order.remove(group)
            if len(draws) == count:
                break
    return draws


def _group_label(taxonomy: Taxonomy, uri: str) -> str:
    group = taxonomy.skill_groups.get(uri)
    if group is not None:
        return group.preferred_label
    return next(row.level_labels[2] for row in taxonomy.hierarchy if row.level_uris[2] == uri)


def _title_skill_rows(taxonomy: Taxonomy, config: PromptsConfig, titles: Sequence[str] | None) -> list[dict]:
    params = config.title_skills
    template = TEMPLATES["title-skills"]
    rng = random.Random(f"{config.seed}/title-skills")
    jobs: list[tuple[str, str | None, str]] = []  # title, occupation URI, description
    if params.source == "titles":
        distinct: dict[str, str] = {}  # case-folded → first spelling, whitespace collapsed
        for raw in titles or ():
            title = " ".join(raw.split())
            if title:
                distinct.setdefault(title.casefold(), title)
        unique = list(distinct.values())
        rng.shuffle(unique)
        jobs = [(title, None, "") for title in unique[: params.max_prompts]]
    else:
        uris = sorted(taxonomy.occupations)
        rng.shuffle(uris)
        for uri in uris[: params.max_prompts]:
            occupation = taxonomy.occupations[uri]
            title = occupation.preferred_label
            if params.title_label == "any":
                names = [title, *occupation.alt_labels]
                title = names[random.Random(f"{config.seed}/title-skills/{uri}").randrange(len(names))]
            jobs.append((title, uri, _shorten(occupation.description, params.description_chars)))
    rows = []
    for index, (title, occupation_uri, description) in enumerate(jobs):
        values = {"title": title, "description": description, "n": str(params.n_skills)}
        rows.append(
            _row(
                template,
                index,
                values,
                config,
                targets=[],
                forbid_label=False,
                n_sentences=params.n_skills,
                taxonomy=taxonomy,
                title=title,
                occupation_uri=occupation_uri,
            )
        )
    return rows


def _shorten(text: str, chars: int) -> str:
    """Whitespace collapsed, cut at a word boundary to at most ``chars`` characters (marked " ...")."""
    return textwrap.shorten(text, width=chars, placeholder=" ...")


def _row(
    template: Template,
    index: int,
    values: Mapping[str, str],
    config: PromptsConfig,
    *,
    targets: list[str],
    forbid_label: bool,
    n_sentences: int,
    taxonomy: Taxonomy,
    title: str | None = None,
    occupation_uri: str | None = None,
    group_uri: str | None = None,
) -> dict:
    messages = template.messages(values, forbid_label=forbid_label, language=config.language)
    prompt = "\n\n".join(message["content"] for message in messages)
    return {
        "prompt_id": prompt_id(template, config.language, targets, title, index, prompt),
        "template": template.id,
        "template_version": template.version,
        "kind": template.kind,
        "output": template.output,
        "language": config.language or "en",
        "messages": messages,
        "prompt": prompt,
        "targets": targets,
        "target_labels": [taxonomy.skills[uri].preferred_label for uri in targets],
        "forbid_label": forbid_label,
        "n_sentences": n_sentences,
        "title": title,
        "occupation_uri": occupation_uri,
        "group_uri": group_uri,
        "seed": config.seed,
    }


def prompt_id(
    template: Template,
    language: str | None,
    targets: Sequence[str],
    title: str | None,
    index: int,
    prompt: str,
) -> str:
    """16 hex digits of SHA-256 over (template id, version, language, targets, title, index, prompt text)."""
    key = json.dumps([template.id, template.version, language, list(targets), title, index, prompt])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
