"""Benchmark converters: exact output on tiny hand-written files, exact counts on the real dev sets."""

from __future__ import annotations

import pandas as pd
import pytest

from workembed.eval.converters import (
    convert_all,
    convert_jobbert,
    convert_melo,
    convert_skill_extraction,
    convert_skillskape,
)
from workembed.retrieval.benchmarks import (
    BenchmarkFormatError,
    jobbert_dataset,
    melo_dataset,
    read_label_space,
    skill_extraction_dataset,
    skillskape_dataset,
)
from workembed.retrieval.ranking_dataset import read_dataset
from workembed.taxonomy import Occupation, Skill, Taxonomy, load_esco

SKILL = "http://data.europa.eu/esco/skill/"
OCC = "http://data.europa.eu/esco/occupation/"


def tiny_taxonomy() -> Taxonomy:
    skills = [
        Skill(SKILL + "s1", "use Python", (), "", "", ""),
        Skill(SKILL + "s2", "Java", (), "", "", ""),
        Skill(SKILL + "s3", "teamwork ", (), "", "", ""),
    ]
    occupations = [
        Occupation(OCC + "o1", "software developer", (), "", "", ""),
        Occupation(OCC + "o2", "team lead", (), "", "", ""),
    ]
    return Taxonomy("tiny/v9.9", {s.uri: s for s in skills}, {o.uri: o for o in occupations}, [])


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- skill extraction

LABELS = "use Python\nteamwork\n manage staff\nJava (computer programming)"
ANNOTATIONS = """sentence,span,sub_span,label
"We need Python, and Java.",Python,,use Python
"We need Python, and Java.",Java,,Java (computer programming)
"We need Python, and Java.",Python,,use Python
Be smart,smart,,LABEL NOT PRESENT
Work with others,others,,UNDERSPECIFIED
Work with others,team,,TEAMWORK
Lead people,people,,manage staff
Write Rust,Rust,,Rust (computer programming)
"""


def test_label_space_keeps_lines_verbatim(tmp_path):
    path = _write(tmp_path / "labels.txt", "a\n\n b\xa0\nc\n")
    assert read_label_space(path) == {"L00001": "a", "L00003": " b\xa0", "L00004": "c"}


def test_skill_extraction_exact(tmp_path):
    _write(tmp_path / "skills_en_label.txt", LABELS)
    source = _write(tmp_path / "house_validation_annotations.csv", ANNOTATIONS)
    data = skill_extraction_dataset(source)
    assert data.name == "skill-extraction-house"
    assert data.corpus == {
        "L00001": "use Python",
        "L00002": "teamwork",
        "L00003": " manage staff",
        "L00004": "Java (computer programming)",
    }
    assert data.queries == {
        "S00001": "We need Python, and Java.",
        "S00003": "Work with others",
        "S00004": "Lead people",
    }
    assert data.qrels == {
        "S00001": {"L00001": 1, "L00004": 1},
        "S00003": {"L00002": 1},
        "S00004": {"L00003": 1},
    }
    assert data.meta["dropped"] == {"queries_without_label": 1, "queries_with_only_unknown_labels": 1}
    assert data.meta["labels"] == {
        "labels_matched_exactly": 3,
        "labels_matched_loosely": 2,
        "labels_unknown": 1,
    }
    assert data.meta["unknown_labels"] == {"Rust (computer programming)": 1}
    assert data.meta["spans"] == {"LABEL NOT PRESENT": 1, "UNDERSPECIFIED": 1, "labelled": 6}

    summary = convert_skill_extraction(source, tmp_path / "out")
    written = read_dataset(tmp_path / "out")
    assert (written.queries, written.corpus, written.qrels) == (data.queries, data.corpus, data.qrels)
    assert written.meta["language"] == "en"
    assert summary["queries"] == 3 and summary["dropped"] == data.meta["dropped"]


