"""Malt-style project → profile retrieval metrics: hand-computed values, then the real matching data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from workembed.data.matching import MatchingConfig, build_matching_edges, mention_counts
from workembed.eval.matching_metrics import (
    category_compatible,
    category_overlap,
    matching_metrics,
    random_rankings,
    retrieved_count,
    skill_overlap,
    valid_recall_all,
    valid_recall_single,
)
from workembed.retrieval.matching_dataset import Interaction, Item, matching_dataset, skill_key

PROFILES = [
    Item("r1", "Data Science", frozenset({"python", "sql"})),
    Item("r2", "HR", frozenset({"excel"})),
    Item("r3", "Java Developer", frozenset({"java", "sql"})),
    Item("r4", "Sales", frozenset()),
    Item("r5", "Data Science", frozenset({"python", "tableau", "sql"})),
]
PROJECTS = [
    Item("p1", "Data Visualization", frozenset({"python", "sql", "tableau"})),  # data: Data Science fits
    Item("p2", "Data Entry", frozenset({"excel", "word"})),  # not in COMPATIBLE: category undefined
]
INTERACTIONS = [
    Interaction("p1", "r5", 1),
    Interaction("p1", "r1", 1),
    Interaction("p1", "r2", -1),
    Interaction("p1", "r4", -1),
    Interaction("p2", "r2", 1),
    Interaction("p2", "r3", -1),
]
RANKINGS = {"p1": ["r3", "r2", "r5", "r1", "r4"], "p2": ["r2", "r4", "r1", "r3", "r5"]}
CATEGORIES = {item.id: item.category for item in PROFILES}
SKILLS = {item.id: item.skills for item in PROFILES}


def test_per_project_values():
    ranking, positives = RANKINGS["p1"], {"r5", "r1"}
    assert [valid_recall_single(ranking, positives, k) for k in (2, 3, 4)] == [0.0, 1.0, 1.0]
    assert [valid_recall_all(ranking, positives, k) for k in (2, 3, 4)] == [0.0, 0.5, 1.0]
    # r3 Java Developer no, r2 HR no, r5 Data Science yes, r1 Data Science yes
    overlaps = [
        category_overlap(ranking, "Data Visualization", CATEGORIES, category_compatible, k) for k in (2, 3, 4)
    ]
    assert overlaps == [0.0, pytest.approx(1 / 3), 0.5]
    assert category_overlap(ranking, "Data Entry", CATEGORIES, category_compatible, 4) is None
    # shared skills with {python, sql, tableau}: r3 1, r2 0, r5 3, r1 2
    skills = PROJECTS[0].skills
    assert [skill_overlap(ranking, skills, SKILLS, k) for k in (2, 4)] == [pytest.approx(1 / 6), 0.5]
    assert skill_overlap(ranking, frozenset(), SKILLS, 4) is None
    assert retrieved_count(ranking, positives, 4) == 2 and retrieved_count(ranking, {"r2", "r4"}, 4) == 1
    with pytest.raises(ValueError, match="no positive"):
        valid_recall_all(ranking, set(), 4)


def test_averages_over_two_projects():
    values = matching_metrics(PROJECTS, PROFILES, INTERACTIONS, RANKINGS, ks=(2, 4))
    expected = {
        # p1: 0 and 0 at K=2, 1 and 1 at K=4; p2 (positive r2 first): 1 and 1
        "valid_recall_single@2": 1 / 2,
        "valid_recall_all@2": 1 / 2,
        "valid_recall_single@4": 1.0,
        "valid_recall_all@4": 1.0,
        # p1 only (p2's category is undefined)
        "category_overlap@2": 0.0,
        "category_overlap@4": 1 / 2,
        # p1: (1 + 0) / 6 and (1 + 0 + 3 + 2) / 12; p2 ({excel, word}): 1 / 4 and 1 / 8
        "skill_overlap@2": (1 / 6 + 1 / 4) / 2,
        "skill_overlap@4": (1 / 2 + 1 / 8) / 2,
        "positives@2": (0 + 1) / 2,
        "negatives@2": (1 + 0) / 2,
        "positives@4": (2 + 1) / 2,
        "negatives@4": (1 + 1) / 2,
        "n_projects": 2,
        "n_with_positive": 2,
        "n_with_category": 1,
        "n_with_skills": 2,
    }
    assert values == pytest.approx(expected)


def test_default_ks_and_undefined_means():
    values = matching_metrics(PROJECTS, PROFILES, INTERACTIONS[2:4], {"p1": RANKINGS["p1"]})
    assert math.isnan(values["valid_recall_single@10"]) and values["n_with_positive"] == 0
    assert values["negatives@100"] == 2.0
    assert values["skill_overlap@10"] == pytest.approx(6 / 15)  # all 5 ranked: (1 + 0 + 3 + 2 + 0) / 15
    with pytest.raises(ValueError, match="not in projects"):
        matching_metrics(PROJECTS, PROFILES, INTERACTIONS, {"p9": ["r1"]})
    with pytest.raises(ValueError, match="not in profiles"):
        matching_metrics(PROJECTS, PROFILES, INTERACTIONS, {"p1": ["r1", "r9"]})
    with pytest.raises(ValueError, match="label"):
        matching_metrics(PROJECTS, PROFILES, [Interaction("p1", "r1", 0)], RANKINGS)


def test_random_rankings_are_reproducible():
    ids = [item.id for item in PROFILES]
    first = random_rankings(["p1", "p2"], ids, k=3, seed=7)
    assert first == random_rankings(["p1", "p2"], ids, k=3, seed=7)
    assert all(len(r) == 3 and len(set(r)) == 3 and set(r) <= set(ids) for r in first.values())


@pytest.fixture(scope="module")
def real(data_dir):
    directory = data_dir / "matching"
    if not (directory / "upwork_projects.csv").is_file():
        pytest.skip(f"no matching data in {directory}")
    return matching_dataset(data_dir)


def test_real_data(real, data_dir):
    projects, profiles, interactions = real
    labels = [edge.label for edge in interactions]
    counts = {
        "projects": len(projects),
        "profiles": len(profiles),
        "positives": labels.count(1),
        "negatives": labels.count(-1),
        "projects_with_positive": len({e.project_id for e in interactions if e.label > 0}),
    }
    print(json.dumps(counts))
    assert counts == {
        "projects": 1091,
        "profiles": 166,
        "positives": 1191,
        "negatives": 5410,
        "projects_with_positive": 395,
    }
    # the interactions are exactly build_matching_edges' project → resume edges
    edges, _, _ = build_matching_edges(MatchingConfig(), data_dir / "matching")
    direct = edges[edges.left_id.str.startswith("upwork-") & edges.right_id.str.startswith("resume-")]
    assert sorted((e.project_id, e.profile_id, e.label) for e in interactions) == sorted(
        zip(direct.left_id, direct.right_id, direct.weight.astype(int), strict=True)
    )
    # the skill sets reproduce the mention counts the labels were derived from
    frame = pd.DataFrame({"skills": [sorted(p.skills) for p in projects]})
    texts = pd.DataFrame({"text": [p.text for p in profiles]})
    shared = np.array([[len(p.skills & r.skills) for r in profiles] for p in projects])
    np.testing.assert_array_equal(shared, mention_counts(frame, texts))
    assert skill_key("R") == "R" and skill_key("Power BI") == "power bi"


def test_random_ranking_on_real_data(real):
    projects, profiles, interactions = real
    project_ids, profile_ids = [p.id for p in projects], [p.id for p in profiles]
    first, again = (
        matching_metrics(projects, profiles, interactions, random_rankings(project_ids, profile_ids, seed=3))
        for _ in range(2)
    )
    print(json.dumps(first))
    assert first == again
    # 100 of 166 profiles drawn at random: about 60 % of each project's positives and negatives retrieved
    assert 0.5 < first["valid_recall_all@100"] < 0.7 and first["valid_recall_single@100"] > 0.7
    assert 0.0 < first["category_overlap@10"] < 1.0 and 0.0 < first["skill_overlap@100"] < 0.5
    assert 0.0 < first["positives@100"] < first["negatives@100"] < 5
    assert first["n_projects"] == 1091 and first["n_with_positive"] == 395
