"""Project → profile edges from hand-built CSVs (exact edges) and from the real matching data."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
from pydantic import ValidationError

from workembed.config import ConfigError, load_config
from workembed.data.matching import (
    EDGE_COLUMNS,
    REJECT_COLUMNS,
    MatchingConfig,
    build_matching_edges,
    load_profiles,
    load_projects,
    mention_counts,
)

FOOTER = "<br /><b>Posted On</b>: May 13, 2024<br /><b>Skills</b>: Python, SQL<br />"
PROJECTS = [
    {
        "title": "Python data dashboard - Upwork",
        "link": "https://www.upwork.com/jobs/Python-dashboard_%7E01aaaaaaaaaaaaaaaa?source=rss",
        "category": "Data Visualization",
        "skills": str(["Python", "SQL", "Tableau", "R", "Pandas"]),
        "raw_description": "<p>Build a <b>Tableau</b> dashboard &amp; clean data.</p>" + FOOTER,
        "skill_python": "1",
    },
    {
        "title": "React front end - Upwork",
        "link": "https://www.upwork.com/jobs/React_~01bbbbbbbbbbbbbbbb?source=rss",
        "category": "Front-End Development",
        "skills": str(["C++", "React", "JavaScript", "CSS"]),
        "raw_description": "<p>A single page app.</p>" + FOOTER,
        "skill_python": "0",
    },
    {
        "title": "Bookkeeping help - Upwork",
        "link": "https://example.com/no-job-key",
        "category": "Accounting",
        "skills": str(["Excel", "Bookkeeping", "QuickBooks"]),
        "raw_description": "Monthly bookkeeping in QuickBooks.",
        "skill_python": "0",
    },
]
RESUMES = [
    ("Data Science", "Skills: Python, SQL, Tableau, pandas. Built dashboards."),
    ("Java Developer", "Java, React, Redux and JavaScript developer. Some CSS."),
    ("Python Developer", "C++ and Python engineer; R and SQL for statistics."),
    ("HR", "Recruiter with payroll and onboarding experience."),
    ("Sales", "Sales manager: CRM, cold calling, Excel reports."),
]
PAIRS = [
    ("Offer A: data scientist", "Résumé: Skills:   Python, SQL,\nTableau, pandas. Built dashboards.", 0.72),
    ("Offer A: data scientist", "Résumé: Unknown candidate, plumber.", 0.12),
    ("Offer B: Java developer", "Résumé: " + RESUMES[1][1], 0.42),
    ("Offer B: Java developer", "Résumé: Another candidate, nurse.", 0.15),
]
P1, P2 = "upwork-01aaaaaaaaaaaaaaaa", "upwork-01bbbbbbbbbbbbbbbb"
P3 = "upwork-" + hashlib.sha1(b"https://example.com/no-job-key").hexdigest()[:16]


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def write(directory, projects=PROJECTS, resumes=RESUMES, pairs=PAIRS):
    directory.mkdir(exist_ok=True)
    pd.DataFrame(projects).to_csv(directory / "upwork_projects.csv", index=False)
    pd.DataFrame(resumes, columns=["Category", "Resume"]).to_csv(directory / "resumes.csv", index=False)
    frame = pd.DataFrame(pairs, columns=["offer_text", "cv_text", "score"])
    frame.to_csv(directory / "job_cv_pairs_llm_scored.csv", index=False)
    return directory


@pytest.fixture
def tiny(tmp_path):
    return write(tmp_path / "matching")


def pairs_of(edges: pd.DataFrame, weight: float) -> set[tuple[str, str]]:
    chosen = edges[edges.weight == weight]
    return set(zip(chosen.left_id, chosen.right_id, strict=True))


def test_exact_edges(tiny):
    edges, rejects, summary = build_matching_edges(MatchingConfig(), tiny)
    assert list(edges.columns) == EDGE_COLUMNS
    assert set(edges.task) == {"project-profile"} and set(edges.origin) == {"vacancy"}
    offer_a, offer_b = f"offer-{_sha('Offer A: data scientist')}", f"offer-{_sha('Offer B: Java developer')}"
    plumber, nurse = _sha("Unknown candidate, plumber."), _sha("Another candidate, nurse.")
    assert pairs_of(edges, 1.0) == {
        (P1, "resume-0"),
        (P1, "resume-2"),
        (P2, "resume-1"),
        (offer_a, "resume-0"),
    }
    assert pairs_of(edges, -1.0) == {
        (P1, "resume-1"), (P1, "resume-3"), (P1, "resume-4"),  # Java, HR, Sales: no skill, other field
        (P2, "resume-0"), (P2, "resume-3"), (P2, "resume-4"),  # resume-2 shares C++, a Python dev may fit
        (P3, "resume-0"), (P3, "resume-1"), (P3, "resume-2"), (P3, "resume-3"),  # resume-4 mentions Excel
        (offer_a, f"cv-{plumber}"), (offer_b, f"cv-{nurse}"),  # 0.42 lies between the thresholds
    }  # fmt: skip
    assert set(edges.weight) == {1.0, -1.0} and edges.weight.dtype == "float64"
    first = edges[(edges.left_id == P1) & (edges.weight == 1.0)]
    assert list(first.right_id) == ["resume-0", "resume-2"]  # 4 shared skills before 3
    assert first.left_text.iloc[0] == "Python data dashboard\n\nBuild a Tableau dashboard & clean data."
    assert first.right_text.iloc[0] == RESUMES[0][1]
    llm = edges[edges.left_id == offer_a].set_index("right_id")
    assert llm.loc["resume-0", "right_text"] == RESUMES[0][1]  # the CV is the known profile, same text
    assert len(rejects) == 0 and list(rejects.columns) == REJECT_COLUMNS
    assert summary == {
        "projects": 3, "profiles": 5, "positives": 3, "negatives": 10, "llm_pairs": 4, "llm_positives": 1,
        "llm_negatives": 2, "projects_without_positive": 1, "rejected": 0, "rejected_by_reason": {},
    }  # fmt: skip


def test_limits_and_thresholds(tiny):
    config = MatchingConfig(max_positives_per_project=1, min_skill_fraction=0.7, llm_positive_min_score=0.8)
    edges, _, summary = build_matching_edges(config, tiny)
    assert pairs_of(edges, 1.0) == {(P1, "resume-0"), (P2, "resume-1")}  # 3/5 < 0.7, 0.72 < 0.8
    assert summary["llm_positives"] == 0 and summary["llm_negatives"] == 2


def test_ties_and_unmapped_category(tmp_path):
    resumes = [RESUMES[3], ("Data Science", "pandas, Tableau, SQL and Python.")] + RESUMES[1:3] + RESUMES[:1]
    projects = PROJECTS[:2] + [{**PROJECTS[2], "category": "Data Entry"}]
    config = MatchingConfig(max_positives_per_project=1)
    edges, _, _ = build_matching_edges(config, write(tmp_path / "m", projects, resumes))
    assert pairs_of(edges[edges.left_id == P1], 1.0) == {(P1, "resume-1")}  # 4 skills like resume-4: id order
    assert P3 not in set(edges.left_id)  # Data Entry: no compatibility known, so no negatives


def test_texts_are_truncated(tmp_path):
    long_resume = [("HR", "Recruiter " * 500)]
    edges, _, _ = build_matching_edges(MatchingConfig(), write(tmp_path / "m", resumes=RESUMES + long_resume))
    assert edges.right_text.str.len().max() == 2000 and edges.left_text.str.len().max() <= 2000


def test_word_boundaries():
    projects = pd.DataFrame({"skills": [["R"], ["C++"], ["C"], ["SQL"], ["C#", "Node.js"]]})
    texts = ["React and Redux", "C++ and Java", "I use R, not r", "microsoft sql server", "C#, Node.js"]
    counts = mention_counts(projects, pd.DataFrame({"text": texts}))
    assert counts.tolist() == [
        [0, 0, 1, 0, 0],  # "R" not inside "React"/"Redux"; short skills are case-sensitive
        [0, 1, 0, 0, 0],  # "C++" matches "C++"
        [0, 0, 0, 0, 0],  # "C" matches neither "C++" nor "C#"
        [0, 0, 0, 1, 0],  # case-insensitive, inside a longer phrase
        [0, 0, 0, 0, 2],
    ]


def test_deterministic_negatives(tiny):
    config = MatchingConfig(negatives_per_project=1, seed=7)
    first, _, _ = build_matching_edges(config, tiny)
    second, _, _ = build_matching_edges(config, tiny)
    pd.testing.assert_frame_equal(first, second)
    negatives = first[(first.weight == -1.0) & first.left_id.str.startswith("upwork-")]
    assert negatives.left_id.value_counts().to_dict() == {P1: 1, P2: 1, P3: 1}
    assert pairs_of(negatives, -1.0) <= pairs_of(build_matching_edges(MatchingConfig(), tiny)[0], -1.0)


def test_rejects_and_averaged_repeats(tmp_path):
    empty_project = {
        **PROJECTS[0],
        "title": "Nothing here - Upwork",
        "link": "x~01cccccccccc",
        "raw_description": FOOTER,
    }
    projects = PROJECTS + [empty_project, {**PROJECTS[1], "title": "Same job again - Upwork"}]
    resumes = RESUMES + [("Arts", "   "), ("Sales", RESUMES[4][1].replace(" ", "  "))]
    repeat = ("Offer A: data scientist", PAIRS[1][1], 0.9)
    pairs = PAIRS + [("Offer C", "", 0.9), ("Offer C", "Résumé: x", "high"), repeat]
    edges, rejects, summary = build_matching_edges(
        MatchingConfig(), write(tmp_path / "m", projects, resumes, pairs)
    )
    assert list(rejects.columns) == REJECT_COLUMNS and set(rejects.stage) == {"matching"}
    assert rejects.reason.tolist() == [
        "empty project description", "duplicate project", "empty resume", "duplicate resume", "empty cv_text",
        "invalid score",
    ]  # fmt: skip
    raw = [json.loads(text) for text in rejects.raw]
    assert raw[0]["title"] == "Nothing here - Upwork" and raw[0]["skill_python"] == "1"
    assert summary["rejected"] == 6 and summary["rejected_by_reason"]["empty resume"] == 1
    assert summary["projects"] == 3 and summary["profiles"] == 5 and summary["llm_pairs"] == 4
    plumber = f"cv-{_sha('Unknown candidate, plumber.')}"
    assert plumber not in set(edges.right_id)  # (0.12 + 0.9) / 2 = 0.51: between the thresholds


def test_loaders_return_frames_and_rejects(tiny):
    projects, rejected = load_projects(tiny / "upwork_projects.csv")
    assert list(projects.columns) == ["project_id", "title", "category", "skills", "text"] and rejected.empty
    assert projects.project_id.tolist() == [P1, P2, P3]
    assert projects.skills.iloc[0] == ["Python", "SQL", "Tableau", "R", "Pandas"]
    profiles, rejected = load_profiles(tiny / "resumes.csv")
    assert profiles.profile_id.tolist() == [f"resume-{i}" for i in range(5)] and rejected.empty


def test_config_validation():
    assert MatchingConfig().directory == "matching"
    with pytest.raises(ValidationError):
        MatchingConfig.model_validate({"min_shared_skills": 3, "unknown": 1})
    with pytest.raises(ValidationError):
        MatchingConfig(llm_positive_min_score=0.2, llm_negative_max_score=0.3)
    with pytest.raises(ValidationError):
        MatchingConfig(min_skill_fraction=1.5)
    with pytest.raises(ConfigError, match="negatives_per_projekt"):
        load_config(MatchingConfig, overrides=["negatives_per_projekt=3"])


def test_real_data(data_dir):
    directory = data_dir / "matching"
    if not (directory / "upwork_projects.csv").is_file():
        pytest.skip(f"no matching data in {directory}")
    config = MatchingConfig()
    edges, rejects, summary = build_matching_edges(config, directory)
    print(json.dumps(summary, indent=2))
    assert list(edges.columns) == EDGE_COLUMNS and len(edges) > 0
    written = (
        summary["positives"] + summary["negatives"] + summary["llm_positives"] + summary["llm_negatives"]
    )
    assert written == len(edges)
    assert set(edges.weight) <= {1.0, -1.0}
    assert (edges.weight == 1.0).sum() == summary["positives"] + summary["llm_positives"]
    projects = edges[edges.left_id.str.startswith("upwork-")]
    assert projects[projects.weight == 1.0].left_id.value_counts().max() <= config.max_positives_per_project
    assert projects[projects.weight == -1.0].left_id.value_counts().max() <= config.negatives_per_project
    assert not edges.duplicated(["left_id", "right_id"]).any()
    assert edges.left_text.str.len().max() <= 2000 and edges.right_text.str.len().max() <= 2000
    assert summary["rejected"] == len(rejects) and set(rejects.stage) == {"matching"}
    assert summary["projects_without_positive"] < summary["projects"]
