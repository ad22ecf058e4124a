"""Prompt builders: exact prompts on a hand-built taxonomy, seeded selection, and the level-2 skill groups of
ESCO v1.1.1 checked against its hierarchy and broader-relation files read independently."""

from __future__ import annotations

import csv
import io
import zipfile
from itertools import combinations

import pytest
from pydantic import ValidationError

from workembed.synth.templates import (
    TEMPLATES,
    PromptsConfig,
    build_prompts,
    long_tail_skills,
    skill_group_level2,
    skill_sentence_counts,
)
from workembed.taxonomy import (
    BroaderRelation,
    HierarchyRow,
    Occupation,
    OccupationSkillRelation,
    Skill,
    SkillGroup,
    Taxonomy,
    load_esco,
)

# ------------------------------------------------------------------------------- a hand-built taxonomy

BUDGETS, PYTHON, CONTRACTS, PAYROLL, STATISTICS, TEAMS, FILING, ORPHAN = (
    f"skill:{name}"
    for name in ("budgets", "python", "contracts", "payroll", "statistics", "teams", "filing", "orphan")
)
S, S4, S42, S421 = "group:S", "group:S4", "group:S4.2", "group:S4.2.1"
K, K04, K041, K0411 = "group:K", "group:K04", "group:K041", "group:K0411"
T, T4, T44 = "group:T", "group:T4", "group:T4.4"
ACCOUNTANT, FINANCE_MANAGER = "occupation:accountant", "occupation:finance-manager"


def _skill(uri: str, label: str, description: str = "", kind: str = "skill/competence") -> Skill:
    return Skill(uri, label, (), description, kind, "")


def _row(*levels: tuple[str, str, str]) -> HierarchyRow:
    filled = list(levels) + [("", "", "")] * (4 - len(levels))
    return HierarchyRow(
        level_uris=tuple(uri for uri, _, _ in filled),
        level_labels=tuple(label for _, label, _ in filled),
        level_codes=tuple(code for _, _, code in filled),
    )


def tiny_taxonomy() -> Taxonomy:
    skills = [
        _skill(BUDGETS, "manage budgets", "Plan, monitor and report on the budget."),
        _skill(PYTHON, "Python", kind="knowledge"),
        _skill(CONTRACTS, "negotiate contracts", "Agree on  the terms\nof contracts."),
        _skill(PAYROLL, "prepare payroll", "Calculate and pay salaries."),
        _skill(STATISTICS, "statistics", "The study of data.", kind="knowledge"),
        _skill(TEAMS, "lead teams", "Guide a team."),
        _skill(FILING, "file documents", "Keep papers in order."),
        _skill(ORPHAN, "sort mail"),
    ]
    node = {
        S: (S, "skills", "S"),
        S4: (S4, "management skills", "S4"),
        S42: (S42, "planning", "S4.2"),
        S421: (S421, "budgeting", "S4.2.1"),
        K: (K, "knowledge", "K"),
        K04: (K04, "business", ""),
        K041: (K041, "business and administration", ""),
        K0411: (K0411, "accounting and taxation", ""),
        T: (T, "transversal skills", "T"),
        T4: (T4, "social skills", "T4"),
        T44: (T44, "leading others", "T4.4"),
    }
    paths = [[S], [S, S4], [S, S4, S42], [S, S4, S42, S421], [K], [K, K04], [K, K04, K041]]
    paths += [[K, K04, K041, K0411], [T], [T, T4], [T, T4, T44]]
    hierarchy = [_row(*(node[uri] for uri in path)) for path in paths]
    groups = {
        uri: SkillGroup(uri, label, (), "", code) for uri, label, code in (node[S42], node[K041], node[T44])
    }
    broader = [
        (BUDGETS, S421),
        (BUDGETS, T44),  # skills pillar wins over transversal
        (PAYROLL, BUDGETS),  # a narrower skill: two steps up to S4.2
        (PYTHON, K0411),
        (STATISTICS, S421),
        (STATISTICS, K0411),  # knowledge: the knowledge pillar wins
        (CONTRACTS, K0411),
        (CONTRACTS, S42),  # a skill directly under a level-2 group
        (TEAMS, T44),
        (FILING, S4),  # only a level-1 group: no level-2 group
    ]
    relations = [
        OccupationSkillRelation(ACCOUNTANT, BUDGETS, "optional", ""),
        OccupationSkillRelation(FINANCE_MANAGER, BUDGETS, "essential", ""),  # essential preferred
        OccupationSkillRelation(ACCOUNTANT, CONTRACTS, "optional", ""),
        OccupationSkillRelation(FINANCE_MANAGER, CONTRACTS, "optional", ""),
        OccupationSkillRelation("occupation:unknown", TEAMS, "essential", ""),  # dangling: ignored
    ]
    return Taxonomy(
        source="tiny",
        skills={skill.uri: skill for skill in skills},
        occupations={
            ACCOUNTANT: Occupation(
                ACCOUNTANT, "accountant", ("bookkeeper", "auditor"), "Keeps accounts.", "", ""
            ),
            FINANCE_MANAGER: Occupation(FINANCE_MANAGER, "finance manager", (), "", "", ""),
        },
        relations=relations,
        hierarchy=hierarchy,
        skill_groups=groups,
        skill_broader=[BroaderRelation("", concept, "", parent) for concept, parent in broader],
    )


