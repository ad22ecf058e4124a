"""WorkRB's own runner evaluates a workembed encoder and reports workembed's metrics on the same rankings."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from workembed.eval.metrics import METRICS, mean_metrics, ndcg_at_k, positive_grades
from workembed.eval.workrb_adapter import import_workrb, to_workrb_dataset, workrb_relevance
from workembed.retrieval.ranking import encoder_ranking
from workembed.retrieval.ranking_dataset import RankingDataset

QUERIES = {
    "q1": "We are looking for a Python developer to build data pipelines.",
    "q2": "You will care for patients on the night shift.",
    "q3": "Drive our delivery trucks across the region.",
    "q4": "Prepare meals in a busy restaurant kitchen.",
    "q5": "Keep the books and prepare the annual accounts.",
    "q6": "Teach mathematics to secondary school pupils.",
    "q7": "Negotiate contracts with suppliers and customers.",
    "q8": "An unjudged sentence about the weather.",
}
CORPUS = {
    "s1": "Python (computer programming)",
    "s2": "develop data pipelines",
    "s3": "provide nursing care",
    "s4": "work in shifts",
    "s5": "drive heavy goods vehicles",
    "s6": "plan delivery routes",
    "s7": "cook meals",
    "s8": "food hygiene",
    "s9": "bookkeeping",
    "s10": "prepare financial statements",
    "s11": "teach mathematics",
    "s12": "negotiate contracts",
    "s13": "manage supplier relationships",
    "s14": "customer service",
}
QRELS = {
    "q1": {"s1": 2, "s2": 1},
    "q2": {"s3": 2, "s4": 1},
    "q3": {"s5": 2, "s6": 1, "s14": 0},
    "q4": {"s7": 2, "s8": 1},
    "q5": {"s9": 1, "s10": 2},
    "q6": {"s11": 1, "s4": 1},
    "q7": {"s12": 2, "s13": 1, "s14": 1},
    "q8": {"s1": 0},
}
ALL_METRICS = list(METRICS)


@pytest.fixture(scope="module")
def workrb():
    return import_workrb()


@pytest.fixture(scope="module")
def dataset():
    return RankingDataset("tiny-skills", QUERIES, CORPUS, QRELS, {"language": "en"})


def test_workembed_imports_without_workrb():
    code = (
        "import sys\n"
        "import workembed.eval, workembed.eval.workrb_adapter\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'workrb'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_conversion_keeps_positions_and_maps_grades(workrb, dataset):
    converted = to_workrb_dataset(dataset)
    assert converted.dataset_id == "tiny-skills"
    assert converted.query_texts == [
        QUERIES[q] for q in ("q1", "q2", "q3", "q4", "q5", "q6", "q7")
    ]  # q8: none
    assert converted.target_space == list(CORPUS.values())
    assert converted.target_indices[2] == [4, 5]  # q3: s5, s6 (s14 is judged irrelevant)
    assert converted.target_relevance[2] == [math.log2(3), 1.0]
    assert converted.target_indices[6] == [11, 12, 13]
    assert to_workrb_dataset(dataset, gain="exponential").target_relevance[2] == [2.0, 1.0]
    assert 2 ** workrb_relevance(3, "linear") - 1 == pytest.approx(3)


@pytest.mark.parametrize("scorer", ["cosine", "late-interaction"])
def test_workrb_runner_reports_workembed_metrics(workrb, dataset, minilm, tmp_path, scorer):
    from workembed.eval.workrb_adapter import WorkembedModel, WorkembedRankingTask

    model = WorkembedModel(minilm, scorer=scorer)
    task = WorkembedRankingTask([dataset], name="tiny-task")
    results = workrb.evaluate(model, [task], output_folder=str(tmp_path), metrics={"tiny-task": ALL_METRICS})

    # what WorkRB wrote in its own report
    written = json.loads((tmp_path / "results.json").read_text())
    reported = written["task_results"]["tiny-task"]["datasetid_results"]["tiny-skills"]["metrics_dict"]
    assert reported == results.task_results["tiny-task"].datasetid_results["tiny-skills"].metrics_dict
    expected_name = {"cosine": "workembed-minilm", "late-interaction": "workembed-minilm-late-interaction"}
    assert written["metadata"]["model_name"] == model.name == expected_name[scorer]

    # workembed's runner path: blocked top-k over the same scorer, then workembed's metrics
    ranking = encoder_ranking(minilm, QUERIES, CORPUS, k=len(CORPUS), scorer=scorer)
    ours, evaluated = mean_metrics(ranking.as_dict(), QRELS)
    assert evaluated == 7
    # the same rankings: WorkRB argsorts the adapter's scores, workembed takes its own top k
    scores = model.scores(list(QUERIES.values()), list(CORPUS.values()))
    np.testing.assert_array_equal(np.argsort(-scores, axis=1, kind="stable"), ranking.indices)
    for name in METRICS:
        assert reported[name] == pytest.approx(ours[name], abs=1e-9), name
    assert 0 < ours["map"] < 1  # a ranking with mistakes, not a trivial all-ones case


def test_exponential_gain_gives_workrbs_graded_ndcg(workrb, dataset, minilm):
    from workembed.eval.workrb_adapter import WorkembedModel, WorkembedRankingTask

    task = WorkembedRankingTask([dataset], gain="exponential")
    reported = task.evaluate(WorkembedModel(minilm), metrics=ALL_METRICS, dataset_id="tiny-skills")
    rankings = encoder_ranking(minilm, QUERIES, CORPUS, k=len(CORPUS)).as_dict()
    ours, _ = mean_metrics(rankings, QRELS)
    for name in ("map", "mrr", "rp@1", "rp@5", "rp@10", "recall@100"):
        assert reported[name] == pytest.approx(ours[name], abs=1e-9), name
    # WorkRB's gain 2^g - 1 is workembed's linear gain applied to the grades 2^g - 1
    exponential = [
        ndcg_at_k(rankings[qid], {doc: 2**grade - 1 for doc, grade in positive_grades(QRELS[qid]).items()})
        for qid in QUERIES
        if positive_grades(QRELS[qid])
    ]
    assert reported["ndcg@10"] == pytest.approx(np.mean(exponential), abs=1e-9)
    assert reported["ndcg@10"] != pytest.approx(ours["ndcg@10"], abs=1e-6)  # graded: the gains do differ


def test_model_implements_the_interface(workrb, minilm):
    from workembed.eval.workrb_adapter import WorkembedModel

    model = WorkembedModel(minilm, name="mine")
    assert isinstance(model, workrb.ModelInterface)
    assert (model.name, model.classification_label_space) == ("mine", None)
    texts, labels = ["I repair engines", "I bake bread"], ["repair engines", "bake bread", "sing"]
    ranked = model.compute_rankings(texts, labels, workrb.ModelInputType.SKILL_SENTENCE, None)
    classified = model.compute_classification(texts, labels, workrb.ModelInputType.SKILL_SENTENCE)
    assert ranked.shape == (2, 3)
    assert ranked.argmax(dim=1).tolist() == [0, 1]
    assert np.array_equal(classified.numpy(), ranked.numpy())
    with pytest.raises(ValueError, match="unknown scorer"):
        WorkembedModel(minilm, scorer="dot")


def test_task_languages_and_validation(workrb):
    from workembed.eval.workrb_adapter import WorkembedRankingTask

    english = RankingDataset("en-set", {"q": "a"}, {"d": "b"}, {"q": {"d": 1}}, {"language": "en"})
    crossed = RankingDataset(
        "de-en-set", {"q": "a"}, {"d": "b"}, {"q": {"d": 1}}, {"language": "de", "corpus_language": "en"}
    )
    task = WorkembedRankingTask([english, crossed], name="langs")
    assert task.dataset_ids == ["en-set", "de-en-set"]
    languages = task.get_dataset_languages("de-en-set")
    assert (languages.input_languages, languages.output_languages) == (
        frozenset({workrb.Language.DE}),
        frozenset({workrb.Language.EN}),
    )
    assert WorkembedRankingTask([english, crossed], languages=["en"]).dataset_ids == ["en-set"]
    unknown = RankingDataset("xx-set", {"q": "a"}, {"d": "b"}, {"q": {"d": 1}}, {"language": "xx"})
    with pytest.raises(ValueError, match="dataset xx-set: meta.json language 'xx'"):
        WorkembedRankingTask([unknown])
    with pytest.raises(ValueError, match="several datasets are named en-set"):
        WorkembedRankingTask([english, english])
