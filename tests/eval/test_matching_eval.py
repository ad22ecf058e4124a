"""Project → profile matching evaluation: exact values on a hand-built case, report files, the real data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workembed.data.matching import MatchingConfig
from workembed.eval.matching_eval import (
    MatchingEvalConfig,
    evaluate_matching,
    run_matching_eval,
    write_matching_report,
)
from workembed.eval.matching_metrics import matching_metrics
from workembed.eval.report import rounded
from workembed.retrieval.matching_dataset import Interaction, Item, matching_dataset, matching_folder

# Every profile text has four words, so BM25's length normalisation is the same for all of them: a profile
# holding a superset of another's query words scores higher, equal matches tie (corpus order first).
PROFILES = [
    Item("r1", "Data Science", frozenset({"python", "tableau"}), "python tableau dashboards analytics"),
    Item("r2", "HR", frozenset({"recruiting"}), "payroll recruiting onboarding interviews"),
    Item("r3", "Java Developer", frozenset({"java"}), "java spring backend services"),
    Item("r4", "Sales", frozenset({"sales"}), "cold calling sales pipeline"),
    Item("r5", "Data Science", frozenset({"python", "pandas"}), "python pandas notebooks statistics"),
    Item("r6", "Mechanical Engineer", frozenset({"welding"}), "welding lathe machining drawings"),
]
PROJECTS = [
    Item("p1", "Data Visualization", frozenset({"python", "tableau"}), "python tableau dashboards"),
    Item(
        "p2",
        "Recruiting & Talent Sourcing",
        frozenset({"recruiting", "interviewing"}),
        "recruiting interviews",
    ),
    Item("p3", "Back-End Development", frozenset({"java", "python"}), "java backend python"),
    Item("p4", "Data Entry", frozenset(), "typing spreadsheets"),  # category outside COMPATIBLE, no skills
]
INTERACTIONS = [
    Interaction("p1", "r1", 1),
    Interaction("p1", "r5", 1),
    Interaction("p1", "r2", -1),
    Interaction("p1", "r6", -1),
    Interaction("p2", "r2", 1),
    Interaction("p2", "r3", -1),
    Interaction("p3", "r5", 1),
    Interaction("p3", "r4", -1),
    Interaction("p4", "r4", 1),
]
KS = [1, 3, 6]  # max(KS) is the whole profile set: every ranking is a full sort, ties in corpus order
BASELINES_ONLY = MatchingEvalConfig(model=None, baselines=True, ks=KS, cache_dir=None)

# BM25 rankings: p1 r1 (3 words) r5 (python) then the zeros r2 r3 r4 r6; p2 r2 then r1 r3 r4 r5 r6;
# p3 r3 (java, backend) then r1 and r5 tied on python, then r2 r4 r6; p4 matches nothing: r1 ... r6.
# Compatible categories: p1 (data) r1 r5; p2 (people) r2; p3 (dev) r3; p4 undefined.
BM25 = {
    "valid_recall_single@1": (1 + 1 + 0 + 0) / 4,
    "valid_recall_all@1": (1 / 2 + 1 + 0 + 0) / 4,
    "category_overlap@1": (1 + 1 + 1) / 3,
    "skill_overlap@1": (1 + 1 / 2 + 1 / 2) / 3,  # r1 has 2/2 of p1's skills, r2 1/2 of p2's, r3 1/2 of p3's
    "positives@1": (1 + 1 + 0 + 0) / 4,
    "negatives@1": 0.0,
    "valid_recall_single@3": (1 + 1 + 1 + 0) / 4,
    "valid_recall_all@3": (1 + 1 + 1 + 0) / 4,
    "category_overlap@3": (2 / 3 + 1 / 3 + 1 / 3) / 3,
    "skill_overlap@3": ((1 + 1 / 2 + 0) / 3 + (1 / 2) / 3 + (1 / 2 + 1 / 2 + 1 / 2) / 3) / 3,
    "positives@3": (2 + 1 + 1 + 0) / 4,
    "negatives@3": (1 + 1 + 0 + 0) / 4,  # r2 in p1's top 3, r3 in p2's
}
# At K = 6 every system retrieves all profiles: the values do not depend on the order.
ALL_RETRIEVED = {
    "valid_recall_single@6": 1.0,
    "valid_recall_all@6": 1.0,
    "category_overlap@6": (2 / 6 + 1 / 6 + 1 / 6) / 3,
    "skill_overlap@6": ((1 + 1 / 2) / 6 + (1 / 2) / 6 + (3 / 2) / 6) / 3,
    "positives@6": (2 + 1 + 1 + 1) / 4,
    "negatives@6": (2 + 1 + 1 + 0) / 4,
}
COUNTS = {"n_projects": 4, "n_with_positive": 4, "n_with_category": 3, "n_with_skills": 3}


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert):
    from workembed.models import Encoder

    return Encoder(tiny_bert, max_length=32)


def test_exact_values_on_a_hand_built_case(tiny_encoder):
    config = MatchingEvalConfig(baselines=True, ks=KS, block_size=3, cache_dir=None)
    report = evaluate_matching(PROJECTS, PROFILES, INTERACTIONS, config, tiny_encoder)  # not minilm
    assert report["model"] == str(tiny_encoder.name) and report["ks"] == KS
    assert report["dataset"] == {
        "projects": 4,
        "profiles": 6,
        "positives": 5,
        "negatives": 4,
        "projects_with_positive": 4,
    }
    systems = report["results"]
    assert list(systems) == [tiny_encoder.name, "bm25", "tfidf", "random"]
    bm25 = {name: value for name, value in systems["bm25"].items() if name != "seconds"}
    assert bm25 == pytest.approx({**BM25, **ALL_RETRIEVED, **COUNTS}, abs=1e-12)
    for values in systems.values():
        assert {name: values[name] for name in ALL_RETRIEVED} == pytest.approx(ALL_RETRIEVED, abs=1e-12)
        assert {name: values[name] for name in COUNTS} == COUNTS
    # the encoder's blocked top-k gives the metrics of a full cosine matrix sorted per project
    vectors = [tiny_encoder.embed([item.text for item in items]) for items in (PROJECTS, PROFILES)]
    queries, targets = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in vectors)
    order = np.argsort(-(queries @ targets.T), axis=1, kind="stable")
    full = {p.id: [PROFILES[j].id for j in row] for p, row in zip(PROJECTS, order, strict=True)}
    expected = matching_metrics(PROJECTS, PROFILES, INTERACTIONS, full, ks=KS)
    encoder = {name: value for name, value in systems[tiny_encoder.name].items() if name != "seconds"}
    assert encoder == pytest.approx(expected, abs=1e-12)


def test_report_files_hold_the_returned_values(tmp_path):
    report = evaluate_matching(PROJECTS, PROFILES, INTERACTIONS, BASELINES_ONLY)
    json_path, md_path = write_matching_report(report, tmp_path / "matching.json")
    assert json.loads(json_path.read_text()) == rounded(report)
    assert md_path == tmp_path / "matching.md"
    lines = md_path.read_text().splitlines()
    assert lines[0] == (
        "Project → profile matching: 4 projects (4 with a positive), 6 profiles, 5 positive and 4 negative "
        "pairs; baselines only."
    )
    assert lines[2].startswith("| system | valid_recall_single@1 | valid_recall_all@1 | category_overlap@1 |")
    # @1: 1/2, 3/8, 1, 2/3, 1/2, 0; @3: 3/4, 3/4, 4/9, 7/18, 1, 1/2; @6: 1, 1, 2/9, 7/36, 5/4, 1
    assert lines[4] == (
        "| bm25 | 0.5000 | 0.3750 | 1.0000 | 0.6667 | 0.5000 | 0.0000 "
        "| 0.7500 | 0.7500 | 0.4444 | 0.3889 | 1.0000 | 0.5000 "
        "| 1.0000 | 1.0000 | 0.2222 | 0.1944 | 1.2500 | 1.0000 |"
    )
    assert [line.split(" | ")[0] for line in lines[4:]] == ["| bm25", "| tfidf", "| random"]


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no projects to evaluate: the project set is empty"):
        evaluate_matching([], PROFILES, [], BASELINES_ONLY)
    with pytest.raises(ValueError, match="no profiles to evaluate: the profile set is empty"):
        evaluate_matching(PROJECTS, [], [], BASELINES_ONLY)
    with pytest.raises(ValueError, match="profile ids must be unique; repeated: r1"):
        evaluate_matching(PROJECTS, [*PROFILES, PROFILES[0]], [], BASELINES_ONLY)
    with pytest.raises(ValueError, match=r"interaction \(p1, r9\) names a project or profile"):
        evaluate_matching(PROJECTS, PROFILES, [Interaction("p1", "r9", 1)], BASELINES_ONLY)
    with pytest.raises(FileNotFoundError, match="no upwork_projects.csv and resumes.csv in"):
        matching_folder(tmp_path)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": None}, "nothing to evaluate"),
        ({"ks": [10, 10]}, "cut-offs must be distinct"),
        ({"ks": [0]}, "greater than 0"),
        ({"out": "report.md"}, "must not end in .md"),
    ],
)
def test_config_validation(settings, message):
    with pytest.raises(ValueError, match=message):
        MatchingEvalConfig(**settings)


def test_real_data(data_dir, tiny_bert, tmp_path):
    if not (data_dir / "matching" / "upwork_projects.csv").is_file():
        pytest.skip(f"no matching data in {data_dir / 'matching'}")
    assert matching_folder(data_dir) == matching_folder(data_dir / "matching") == data_dir / "matching"
    out = tmp_path / "matching.json"
    rules = MatchingConfig(negatives_per_project=2)  # the config's label rules reach the derivation
    config = MatchingEvalConfig(
        model=str(tiny_bert),
        data=str(data_dir),
        matching=rules,
        baselines=True,
        max_length=32,
        cache_dir=None,
        out=str(out),
    )
    result = run_matching_eval(config)
    assert result["data"] == str(data_dir / "matching")
    assert (result["out"], result["markdown"]) == (str(out), str(out.with_suffix(".md")))
    written = json.loads(out.read_text())
    assert written == {key: value for key, value in result.items() if key not in ("out", "markdown")}
    projects, profiles, interactions = matching_dataset(data_dir, rules)
    labels = [edge.label for edge in interactions]
    assert result["dataset"] == {
        "projects": len(projects),
        "profiles": len(profiles),
        "positives": labels.count(1),
        "negatives": labels.count(-1),
        "projects_with_positive": len({edge.project_id for edge in interactions if edge.label == 1}),
    }
    assert labels.count(-1) <= 2 * len(projects)  # 5410 negatives with the default 5 per project
    systems = result["results"]
    assert list(systems) == [str(tiny_bert), "bm25", "tfidf", "random"]
    assert all(values["n_projects"] == len(projects) for values in systems.values())
    # the positives are resumes that mention the project's skills, words BM25 matches: it finds nearly all in
    # its top 100 of 166 profiles (0.98), a random top 100 about 100 / 166 of them (0.65)
    print(json.dumps({name: values["valid_recall_all@100"] for name, values in systems.items()}))
    assert systems["bm25"]["valid_recall_all@100"] > systems["random"]["valid_recall_all@100"]