@pytest.fixture(scope="module")
def tiny() -> Taxonomy:
    return tiny_taxonomy()


def only(template: str, **settings) -> PromptsConfig:
    """A config with one template enabled; ``settings`` go into that template's section or the top level."""
    sections = {"long-tail": "long_tail", "multi-skill": "multi_skill", "title-skills": "title_skills"}
    top = {key: settings.pop(key) for key in ("seed", "language") if key in settings}
    values = {section: {"enabled": name == template} for name, section in sections.items()}
    values[sections[template]].update(settings)
    return PromptsConfig.model_validate({**values, **top})


WRITER = (
    "You are an experienced recruiter who writes job advertisements for employers in every sector. "
    "You write the requirements sections of vacancies: concrete, natural and varied sentences that say what "
    "the candidate must know or be able to do. You follow the answer format exactly."
)

# ------------------------------------------------------------------------------------------ hierarchy


def test_level2_group_prefers_own_pillar_then_fewest_steps(tiny):
    assert skill_group_level2(tiny) == {
        BUDGETS: S42,  # S4.2.1 → S4.2 beats T4.4
        PAYROLL: S42,  # via manage budgets
        PYTHON: K041,
        STATISTICS: K041,
        CONTRACTS: S42,
        TEAMS: T44,
    }  # file documents (level-1 group only) and sort mail (no broader) have none


def test_multi_skill_needs_a_hierarchy(tiny):
    flat = Taxonomy(source="flat", skills=tiny.skills, occupations=tiny.occupations, relations=[])
    with pytest.raises(
        ValueError, match="multi-skill prompts need the ESCO skill hierarchy, which 'flat' lacks"
    ):
        build_prompts(flat, only("multi-skill"))


# ------------------------------------------------------------------------------------------ long tail


def test_skill_sentence_counts_sum_origins_of_sentence_edges_only():
    rows = [
        {"skill_uri": BUDGETS, "task": "skill-sentence", "origin": "vacancy", "count": 2},
        {"skill_uri": BUDGETS, "task": "skill-sentence", "origin": "synthetic", "count": 3},
        {"skill_uri": BUDGETS, "task": "skill-job", "origin": "vacancy", "count": 40},
        {"skill_uri": PYTHON, "task": "skill-job", "origin": "vacancy", "count": 7},
        {"skill_uri": TEAMS, "task": "skill-sentence", "origin": "vacancy", "count": 1},
    ]
    assert skill_sentence_counts(rows) == {BUDGETS: 5, TEAMS: 1}


