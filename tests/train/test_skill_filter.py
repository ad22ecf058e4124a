"""The non-skill sentence filter: SkillSpan reading, benchmark sentences kept out of training, the classifier,
the `filter` stage end to end and the extraction report with the filter on."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workembed.data.skillspan import SkillSpanFormatError, read_skillspan
from workembed.models import Encoder
from workembed.models.skill_filter import (
    FILTER_FILE,
    SkillFilter,
    fit_skill_filter,
    precision_recall,
    read_skill_filter,
)
from workembed.retrieval.leakage import benchmark_texts, leaked, text_key
from workembed.train.skill_filter import REPORT_FILE, SkillFilterConfig, run_skill_filter

SKILLED = [
    "Experience with Python and SQL",
    "You will design REST APIs in Java",
    "Knowledge of Kubernetes and Docker",
    "Strong communication skills",
    "Manage a team of nurses",
    "Proficient in Excel and accounting",
]
PLAIN = [
    "Date posted : 2021-04-22",
    "Job type : Full-time",
    "Likes : 0",
    "<ORGANIZATION> <LOCATION>",
    "Apply now",
]
TECH_SENTENCE = "Knowledge of Kubernetes and Docker"  # also a benchmark sentence: never trained on


def span_record(text: str, skilled: bool) -> dict:
    tokens = text.split()
    tags = ["B"] + ["I"] * (len(tokens) - 1) if skilled else ["O"] * len(tokens)
    return {
        "idx": 1,
        "tokens": tokens,
        "tags_skill": tags,
        "tags_knowledge": ["O"] * len(tokens),
        "source": "tech",
    }


def write_jsonl(path: Path, records) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def benchmarks(tmp_path) -> Path:
    """A benchmarks folder with every evaluation file the leakage guard reads."""
    root = tmp_path / "benchmarks"
    for subset, sentence in (("house", "Manage a team of nurses."), ("tech", TECH_SENTENCE.lower() + "!")):
        path = root / "skill_extraction" / f"{subset}_validation_annotations.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sentence": [sentence], "span": ["x"], "sub_span": [""], "label": ["x"]}).to_csv(
            path, index=False
        )
    for split in ("dev", "test"):
        path = root / "skillskape" / f"{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sentence": [f"A SkillSkape {split} sentence"], "skills": ["['UNK']"]}).to_csv(path)
    jobbert = root / "job_normalization" / "jobbert_titles_validation.csv"
    jobbert.parent.mkdir(parents=True)
    pd.DataFrame({"vacancyTitle": ["Marketing Executive"], "conceptUri": ["x"]}).to_csv(jobbert)
    (root / "melo" / "nld").mkdir(parents=True)
    (root / "melo" / "nld" / "queries.tsv").write_text("Q1\tLoopbaanadviseur\n", encoding="utf-8")
    write_jsonl(
        root / "skillspan" / "dev.json",
        [span_record(s, True) for s in SKILLED[:2]] + [span_record(p, False) for p in PLAIN[:2]],
    )
    records = [span_record(s, True) for s in SKILLED] + [span_record(p, False) for p in PLAIN]
    write_jsonl(root / "skillspan" / "train.json", records)
    return root


def test_skillspan_sentences_carry_whether_a_span_is_tagged(tmp_path):
    path = write_jsonl(
        tmp_path / "s.json", [span_record("Python and SQL", True), span_record("Likes : 0", False)]
    )
    sentences = read_skillspan(path)
    assert [(s.text, s.has_skill, s.source) for s in sentences] == [
        ("Python and SQL", True, "tech"),
        ("Likes : 0", False, "tech"),
    ]
    broken = write_jsonl(
        tmp_path / "b.json", [{"tokens": ["a", "b"], "tags_skill": ["O"], "tags_knowledge": ["O"]}]
    )
    with pytest.raises(SkillSpanFormatError, match="b.json:1: tokens and tags differ"):
        read_skillspan(broken)


def test_benchmark_sentences_are_found_whatever_their_tokenisation(benchmarks):
    found = benchmark_texts(benchmarks)
    assert text_key("Knowledge of Kubernetes and Docker") == text_key("knowledge of kubernetes, and docker!")
    hits = leaked(["Knowledge of Kubernetes and Docker", "Manage a team of nurses", "Something else"], found)
    assert hits == {
        "skill_extraction/tech_validation_annotations.csv": ["Knowledge of Kubernetes and Docker"],
        "skill_extraction/house_validation_annotations.csv": ["Manage a team of nurses"],
    }
    assert leaked(["marketing executive"], found) == {
        "job_normalization/jobbert_titles_validation.csv": ["marketing executive"]
    }
    assert "job_normalization/jobbert_titles_validation.csv" not in benchmark_texts(benchmarks, titles=False)
    (benchmarks / "skillskape" / "test.csv").unlink()
    with pytest.raises(FileNotFoundError, match="skillskape/test.csv"):
        benchmark_texts(benchmarks)


def test_the_classifier_on_separable_vectors_and_its_file():
    vectors = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = [True, True, False, False]
    fitted = fit_skill_filter(vectors, labels, regularization=100.0, threshold=0.5)
    assert fitted.keep(vectors).tolist() == labels
    assert precision_recall(np.array([True, True, True, False]), np.array(labels)) == pytest.approx(
        {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "dropped": 0.25}
    )
    with pytest.raises(ValueError, match="with and without skills"):
        fit_skill_filter(vectors, [True] * 4)
    with pytest.raises(ValueError, match=r"expected \[n, 2\]"):
        fitted.probability(np.zeros((1, 3)))


def test_the_filter_stage_fits_without_benchmark_sentences_and_saves_into_the_model(
    benchmarks, tiny_bert, tmp_path
):
    model = tmp_path / "model"
    Encoder(tiny_bert).model.save_pretrained(model)
    Encoder(tiny_bert).tokenizer.save_pretrained(model)
    config = SkillFilterConfig(
        model=str(model), skillspan=str(benchmarks / "skillspan"), benchmarks=str(benchmarks), max_length=16
    )
    report = run_skill_filter(config)
    # SkillSpan train minus the sentences of benchmark files: the tech/house validation sentences and the
    # two skilled and two plain sentences that SkillSpan dev also holds
    dropped = {TECH_SENTENCE, "Manage a team of nurses", *SKILLED[:2], *PLAIN[:2]}
    assert report["train"]["benchmark_sentences_dropped"] == len(dropped)
    assert report["train"]["used"] == len(SKILLED) + len(PLAIN) - len(dropped)
    saved = read_skill_filter(model)
    assert saved is not None and saved.threshold == 0.5
    assert json.loads((model / REPORT_FILE).read_text())["dev"] == report["dev"]
    # the reported dev figures are those of the saved filter on the model's embeddings
    dev = read_skillspan(benchmarks / "skillspan" / "dev.json")
    kept = saved.keep(Encoder(model, max_length=16).embed([s.text for s in dev], "skill_sentence"))
    expected = precision_recall(kept, np.array([s.has_skill for s in dev]))
    assert {key: report["dev"][key] for key in expected} == pytest.approx(expected)
    assert (report["dev"]["sentences"], report["dev"]["with_skill"]) == (4, 2)
    loaded = SkillFilter.load(model)
    np.testing.assert_array_equal(loaded.weights, saved.weights)
    assert (model / FILTER_FILE).is_file()


def test_an_alias_model_needs_an_output_folder():
    with pytest.raises(ValueError, match="give `out`"):
        SkillFilterConfig(model="minilm")


def test_no_benchmark_sentence_is_in_the_training_sets_of_the_shared_data(data_dir):
    """SkillSpan train as the filter keeps it, SkillSkape train and the ESCO training graph's texts."""
    from workembed.data.config import GraphConfig
    from workembed.data.graph import esco_edges_table
    from workembed.taxonomy import EscoConfig, load_esco_config
    from workembed.train.batches import EdgeGraph

    benchmark = benchmark_texts(data_dir / "benchmarks", titles=False)
    spans = read_skillspan(data_dir / "benchmarks" / "skillspan" / "train.json")
    hits = leaked([s.text for s in spans], benchmark)
    assert sum(map(len, hits.values())) > 0  # SkillSpan train does repeat benchmark sentences ...
    excluded = {text_key(text) for texts in hits.values() for text in texts}
    kept = [s.text for s in spans if text_key(s.text) not in excluded]
    assert leaked(kept, benchmark) == {}  # ... which the filter's training set leaves out
    skillskape = pd.read_csv(data_dir / "benchmarks" / "skillskape" / "train.csv")
    assert leaked(skillskape["sentence"].astype(str), benchmark) == {}
    # ESCO labels can equal short benchmark "sentences" ("Python", "software engineer"): with
    # data.benchmarks the training graph drops those edges
    edges = esco_edges_table(load_esco_config(EscoConfig(location="esco/v1.1.1")), GraphConfig())
    everything = benchmark_texts(data_dir / "benchmarks")
    guarded = EdgeGraph(
        edges,
        {"skill-alt": 1, "skill-job": 1, "job-alt": 1},
        excluded_texts=frozenset().union(*everything.values()),
    )
    assert leaked(set(guarded.left_text) | set(guarded.right_text), everything) == {}
    assert guarded.summary.dropped["benchmark_text"] > 0