def test_missing_column_is_reported(tmp_path):
    _write(tmp_path / "skills_en_label.txt", LABELS)
    source = _write(tmp_path / "x_validation_annotations.csv", "sentence,span\na,b\n")
    with pytest.raises(BenchmarkFormatError, match="label"):
        skill_extraction_dataset(source)


# ----------------------------------------------------------------------------------------- SkillSkape

SKILLSKAPE = """,sentence,skills
0,Code in Python daily.,"['use Python', 'UNK']"
1,Nothing here.,['UNK']
2,Team spirit and java.,"['teamwork', 'java']"
3,Code in Python daily.,['teamwork']
4,Knows COBOL.,['COBOL']
"""


def test_skillskape_exact(tmp_path):
    source = _write(tmp_path / "dev.csv", SKILLSKAPE)
    data = skillskape_dataset(source, tiny_taxonomy())
    assert data.corpus == {"s1": "use Python", "s2": "Java", "s3": "teamwork"}
    assert data.queries == {"S00001": "Code in Python daily.", "S00003": "Team spirit and java."}
    assert data.qrels == {"S00001": {"s1": 1, "s3": 1}, "S00003": {"s3": 1, "s2": 1}}
    assert data.meta["dropped"] == {"queries_without_label": 1, "queries_with_only_unknown_labels": 1}
    assert data.meta["unknown_labels"] == {"COBOL": 1}
    # "use Python" matches exactly; "teamwork" (twice; ESCO's label ends in a space) and "java" loosely
    assert data.meta["labels"] == {
        "labels_matched_exactly": 1,
        "labels_matched_loosely": 3,
        "labels_unknown": 1,
    }
    assert data.meta["duplicate_sentences_merged"] == 1
    assert data.meta["esco"] == {"source": "tiny/v9.9", "version": "v9.9"}

    summary = convert_skillskape(source, tmp_path / "out", tiny_taxonomy())
    assert read_dataset(tmp_path / "out").qrels == data.qrels
    assert summary["qrels"] == 4


def test_skillskape_rejects_bad_list(tmp_path):
    source = _write(tmp_path / "dev.csv", ",sentence,skills\n0,a,not a list\n")
    with pytest.raises(BenchmarkFormatError, match="row 0"):
        skillskape_dataset(source, tiny_taxonomy())


# ------------------------------------------------------------------------------------- JobBERT titles

JOBBERT = f""",vacancyTitle,conceptUri
0,Python Developer ,{OCC}o1
1,Python  Developer,{OCC}o1
2,Team Lead,{OCC}o2
3,Team Lead,{OCC}o1
4,Old Job,{OCC}gone
5,Python Developer,{OCC}gone
"""


def test_jobbert_exact(tmp_path):
    source = _write(tmp_path / "titles.csv", JOBBERT)
    data = jobbert_dataset(source, tiny_taxonomy())
    assert data.queries == {"T00001": "Python Developer", "T00002": "Team Lead"}
    assert data.qrels == {"T00001": {"o1": 1}, "T00002": {"o2": 1, "o1": 1}}
    assert data.corpus == {"o1": "software developer", "o2": "team lead"}
    assert data.meta["dropped"] == {
        "rows_concept_not_in_taxonomy": 2,
        "titles_without_concept_in_taxonomy": 1,
    }
    assert data.meta["merged"] == {
        "rows_same_title": 3,
        "rows_same_title_and_concept": 1,
        "titles_with_several_concepts": 1,
    }
    summary = convert_jobbert(source, tmp_path / "out", tiny_taxonomy())
    written = read_dataset(tmp_path / "out")
    assert written.meta["esco"]["version"] == "v9.9"
    assert summary["queries"] == 2 and written.qrels == data.qrels


# ----------------------------------------------------------------------------------------------- MELO