def test_long_tail_selection_is_exact_seeded_and_limited(tiny):
    counts = {BUDGETS: 5, PYTHON: 2, CONTRACTS: 3, PAYROLL: 1, "skill:not-in-taxonomy": 0}
    selected = long_tail_skills(tiny, counts, threshold=3, seed=7)
    assert sorted(selected) == sorted([PYTHON, PAYROLL, STATISTICS, TEAMS, FILING, ORPHAN])  # absent → 0
    assert long_tail_skills(tiny, counts, threshold=3, seed=7) == selected
    assert long_tail_skills(tiny, counts, threshold=3, limit=2, seed=7) == selected[:2]
    orders = {tuple(long_tail_skills(tiny, counts, threshold=3, seed=seed)) for seed in range(10)}
    assert len(orders) > 1
    assert sorted(long_tail_skills(tiny, None, threshold=1)) == sorted(tiny.skills)
    with pytest.raises(ValueError, match="threshold must be >= 1"):
        long_tail_skills(tiny, counts, threshold=0)


def test_long_tail_prompt_is_exact(tiny):
    counts = {uri: 9 for uri in tiny.skills if uri != BUDGETS}
    (row,) = build_prompts(tiny, only("long-tail", edge_threshold=1, n_sentences=3), counts)
    user = (
        "Skill: manage budgets\n"
        "Description: Plan, monitor and report on the budget.\n"
        "An occupation that requires it: finance manager\n"
        "\n"
        "Write 3 different sentences that could appear in the requirements section of real job ads, "
        "each one asking the candidate for this skill.\n"
        "- Each sentence stands on its own, reads like a real vacancy and is 8 to 40 words long.\n"
        "- Vary the wording, the work setting, the level of seniority and the sentence structure.\n"
        '- Do not use the exact words "manage budgets": describe the skill in your own words, '
        "as employers do.\n"
        "\n"
        'Answer with a JSON object of the form {"sentences": ["...", "..."]} holding exactly 3 sentences, '
        "and nothing else."
    )
    assert row["messages"] == [{"role": "system", "content": WRITER}, {"role": "user", "content": user}]
    assert row["prompt"] == WRITER + "\n\n" + user
    assert {key: value for key, value in row.items() if key not in ("messages", "prompt", "prompt_id")} == {
        "template": "long-tail",
        "template_version": 1,
        "kind": "sentences",
        "output": "json",
        "language": "en",
        "targets": [BUDGETS],
        "target_labels": ["manage budgets"],
        "forbid_label": True,
        "n_sentences": 3,
        "title": None,
        "occupation_uri": None,
        "group_uri": None,
        "seed": 0,
    }
    assert len(row["prompt_id"]) == 16 and int(row["prompt_id"], 16) >= 0


def test_long_tail_prompt_omits_missing_context_and_adds_language(tiny):
    counts = {uri: 9 for uri in tiny.skills if uri != PYTHON}
    (row,) = build_prompts(
        tiny, only("long-tail", edge_threshold=1, n_sentences=2, forbid_label=False, language="fr"), counts
    )
    assert row["messages"][1]["content"] == (
        "Skill: Python\n"
        "\n"
        "Write 2 different sentences that could appear in the requirements section of real job ads, "
        "each one asking the candidate for this skill.\n"
        "- Each sentence stands on its own, reads like a real vacancy and is 8 to 40 words long.\n"
        "- Vary the wording, the work setting, the level of seniority and the sentence structure.\n"
        "- Write the sentences in French.\n"
        "\n"
        'Answer with a JSON object of the form {"sentences": ["...", "..."]} holding exactly 2 sentences, '
        "and nothing else."
    )
    assert (row["language"], row["forbid_label"]) == ("fr", False)


def test_long_tail_description_is_shortened_and_occupation_is_a_seeded_choice(tiny):
    counts = {uri: 9 for uri in tiny.skills if uri != CONTRACTS}
    chosen = set()
    for seed in range(12):
        (row,) = build_prompts(
            tiny, only("long-tail", edge_threshold=1, description_chars=20, seed=seed), counts
        )
        lines = row["messages"][1]["content"].split("\n")
        assert lines[1] == "Description: Agree on the ..."  # whitespace collapsed, cut at a word
        chosen.add(lines[2])
        (again,) = build_prompts(
            tiny, only("long-tail", edge_threshold=1, description_chars=20, seed=seed), counts
        )
        assert again == row
    assert chosen == {
        "An occupation that requires it: accountant",
        "An occupation that requires it: finance manager",
    }


