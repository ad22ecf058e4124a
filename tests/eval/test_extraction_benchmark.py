"""The ConTeXT-match evaluation on a hand-built case with exact values, its split, report files and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from workembed.eval.extraction_benchmark import (
    ExtractionEvalConfig,
    ExtractionProtocol,
    calibration_split,
    evaluate_extraction,
    run_extraction_eval,
    write_extraction_report,
)
from workembed.eval.report import rounded
from workembed.retrieval.embedding import query_token_vectors, target_cache_path, target_embeddings
from workembed.retrieval.ranking_dataset import RankingDataset, read_dataset, write_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# Skills a, b, c = e1, e2, e3 and d = 0.6·e3 + 0.8·e4 (c · d = 0.6). With seed 1, s1 and s2 calibrate and
# s3 and s4 are the test part; s5 has no positive judgement and is not used.
SKILLS = {"a": "skill a", "b": "skill b", "c": "skill c", "d": "skill d"}
SKILL_VECTORS = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0.6, 0.8]], dtype=np.float32)
TOKENS = {
    "s1": [[0.8, 0.6, 0, 0]],  # a 0.8, b 0.6, c 0, d 0
    "s2": [[0, 0.28, 0, 0.96]],  # b 0.28, d 0.768
    # with τ = 0.05, a [0.6, 0] → 0.6·σ(12), b [0.8, 0] → 0.8·σ(16), c [0, 1] → σ(20), d [0, 0.6] → 0.6·σ(12);
    # the first token prefers b, the second c: the filter drops a and d
    "s3": [[0.6, 0.8, 0, 0], [0, 0, 1, 0]],
    "s4": [[0, 0, 0, 1]],  # d 0.8, the rest 0
}
GOLD = {"s1": {"a", "b"}, "s2": {"d"}, "s3": {"b", "c"}, "s4": {"a", "b", "d"}}
GRID = [0.1, 0.3, 0.5, 0.7, 0.9]


def hand_built() -> RankingDataset:
    queries = {qid: f"sentence {qid}" for qid in [*TOKENS, "s5"]}
    qrels = {qid: {skill: 1 for skill in gold} for qid, gold in GOLD.items()} | {"s5": {"a": 0}}
    return RankingDataset("hand-built", queries, SKILLS, qrels)


def evaluate_hand_built(keep=None, skill_vectors=SKILL_VECTORS, **settings):
    vectors = {qid: np.array(rows, dtype=np.float32) for qid, rows in TOKENS.items()}
    protocol = {"calibration_fraction": 0.5, "seed": 1, "grid": GRID, "temperature": 0.05, "k": 1} | settings
    return evaluate_extraction(
        hand_built(),
        ExtractionProtocol(**protocol),
        token_vectors=vectors,
        skill_vectors=skill_vectors,
        keep=keep,
    )


def test_hand_built_case_gives_the_known_threshold_and_metrics():
    result = evaluate_hand_built()
    assert (result["calibration_queries"], result["test_queries"], result["queries_without_positives"]) == (
        2,
        2,
        1,
    )
    # calibration: t = 0.1 predicts a, b | b, d (3 of 4 gold); t = 0.3 and 0.5 exactly a, b | d; t = 0.7 a | d
    table = result["threshold_table"]
    assert table["predicted"] == [4, 3, 3, 2, 0] and table["true_positives"] == [3, 3, 3, 2, 0]
    assert table["precision"] == pytest.approx([3 / 4, 1, 1, 1, 0])
    assert table["recall"] == pytest.approx([1, 1, 1, 2 / 3, 0])
    assert table["f1"] == pytest.approx([6 / 7, 1, 1, 4 / 5, 0])
    assert result["threshold"] == pytest.approx(0.3)  # F1 = 1 at 0.3 and 0.5: the lower one wins
    assert result["calibration_f1"] == 1.0
    # test at 0.3: s3 predicts a, b, c, d (gold b, c), s4 predicts d (gold a, b, d): TP 3, 5 predicted, 5 gold
    test = result["test"]
    assert (test["precision"], test["recall"], test["f1"]) == pytest.approx((3 / 5, 3 / 5, 3 / 5))
    # per sentence p, r, f1: s3 1/2, 1, 2/3; s4 1, 1/3, 1/2
    assert (test["macro_precision"], test["macro_recall"], test["macro_f1"]) == pytest.approx(
        (3 / 4, 2 / 3, 7 / 12)
    )
    assert (test["predictions"], test["predicted_per_sentence"]) == (5, 2.5)
    # top 1: c for s3 (F1@1 = 2/(1+2)), d for s4 (2/(1+3)); micro 2·2 / (1·2 + 5)
    assert (test["macro_f1@1"], test["micro_f1@1"]) == pytest.approx((7 / 12, 4 / 7))
    # the filter keeps b, c | d: all correct
    filtered = result["filtered"]
    assert (filtered["precision"], filtered["recall"], filtered["f1"]) == pytest.approx((1, 3 / 5, 3 / 4))
    assert (filtered["macro_precision"], filtered["macro_recall"], filtered["macro_f1"]) == pytest.approx(
        (1, 2 / 3, 3 / 4)
    )
    assert filtered["predictions"] == 3
    assert result["redundancy"] == pytest.approx(2 / 5)
    # s3 before: 6 pairs of {a, b, c, d}, only c · d = 0.6 is nonzero; after: b · c = 0
    assert result["mean_pairwise_similarity"] == pytest.approx({"before": 0.1, "after": 0.0})


def test_a_sentence_the_skill_filter_drops_predicts_nothing():
    seen = []

    def keep(texts):
        seen.extend(texts)
        return [text != "sentence s3" for text in texts]

    result = evaluate_hand_built(keep=keep)
    assert seen == ["sentence s3", "sentence s4"]  # the test part only
    # s3 dropped: only s4's d is predicted, and it is right; 5 gold skills in the test part
    screened = result["with_skill_filter"]
    assert (screened["precision"], screened["recall"], screened["f1"]) == pytest.approx((1, 1 / 5, 1 / 3))
    assert (screened["dropped_sentences"], screened["predictions"]) == (1, 1)
    assert result["test"] == evaluate_hand_built()["test"]  # the unfiltered figures stay as they were
    assert "with_skill_filter" not in evaluate_hand_built()


def test_the_split_decides_which_sentences_calibrate():
    # seed 0: s1 and s4 calibrate, which gives another threshold
    result = evaluate_hand_built(seed=0)
    assert (result["calibration_queries"], result["test_queries"]) == (2, 2)
    # calibration s1 (a .8, b .6) + s4 (d .8): t = 0.5 predicts a, b | d, TP 3 of 5 gold → F1 = 6/8,
    # t = 0.7: a | d → 4/7, t = 0.1, 0.3: same as 0.5
    assert result["threshold_table"]["f1"] == pytest.approx([3 / 4, 3 / 4, 3 / 4, 4 / 7, 0])
    assert result["threshold"] == pytest.approx(0.1)


def test_calibration_split_is_deterministic_and_seeded():
    ids = ["s1", "s2", "s3", "s4"]
    assert calibration_split(ids, 0.5, seed=1) == (["s1", "s2"], ["s3", "s4"])
    assert calibration_split(ids, 0.5, seed=0) == (["s1", "s4"], ["s2", "s3"])
    # membership depends on (seed, id) only, not on the order given; each part keeps the input order
    assert calibration_split(ids[::-1], 0.5, seed=0) == (["s4", "s1"], ["s3", "s2"])
    many = [f"q{i}" for i in range(200)]
    calibration, test = calibration_split(many, 0.3, seed=7)
    assert (len(calibration), len(test)) == (60, 140)
    assert sorted(calibration + test) == sorted(many)
    assert calibration_split(many, 0.3, seed=7) == (calibration, test)
    assert calibration_split(many, 0.3, seed=8)[0] != calibration
    # the parts are never empty
    assert calibration_split(["x", "y"], 0.01) in ((["x"], ["y"]), (["y"], ["x"]))
    assert len(calibration_split(["x", "y", "z"], 0.99)[1]) == 1


def test_clear_errors(tmp_path):
    unlabelled = write_dataset(
        tmp_path / "unlabelled", {"q1": "one", "q2": "two"}, SKILLS, {"q1": {"a": 0}, "q2": {"b": 0}}
    )
    with pytest.raises(ValueError, match="dataset 'unlabelled' needs at least 2 queries with a gold skill"):
        evaluate_extraction(read_dataset(unlabelled), skill_vectors=SKILL_VECTORS, token_vectors={})
    for fraction in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match=r"calibration_fraction must be in \(0, 1\)"):
            evaluate_hand_built(calibration_fraction=fraction)
        with pytest.raises(ValidationError, match="calibration_fraction"):
            ExtractionEvalConfig(datasets=["d"], calibration_fraction=fraction)
    with pytest.raises(ValueError, match="token_vectors lack query 's4'"):
        evaluate_extraction(
            hand_built(),
            token_vectors={q: np.ones((1, 4)) for q in ("s1", "s2", "s3")},
            skill_vectors=SKILL_VECTORS,
        )
    with pytest.raises(ValueError, match="skill_vectors of shape"):
        evaluate_hand_built(skill_vectors=SKILL_VECTORS[:3])
    with pytest.raises(ValueError, match="give an encoder"):
        evaluate_extraction(hand_built())
    for settings, message in [
        ({"temperature": 0}, "temperature"),
        ({"k": 0}, "k"),
        ({"among": "x"}, "among"),
    ]:
        with pytest.raises(ValueError, match=f"{message} must be"):
            ExtractionProtocol(**settings)
    with pytest.raises(ValidationError, match="must not end in .md"):
        ExtractionEvalConfig(datasets=["d"], out="report.md")


def test_config_grid_steps():
    config = ExtractionEvalConfig(datasets=["d"], grid=4)
    np.testing.assert_allclose(config.thresholds(), [0, 0.25, 0.5, 0.75, 1])
    assert len(ExtractionEvalConfig(datasets=["d"]).thresholds()) == 101


def test_report_files_hold_the_returned_values(tmp_path):
    report = {"model": "hand", "temperature": 0.05, "k": 1, "among": "all", "results": {}}
    report["results"]["hand/built"] = evaluate_hand_built()
    files = write_extraction_report(report, tmp_path / "out" / "extraction.json")
    assert json.loads((tmp_path / "out" / "extraction.json").read_text()) == rounded(report)
    assert files["plots"] == {"hand/built": str(tmp_path / "out" / "extraction-hand_built-threshold.png")}
    assert (tmp_path / "out" / "extraction-hand_built-threshold.png").read_bytes()[:8] == PNG_MAGIC
    markdown = (tmp_path / "out" / "extraction.md").read_text()
    assert "| hand/built | 2 | 2 | 0.3000 | 0.6000 | 0.6000 | 0.6000 | 0.7500 | 0.6667 | 0.5833 |" in markdown
    assert "| hand/built | 0.4000 | 1.0000 | 0.6000 | 0.7500 | 3 | 0.1000 | 0.0000 |" in markdown


SENTENCES = {
    "q01": "We need someone who can write Python code.",
    "q02": "Experience with baking bread and pastries.",
    "q03": "You will drive a delivery truck.",
    "q04": "Strong communication skills with customers.",
    "q05": "Manage a team of five sales people.",
    "q06": "Develop web applications in JavaScript.",
    "q07": "Prepare sourdough and cakes every morning.",
    "q08": "Hold a valid heavy goods vehicle licence.",
    "q09": "Answer customer questions by phone.",
    "q10": "Lead and motivate the store staff.",
}
SKILL_LABELS = {
    "k1": "Python (computer programming)",
    "k2": "bake goods",
    "k3": "drive vehicles",
    "k4": "communicate with customers",
    "k5": "manage staff",
    "k6": "JavaScript",
}
SKILL_GOLD = {
    "q01": "k1",
    "q02": "k2",
    "q03": "k3",
    "q04": "k4",
    "q05": "k5",
    "q06": "k6",
    "q07": "k2",
    "q08": "k3",
    "q09": "k4",
    "q10": "k5",
}


def test_run_with_minilm_writes_the_report_it_returns(minilm, tmp_path):
    folder = write_dataset(
        tmp_path / "jobs",
        SENTENCES,
        SKILL_LABELS,
        {q: {s: 1} for q, s in SKILL_GOLD.items()},
        {"name": "jobs"},
    )
    config = ExtractionEvalConfig(
        datasets=[str(folder)], grid=20, k=2, cache_dir=str(tmp_path / "cache"), out=str(tmp_path / "r.json")
    )
    result = run_extraction_eval(config)
    files = {key: result.pop(key) for key in ("out", "markdown", "plots")}
    assert json.loads((tmp_path / "r.json").read_text()) == result
    assert files["plots"]["jobs"] == str(tmp_path / "r-jobs-threshold.png")
    assert (tmp_path / "r-jobs-threshold.png").read_bytes()[:8] == PNG_MAGIC
    assert (tmp_path / "r.md").read_text().count("| jobs |") == 2
    assert target_cache_path(minilm, SKILL_LABELS, tmp_path / "cache").is_file()
    # the same numbers from precomputed vectors: sentences embedded per part, as the evaluation does
    dataset = read_dataset(folder)
    vectors = {}
    for part in calibration_split(list(SENTENCES), 0.5, seed=0):
        vectors |= dict(zip(part, query_token_vectors(minilm, [SENTENCES[q] for q in part]), strict=True))
    direct = evaluate_extraction(
        dataset,
        ExtractionProtocol(grid=config.thresholds(), k=2),
        token_vectors=vectors,
        skill_vectors=target_embeddings(minilm, SKILL_LABELS),
    )
    protocol = config.protocol()  # what the run evaluated each dataset with
    np.testing.assert_array_equal(protocol.grid, config.thresholds())
    assert (protocol.k, protocol.seed, protocol.cache_dir) == (2, 0, config.cache_dir)
    assert result["results"]["jobs"] == rounded(direct)
    assert result["results"]["jobs"]["calibration_queries"] == 5


def test_the_run_is_logged_to_mlflow_with_its_report_files(minilm, tmp_path, mlflow_server):
    from mlflow import MlflowClient

    folder = write_dataset(
        tmp_path / "jobs",
        SENTENCES,
        SKILL_LABELS,
        {q: {s: 1} for q, s in SKILL_GOLD.items()},
        {"name": "jobs"},
    )
    config = ExtractionEvalConfig(
        datasets=[str(folder)], grid=20, k=2, cache_dir=str(tmp_path / "cache"), tracking_uri=mlflow_server
    )
    result = run_extraction_eval(config)
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result["mlflow_run_id"])
    assert run.data.metrics["jobs/threshold"] == result["results"]["jobs"]["threshold"]
    assert run.data.metrics["jobs/test/f1"] == result["results"]["jobs"]["test"]["f1"]
    assert run.data.params["k"] == "2" and "tracking_uri" not in run.data.params
    names = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert names == {"extraction.json", "extraction.md", "extraction-jobs-threshold.png"}
