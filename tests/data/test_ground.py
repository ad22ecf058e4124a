"""Grounding to ESCO: exact lexical matches, dense matches of clear sentences and titles, graph counts."""

from __future__ import annotations

import pytest

from workembed.data.config import GraphConfig, GroundConfig
from workembed.data.graph import esco_edges
from workembed.data.ground import GROUNDED, SKIPPED_LANGUAGE, Grounder, occupation_space, skill_space
from workembed.data.lexical import LabelMatcher
from workembed.data.records import to_table
from workembed.taxonomy import BUILTIN, load_esco

SKILL = "http://data.europa.eu/esco/skill/"
OCCUPATION = "http://data.europa.eu/esco/occupation/"
POSTGRESQL = SKILL + "a8d07b5a-c1a1-42c6-9d53-db9c7a2ca996"
JAVA = SKILL + "19a8293b-8e95-4de3-983f-77484079c389"
AUTOMATED_TESTS = "develop automated software tests"
DESIGN_UI = "design user interface"
SOFTWARE_DEVELOPER = OCCUPATION + "f2b15a0e-e65a-438a-affb-29b9d50b77d1"
DATABASE_ADMINISTRATOR = OCCUPATION + "8c57af09-719c-42b3-be40-6ed4946236cc"


def spans(matcher: LabelMatcher, text: str) -> list[tuple[str, str, str]]:
    return [(m.uri, m.label, text[m.start : m.end]) for m in matcher.find(text)]


def test_lexical_matches_are_exact_word_bounded_and_longest_first():
    matcher = LabelMatcher(
        [
            ("machine learning", "ml"),
            ("learning", "learn"),
            ("R", "r"),
            ("C++", "cpp"),
            ("SQL", "sql"),
            ("SQL Server", "mssql"),
            ("Java", "java"),
            ("java", "java"),
        ],
        min_label_chars=3,
    )
    text = "Machine Learning in R and C++, not React or r; SQL server and JAVA."
    assert spans(matcher, text) == [
        ("ml", "machine learning", "Machine Learning"),  # case-insensitive; "learning" inside is dropped
        ("r", "R", "R"),  # short labels match as written: "r" later and the "R" of "React" do not
        ("cpp", "C++", "C++"),
        ("mssql", "SQL Server", "SQL server"),  # longest wins over "SQL"
        ("java", "Java", "JAVA"),  # one label per concept, whatever its case in the export
    ]
    assert matcher.find("learnings and SQLite") == []  # no match inside a word


def test_lexical_matches_every_concept_of_a_shared_label():
    matcher = LabelMatcher([("SQL", "a"), ("SQL", "b"), ("Python", "c")])
    assert spans(matcher, "Python, SQL") == [
        ("c", "Python", "Python"),
        ("a", "SQL", "SQL"),
        ("b", "SQL", "SQL"),
    ]


@pytest.fixture(scope="module")
def builtin():
    return load_esco(BUILTIN)


@pytest.fixture(scope="module")
def spaces(builtin, minilm):
    skills, occupations = skill_space(builtin), occupation_space(builtin)
    skills.vectors, occupations.vectors = minilm.embed(skills.labels), minilm.embed(occupations.labels)
    return skills, occupations


def dense_grounder(spaces, **settings) -> Grounder:
    config = GroundConfig(lexical=False, skill_top_k=3, skill_threshold=0.55, title_threshold=0.6, **settings)
    return Grounder(config, [], *spaces)


@pytest.fixture(scope="module")
def grounder(spaces):
    return dense_grounder(spaces)


def ad(ad_id: str, title: str, sentences: list[str], language: str = "en") -> dict:
    return {
        "ad_id": ad_id,
        "title": title,
        "description": " ".join(sentences),
        "language": language,
        "sentences": sentences,
    }


def test_dense_grounding_finds_the_skill_of_clear_sentences(grounder, builtin):
    label = {uri: skill.preferred_label for uri, skill in builtin.skills.items()}
    batch = to_table(
        [
            ad(
                "a",
                "Senior Software Developer",
                [
                    "You will administer PostgreSQL databases.",
                    "Experience developing applications in Java is required.",
                    "You will write automated tests for our software.",
                    "Design user interfaces for mobile apps.",
                ],
            ),
            ad("b", "Database administrator (m/f/d)", ["Friday drinks with the whole team."]),
        ]
    )
    rows = {row["ad_id"]: row for row in grounder(batch).to_pylist()}
    first = rows["a"]
    assert first["grounding"] == GROUNDED
    best = [matches[0] for matches in first["sentence_skills"]]
    assert [m["uri"] for m in best[:2]] == [POSTGRESQL, JAVA]
    assert [label[m["uri"]] for m in best[2:]] == [AUTOMATED_TESTS, DESIGN_UI]
    for matches in first["sentence_skills"]:
        scores = [m["score"] for m in matches]
        assert scores == sorted(scores, reverse=True) and min(scores) >= 0.55 and len(scores) <= 3
        assert {m["method"] for m in matches} == {"dense"}
    assert first["occupation_uri"] == SOFTWARE_DEVELOPER
    assert rows["b"]["occupation_uri"] == DATABASE_ADMINISTRATOR
    assert rows["b"]["sentence_skills"] == [[]]  # nothing above the threshold


def test_languages_without_encoder_support_pass_through(grounder):
    rows = grounder(to_table([ad("de", "Softwareentwickler", ["Sie entwickeln Software in Java."], "de")]))
    row = rows.to_pylist()[0]
    assert row["grounding"] == SKIPPED_LANGUAGE
    assert row["sentence_skills"] is None and row["occupation_uri"] is None


def test_esco_graph_counts_equal_the_taxonomy(data_dir):
    taxonomy = load_esco(str(data_dir / "esco" / "v1.1.1"))
    stats = taxonomy.stats()
    counts: dict[tuple[str, float], int] = {}
    for edge in esco_edges(taxonomy, GraphConfig(essential_weight=1.0, optional_weight=0.5)):
        key = (edge["task"], edge["weight"])
        counts[key] = counts.get(key, 0) + 1
    # 67 essential/optional relations (55 + 12) name an occupation that v1.1.1 no longer lists: no edge
    assert stats["relations_dangling"] == 67
    assert counts == {
        ("skill-job", 1.0): 64_946 - 55,
        ("skill-job", 0.5): 58_909 - 12,
        ("skill-alt", 1.0): stats["skill_alt_labels"],
        ("job-alt", 1.0): stats["occupation_alt_labels"],
    }
    assert stats["skill_alt_labels"] == 97_483


def test_titles_only_dense_grounding(spaces):
    titles_only = dense_grounder(spaces, dense_sentences=False)
    batch = to_table([ad("a", "Senior Software Developer", ["You will administer PostgreSQL databases."])])
    row = titles_only(batch).to_pylist()[0]
    assert row["occupation_uri"] == SOFTWARE_DEVELOPER
    assert row["sentence_skills"] == [[]]  # no lexical matcher here and no sentence embeddings