# ---------------------------------------------------------------------------------------- multi-skill


def test_multi_skill_prompt_is_exact(tiny):
    (row,) = build_prompts(tiny, only("multi-skill", group_size=[3, 3], max_prompts=50, language="de"))
    assert row["messages"] == [
        {"role": "system", "content": WRITER},
        {
            "role": "user",
            "content": (
                'Skills from the ESCO skill group "planning":\n'
                "- manage budgets\n"
                "  Plan, monitor and report on the budget.\n"
                "- negotiate contracts\n"
                "  Agree on the terms of contracts.\n"
                "- prepare payroll\n"
                "  Calculate and pay salaries.\n"
                "\n"
                "Write one sentence that could appear in the requirements section of a real job ad and that "
                "asks the candidate for all of these skills together.\n"
                "- The sentence reads naturally, as a recruiter would write it, and is 10 to 45 words long.\n"
                "- It fits one plausible job in which the skills are used together.\n"
                "- Write the sentence in German.\n"
                "\n"
                "Answer with the sentence alone on one line: no numbering, no quotation marks, "
                "no explanation."
            ),
        },
    ]
    assert (row["targets"], row["target_labels"]) == (
        [BUDGETS, CONTRACTS, PAYROLL],
        ["manage budgets", "negotiate contracts", "prepare payroll"],
    )
    assert (row["group_uri"], row["n_sentences"], row["output"], row["forbid_label"]) == (
        S42,
        1,
        "lines",
        False,
    )


def test_multi_skill_draws_every_set_once_then_stops(tiny):
    rows = build_prompts(tiny, only("multi-skill", group_size=[2, 2], max_prompts=100, forbid_label=True))
    drawn = sorted((row["group_uri"], tuple(row["targets"])) for row in rows)
    expected = [(S42, pair) for pair in combinations(sorted([BUDGETS, CONTRACTS, PAYROLL]), 2)]
    assert drawn == sorted([*expected, (K041, (PYTHON, STATISTICS))])
    assert rows[0]["messages"][1]["content"].split("\n")[-3] == (
        "- Do not copy the skill names word for word: express each skill in your own words."
    )
    limited = build_prompts(tiny, only("multi-skill", group_size=[2, 3], max_prompts=3))
    assert len(limited) == 3 and len({tuple(row["targets"]) for row in limited}) == 3


# --------------------------------------------------------------------------------------- title-skills


def test_title_skills_prompt_from_an_occupation_is_exact(tiny):
    rows = build_prompts(tiny, only("title-skills", n_skills=4))
    assert sorted(row["occupation_uri"] for row in rows) == [ACCOUNTANT, FINANCE_MANAGER]
    assert len(build_prompts(tiny, only("title-skills", max_prompts=1))) == 1
    accountant = next(row for row in rows if row["occupation_uri"] == ACCOUNTANT)
    assert (accountant["title"], accountant["targets"], accountant["target_labels"]) == ("accountant", [], [])
    assert accountant["messages"] == [
        {
            "role": "system",
            "content": "You are an experienced recruiter and labour-market analyst. You know which skills "
            "and knowledge employers require for each job. You follow the answer format exactly.",
        },
        {
            "role": "user",
            "content": (
                "Job title: accountant\n"
                "Job description: Keeps accounts.\n"
                "\n"
                "List the 4 skills and areas of knowledge that employers most often require for this job.\n"
                "- Write each one as a short skill phrase of 1 to 6 words, such as "
                '"prepare financial reports" or "Python".\n'
                "- Be specific to this job; leave out generic personal qualities unless the job depends "
                "on them.\n"
                "\n"
                "Answer with one skill phrase per line: no numbering, no bullets, no explanation."
            ),
        },
    ]
    assert (accountant["kind"], accountant["output"], accountant["n_sentences"]) == (
        "title-skills",
        "lines",
        4,
    )