def test_melo_exact(tmp_path):
    folder = tmp_path / "deu_q_de_c_en"
    _write(folder / "queries.tsv", "Q1\tKoch\nQ2\tBäcker\nQ3\tohne Antwort\n")
    _write(folder / "corpus_elements.tsv", "C1_000\tcook\nC2_000\tbaker\nC2_001\tbread maker\n")
    _write(folder / "annotations.tsv", "Q1\t0\tC1_000\t1\nQ2\t0\tC2_000\t1\nQ2\t0\tC2_001\t1\nQ2\t0\tC9\t1\n")
    data = melo_dataset(folder)
    assert data.name == "melo-deu_q_de_c_en"
    assert data.queries == {"Q1": "Koch", "Q2": "Bäcker"}
    assert data.qrels == {"Q1": {"C1_000": 1}, "Q2": {"C2_000": 1, "C2_001": 1}}
    assert len(data.corpus) == 3
    assert (data.meta["language"], data.meta["corpus_language"]) == ("de", "en")
    assert data.meta["dropped"] == {"annotations_unknown_id": 1, "queries_without_annotation": 1}
    convert_melo(folder, tmp_path / "out")
    assert read_dataset(tmp_path / "out").corpus == data.corpus


# ------------------------------------------------------------------------------------- the real files


@pytest.fixture(scope="module")
def converted(data_dir, tmp_path_factory):
    taxonomy = load_esco(str(data_dir / "esco" / "v1.1.1"))
    out = tmp_path_factory.mktemp("benchmarks")
    return out, convert_all(data_dir, out, taxonomy)


def test_real_counts(converted):
    _, summaries = converted
    counts = {
        name: (s["queries"], s["corpus"], s["qrels"], s.get("dropped", {})) for name, s in summaries.items()
    }
    assert counts == {
        "skill-extraction-house": (61, 13_896, 131, {"queries_without_label": 16}),
        "skill-extraction-tech": (75, 13_896, 131, {"queries_without_label": 26}),
        "skillskape-dev": (1230, 13_896, 2615, {"queries_without_label": 86}),
        "jobbert-titles": (
            15_151,
            3007,
            15_281,
            {"rows_concept_not_in_taxonomy": 1, "titles_without_concept_in_taxonomy": 1},
        ),
        "melo-nld_q_nl_c_nl": (2605, 24_069, 55_838, {"queries_without_annotation": 0}),
    }
    for name in ("skill-extraction-house", "skill-extraction-tech", "skillskape-dev"):
        assert summaries[name]["unknown_labels"] == {}, name
    assert summaries["jobbert-titles"]["merged"] == {
        "rows_same_title": 311,  # 15,463 rows, 15,152 titles once whitespace is collapsed
        "rows_same_title_and_concept": 181,
        "titles_with_several_concepts": 126,
    }


def test_real_skill_extraction_cross_check(data_dir, converted):
    out, _ = converted
    root = data_dir / "benchmarks" / "skill_extraction"
    lines = (root / "skills_en_label.txt").read_text(encoding="utf-8").split("\n")
    for subset in ("house", "tech"):
        frame = pd.read_csv(root / f"{subset}_validation_annotations.csv", dtype=str, keep_default_na=False)
        real = frame[~frame["label"].isin(["LABEL NOT PRESENT", "UNDERSPECIFIED"])]
        written = read_dataset(out / f"skill-extraction-{subset}")
        assert list(written.corpus.values()) == lines
        assert sorted(written.queries.values()) == sorted(real["sentence"].unique())
        pairs = {(written.queries[q], written.corpus[d]) for q, docs in written.qrels.items() for d in docs}
        assert pairs == set(zip(real["sentence"], real["label"], strict=True))
        assert written.meta["name"] == f"skill-extraction-{subset}"


def test_real_jobbert_on_esco_110(data_dir):
    data = jobbert_dataset(
        data_dir / "benchmarks" / "job_normalization" / "jobbert_titles_validation.csv",
        load_esco(str(data_dir / "esco" / "v1.1.0")),
    )
    assert data.meta["counts"] == {"queries": 15_152, "corpus": 3008, "qrels": 15_282}
    assert data.meta["dropped"] == {"titles_without_concept_in_taxonomy": 0}
    assert data.meta["esco"]["version"] == "v1.1.0"