def test_title_skills_alternative_labels_and_real_titles(tiny):
    titles = set()
    for seed in range(12):
        rows = build_prompts(tiny, only("title-skills", title_label="any", seed=seed))
        titles |= {row["title"] for row in rows if row["occupation_uri"] == ACCOUNTANT}
    assert titles == {"accountant", "bookkeeper", "auditor"}

    real = ["  Data   Engineer ", "data engineer", "", "Nurse", "Data Engineer"]
    rows = build_prompts(tiny, only("title-skills", source="titles", language="fr"), titles=real)
    assert sorted(row["title"] for row in rows) == ["Data Engineer", "Nurse"]
    assert all(row["occupation_uri"] is None and row["targets"] == [] for row in rows)
    nurse = next(row for row in rows if row["title"] == "Nurse")["messages"][1]["content"].split("\n")
    assert nurse[:2] == ["Job title: Nurse", ""]  # no description line for a real title
    assert nurse[-3] == "- Write the skill phrases in French."

    assert build_prompts(tiny, only("title-skills", source="titles"), titles=[]) == []
    with pytest.raises(ValueError, match="source is 'titles' but no titles were given"):
        build_prompts(tiny, only("title-skills", source="titles"))
    with pytest.raises(
        ValueError, match="titles were given but prompts.title_skills.source is 'occupations'"
    ):
        build_prompts(tiny, only("title-skills"), titles=["Nurse"])


# ---------------------------------------------------------------------------------------- all together


def test_prompts_are_deterministic_per_seed_with_unique_ids(tiny):
    config = PromptsConfig.model_validate({"seed": 5, "multi_skill": {"max_prompts": 3}})
    rows = build_prompts(tiny, config, {BUDGETS: 9})
    assert build_prompts(tiny, config, {BUDGETS: 9}) == rows
    assert [row["template"] for row in rows] == ["long-tail"] * 7 + ["multi-skill"] * 3 + ["title-skills"] * 2
    assert len({row["prompt_id"] for row in rows}) == len(rows)
    assert {row["seed"] for row in rows} == {5}
    other = build_prompts(tiny, config.model_copy(update={"seed": 6}), {BUDGETS: 9})
    assert [row["targets"] for row in other] != [row["targets"] for row in rows]


def test_templates_and_config_validation():
    assert sorted(TEMPLATES) == ["long-tail", "multi-skill", "title-skills"]
    assert {t.id: (t.kind, t.output, t.forbid_label) for t in TEMPLATES.values()} == {
        "long-tail": ("sentences", "json", True),
        "multi-skill": ("multi", "lines", False),
        "title-skills": ("title-skills", "lines", False),
    }
    with pytest.raises(ValidationError, match="2 <= min <= max <= 5"):
        PromptsConfig.model_validate({"multi_skill": {"group_size": [1, 3]}})
    with pytest.raises(ValidationError, match="2 <= min <= max <= 5"):
        PromptsConfig.model_validate({"multi_skill": {"group_size": [3, 2]}})
    with pytest.raises(ValidationError, match="unknown language 'xx'"):
        PromptsConfig(language="xx")
    with pytest.raises(ValidationError, match="no template enabled"):
        PromptsConfig.model_validate(
            {key: {"enabled": False} for key in ("long_tail", "multi_skill", "title_skills")}
        )


# -------------------------------------------------------------------------------------- ESCO v1.1.1


def _csv(path, name: str) -> list[dict[str, str]]:
    with zipfile.ZipFile(path) as archive:
        return list(csv.DictReader(io.TextIOWrapper(archive.open(name), encoding="utf-8")))


@pytest.fixture(scope="module")
def esco(data_dir):
    """ESCO v1.1.1, its level-2 map, and each concept's ancestors and the level-2 URIs from the raw files."""
    folder = data_dir / "esco" / "v1.1.1"
    taxonomy = load_esco(str(folder))
    hierarchy = _csv(folder / "classification-en-csv.zip", "skillsHierarchy_en.csv")
    parents: dict[str, set[str]] = {}
    for row in _csv(folder / "relations-csv.zip", "broaderRelationsSkillPillar.csv"):
        parents.setdefault(row["conceptUri"], set()).add(row["broaderUri"])
    ancestors: dict[str, set[str]] = {}

    def above(uri: str) -> set[str]:
        if uri not in ancestors:
            ancestors[uri] = set()  # the pillar is acyclic; this only stops a revisit
            found = set()
            for parent in parents.get(uri, ()):
                found |= {parent, *above(parent)}
            ancestors[uri] = found
        return ancestors[uri]

    level2 = {row["Level 2 URI"] for row in hierarchy if row["Level 2 URI"]}
    return {
        "taxonomy": taxonomy,
        "groups": skill_group_level2(taxonomy),
        "hierarchy": hierarchy,
        "level2_above": lambda uri: above(uri) & level2,
        "level2": level2,
    }


def test_esco_every_skill_maps_to_one_of_its_level2_ancestors(esco):
    taxonomy, groups = esco["taxonomy"], esco["groups"]
    without = [uri for uri in taxonomy.skills if not esco["level2_above"](uri)]
    assert without == []  # ESCO v1.1.1: every skill reaches a level-2 group
    assert len(groups) == len(taxonomy.skills) == 13896
    assert all(groups[uri] in esco["level2_above"](uri) for uri in taxonomy.skills)
    sizes: dict[str, int] = {}
    for group in groups.values():
        sizes[group] = sizes.get(group, 0) + 1
    assert set(sizes) <= esco["level2"]
    assert (
        len(sizes),
        sum(size >= 2 for size in sizes.values()),
        sum(size >= 3 for size in sizes.values()),
    ) == (
        129,
        127,
        123,
    )


@pytest.mark.parametrize(
    ("label", "parent", "group"),
    [
        # knowledge: ISCED-F 0613 software and applications development → 061 ICTs
        (
            "Python (computer programming)",
            "http://data.europa.eu/esco/isced-f/0613",
            "http://data.europa.eu/esco/isced-f/061",
        ),
        # a skill under S4.8.1, and through broader skills under S4.2 and T4.4: S4.8 (fewest steps)
        (
            "manage musical staff",
            "http://data.europa.eu/esco/skill/aab9f44d-fe0e-46d8-a470-11ce82a64846",
            "http://data.europa.eu/esco/skill/7a00c77c-4a1c-4fd6-a83f-004bda65d81a",
        ),
    ],
)
def test_esco_known_skill_level2_group_matches_the_hierarchy_file(esco, label, parent, group):
    (skill,) = [s for s in esco["taxonomy"].skills.values() if s.preferred_label == label]
    assert parent in {r.broader_uri for r in esco["taxonomy"].skill_broader if r.concept_uri == skill.uri}
    (row,) = [row for row in esco["hierarchy"] if row["Level 3 URI"] == parent]
    assert row["Level 2 URI"] == group == esco["groups"][skill.uri]


def test_esco_multi_skill_prompts_share_their_level2_group(esco):
    rows = build_prompts(esco["taxonomy"], only("multi-skill", max_prompts=400, seed=11))
    assert len(rows) == 400
    assert len({tuple(row["targets"]) for row in rows}) == 400
    assert {len(row["targets"]) for row in rows} == {2, 3}
    assert len({row["group_uri"] for row in rows}) == 127  # round-robin: every group with >= 2 skills
    for row in rows:
        assert row["group_uri"] in esco["level2"]
        for uri in row["targets"]:
            assert row["group_uri"] in esco["level2_above"](uri), (uri, row["group_uri"])
    assert build_prompts(esco["taxonomy"], only("multi-skill", max_prompts=400, seed=11)) == rows


def test_esco_long_tail_selection(esco):
    taxonomy = esco["taxonomy"]
    uris = sorted(taxonomy.skills)
    counts = {uri: index % 4 for index, uri in enumerate(uris)}  # 0, 1, 2, 3, 0, ...
    rows = build_prompts(taxonomy, only("long-tail", edge_threshold=2, max_prompts=None), counts)
    assert sorted(row["targets"][0] for row in rows) == [uri for uri in uris if counts[uri] < 2]
    assert len(rows) == 6948
    limited = build_prompts(taxonomy, only("long-tail", edge_threshold=2, max_prompts=50), counts)
    assert [row["prompt_id"] for row in limited] == [row["prompt_id"] for row in rows[:50]]
