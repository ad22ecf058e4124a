"""Scoring, blocked top-k, baselines, the runner and ``workembed eval`` on a tiny hand-built dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workembed.cli import main, with_default_subcommand
from workembed.eval.baselines import bm25_ranking, tfidf_ranking, word_tokens
from workembed.eval.metrics import METRICS
from workembed.eval.runner import EvalConfig, evaluate, run_eval
from workembed.retrieval.embedding import query_token_vectors, target_cache_path, target_embeddings
from workembed.retrieval.ranking import encoder_ranking
from workembed.retrieval.ranking_dataset import write_dataset
from workembed.retrieval.scoring import blocked_top_k, dense_top_k, late_interaction_scores, top_k_rows
from workembed.tracking import flatten_metrics

QUERIES = {"q1": "Python programming", "q2": "baking bread", "q3": "drive a lorry", "q4": "unjudged query"}
CORPUS = {
    "d1": "Python (computer programming)",
    "d2": "bake bread and pastries",
    "d3": "operate heavy goods vehicles",  # the paraphrase of q3: no word or character 3-gram in common
    "d4": "python snake care",
    "d5": "gardening",
    "d6": "accounting",
}
QRELS = {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 2, "d6": 0}, "q4": {"d5": 0}}

# BM25 and TF-IDF rank d1 first for q1 and d2 first for q2; q3 shares nothing with the corpus, so every
# target scores 0 and ties keep corpus order: d3 is third. Means over q1, q2, q3 (q4 has no positive):
LEXICAL = {
    "map": (1 + 1 + 1 / 3) / 3,
    "mrr": (1 + 1 + 1 / 3) / 3,
    "rp@1": 2 / 3,
    "rp@5": 1.0,
    "rp@10": 1.0,
    "ndcg@10": (1 + 1 + (2 / np.log2(4)) / 2) / 3,  # q3: gain 2 at rank 3 over ideal gain 2 at rank 1
    "recall@100": 1.0,
}


@pytest.fixture
def tiny(tmp_path):
    return write_dataset(tmp_path / "tiny", QUERIES, CORPUS, QRELS, {"language": "en", "direction": "q2d"})


# ------------------------------------------------------------------------------------------- top-k


@pytest.mark.parametrize(("block_size", "k"), [(1, 5), (7, 5), (1000, 5), (16, 100)])
def test_blocked_top_k_equals_a_full_argsort(block_size, k):
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((50, 16))  # float64: block and full products agree to ~1e-15
    targets = rng.standard_normal((40, 16))
    full = queries @ targets.T
    expected = np.argsort(-full, axis=1, kind="stable")[:, :k]
    indices, scores = dense_top_k(queries, targets, k, block_size=block_size)
    assert indices.shape == (50, min(k, 40))
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(full, expected, axis=1), rtol=1e-6)


def test_blocked_top_k_sees_each_block_once():
    seen = []

    def score_block(start, stop):
        seen.append((start, stop))
        return np.tile(np.arange(5, dtype=np.float32), (stop - start, 1))

    indices, _ = blocked_top_k(score_block, 10, k=2, block_size=4)
    assert seen == [(0, 4), (4, 8), (8, 10)]
    assert indices.tolist() == [[4, 3]] * 10


def test_ties_keep_corpus_order():
    indices, scores = top_k_rows(np.array([[0.0, 1.0, 0.0, 1.0, 0.0]]), 5)
    assert indices.tolist() == [[1, 3, 0, 2, 4]]
    assert scores.tolist() == [[1.0, 1.0, 0.0, 0.0, 0.0]]


# ---------------------------------------------------------------------------------- late interaction


def test_late_interaction_equals_the_formula_on_a_hand_made_case():
    tokens = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 1.0]])  # not unit length: normalised
    targets = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0]])
    tau = 0.1
    q = tokens / np.linalg.norm(tokens, axis=1, keepdims=True)
    t = targets / np.linalg.norm(targets, axis=1, keepdims=True)
    expected = []
    for target in t:
        cos = q @ target  # c_i
        weights = np.exp(cos / tau) / np.exp(cos / tau).sum()  # softmax_i(c_i / tau)
        expected.append(float((weights * cos).sum()))
    scores = late_interaction_scores([tokens], targets, tau)
    np.testing.assert_allclose(scores[0], expected, rtol=1e-6)
    assert expected[0] == pytest.approx(0.7919, abs=1e-4)  # c = (0.6, 0.8, 0.8083), w = (.061, .450, .489)
    # the limits: the mean token cosine (tau → ∞) and the best token's cosine (tau → 0)
    cos = q @ t.T
    np.testing.assert_allclose(late_interaction_scores([tokens], targets, 1e6)[0], cos.mean(0), rtol=1e-5)
    np.testing.assert_allclose(late_interaction_scores([tokens], targets, 1e-4)[0], cos.max(0), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        late_interaction_scores([tokens], targets, 0.0)


def test_query_tokens_exclude_special_tokens(minilm):
    (vectors,) = query_token_vectors(minilm, ["Python programming"])
    (tokens,) = minilm.embed_tokens(["Python programming"])
    assert len(vectors) == sum(not special for special in tokens.special) == len(tokens.special) - 2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)


def test_late_interaction_ranking_with_an_encoder(minilm):
    ranking = encoder_ranking(minilm, QUERIES, CORPUS, k=3, scorer="late-interaction", temperature=0.05)
    assert ranking.scores.shape == (4, 3)
    assert [ranking.ids(row)[0] for row in range(3)] == ["d1", "d2", "d3"]


# ------------------------------------------------------------------------------------- target cache


def test_target_embeddings_are_cached_per_model_and_target_space(minilm, tmp_path):
    first = target_embeddings(minilm, CORPUS, tmp_path)
    path = target_cache_path(minilm, CORPUS, tmp_path)
    assert path.is_file() and path.parent.name.startswith("minilm-")
    np.testing.assert_array_equal(np.load(path), first)
    np.save(path, first * 0 + 1)  # a cache hit returns the stored array, not a recomputed one
    np.testing.assert_array_equal(target_embeddings(minilm, CORPUS, tmp_path), first * 0 + 1)
    changed = {**CORPUS, "d6": "bookkeeping"}
    assert target_cache_path(minilm, changed, tmp_path) != path
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-5)


# -------------------------------------------------------------------------------------- baselines


def test_word_tokens():
    assert word_tokens("Python (Computer programming), C++!") == ["python", "computer", "programming", "c"]


@pytest.mark.parametrize("rank", [bm25_ranking, tfidf_ranking])
def test_baselines_rank_lexical_matches_first(rank):
    ranking = rank(QUERIES, CORPUS, k=4)
    assert ranking.indices.shape == (4, 4)
    assert ranking.ids(0)[:2] == ["d1", "d4"]  # both mention python; d1 also programming
    assert ranking.ids(1)[0] == "d2"
    assert ranking.ids(2) == ["d1", "d2", "d3", "d4"]  # nothing in common: all 0, corpus order
    assert np.all(ranking.scores[2] == 0)
    assert np.all(np.diff(ranking.scores, axis=1) <= 0)


# ----------------------------------------------------------------------------------------- runner


def test_evaluate_exact_values_on_the_tiny_dataset(tiny, minilm):
    report = evaluate(EvalConfig(datasets=[str(tiny)], baselines=True, cache_dir=None), minilm)
    assert report["datasets"]["tiny"] == {
        "queries": 4,
        "targets": 6,
        "queries_without_positives": 1,
        "language": "en",
        "direction": "q2d",
    }
    systems = report["results"]["tiny"]
    assert list(systems) == ["minilm", "bm25", "tfidf"]
    for name in ("bm25", "tfidf"):
        assert systems[name]["n_queries"] == 3
        assert systems[name]["queries_without_positives"] == 1
        for metric, value in LEXICAL.items():
            assert systems[name][metric] == pytest.approx(value, abs=1e-12), (name, metric)
    # the encoder finds the paraphrase (and the two lexical matches) first: every metric is 1
    assert {metric: systems["minilm"][metric] for metric in METRICS} == pytest.approx(
        dict.fromkeys(METRICS, 1.0)
    )
    ranking = encoder_ranking(minilm, {"q3": QUERIES["q3"]}, CORPUS)
    assert ranking.ids(0)[0] == "d3"


def test_evaluate_rejects_two_datasets_with_one_name(tiny, minilm):
    with pytest.raises(ValueError, match="several datasets are named tiny"):
        evaluate(EvalConfig(datasets=[str(tiny), str(tiny)], cache_dir=None), minilm)


# -------------------------------------------------------------------------------------------- CLI


def test_eval_is_the_default_sub_command():
    assert with_default_subcommand(["eval", "--dataset", "d"]) == ["eval", "run", "--dataset", "d"]
    assert with_default_subcommand(["eval"]) == ["eval", "run"]
    assert with_default_subcommand(["eval", "run", "--dataset", "d"]) == ["eval", "run", "--dataset", "d"]
    assert with_default_subcommand(["eval", "build-tasks", "-c", "x"]) == ["eval", "build-tasks", "-c", "x"]
    assert with_default_subcommand(["eval", "--help"]) == ["eval", "--help"]
    assert with_default_subcommand(["embed", "--model", "m"]) == ["embed", "--model", "m"]


@pytest.mark.integration
def test_cli_eval_writes_json_and_markdown(tiny, tmp_path, capsys):
    out = tmp_path / "reports" / "tiny.json"
    argv = ["eval", "--model", "minilm", "--dataset", str(tiny), "--baselines", "--out", str(out)]
    assert main([*argv, "--set", f"cache_dir={tmp_path / 'cache'}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed["out"] == str(out) and printed["markdown"] == str(out.with_suffix(".md"))
    assert printed["plots"] == {
        "rp@5": str(out.with_name("tiny-rp_at_5.png")),
        "map": str(out.with_name("tiny-map.png")),
    }
    assert "mlflow_run_id" not in printed
    assert all(open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for path in printed["plots"].values())
    assert set(written) == {"model", "scorer", "k", "datasets", "results"}
    assert (written["model"], written["scorer"], written["k"]) == ("minilm", "cosine", 100)
    for system in ("minilm", "bm25", "tfidf"):
        values = written["results"]["tiny"][system]
        assert set(values) == {"n_queries", "queries_without_positives", "seconds", *METRICS}
    assert written["results"]["tiny"]["bm25"]["map"] == round(LEXICAL["map"], 4) == 0.7778
    markdown = out.with_suffix(".md").read_text()
    assert (
        "| dataset | system | queries | map | mrr | rp@1 | rp@5 | rp@10 | ndcg@10 | recall@100 |" in markdown
    )
    assert "| tiny | bm25 | 3 | 0.7778 | 0.7778 | 0.6667 | 1.0000 | 1.0000 | 0.8333 | 1.0000 |" in markdown
    assert list((tmp_path / "cache").glob("minilm-*/*.npy"))


@pytest.mark.integration
def test_cli_eval_run_with_a_config_file(tiny, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"datasets: [{tiny}]\nscorer: late-interaction\nk: 2\ncache_dir: null\n"
        "profiles:\n  sharp:\n    temperature: 0.01\n"
    )
    assert main(["eval", "run", "-c", str(config), "--profile", "sharp"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["scorer"], report["k"], report["temperature"]) == ("late-interaction", 2, 0.01)
    assert report["results"]["tiny"]["minilm"]["mrr"] == 1.0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "datasets: Field required"),
        (["--dataset", "/nonexistent/dataset"], "dataset folder not found"),
        (["--dataset", "x", "--out", "report.md"], "must not end in .md"),
        (["--dataset", "x", "--set", "k=0"], "k (from --set)"),
    ],
)
def test_cli_eval_errors_exit_2(extra, message, capsys):
    assert main(["eval", *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_dataset_without_positive_judgements_reports_no_values(tmp_path, minilm):
    folder = write_dataset(tmp_path / "none", {"q1": "a"}, {"d1": "a", "d2": "b"}, {"q1": {"d1": 0}})
    config = EvalConfig(datasets=[str(folder)], baselines=True, cache_dir=None)
    systems = evaluate(config, minilm)["results"]["none"]
    for values in systems.values():
        assert (values["n_queries"], values["queries_without_positives"]) == (0, 1)
        assert all(np.isnan(values[metric]) for metric in METRICS)


# ------------------------------------------------------------------------------------------ MLflow


def test_tracking_uri_defaults_to_the_environment(monkeypatch):
    assert EvalConfig(datasets=["d"]).tracking_uri is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    config = EvalConfig(datasets=["d"])
    assert (config.tracking_uri, config.experiment) == ("http://127.0.0.1:5999", "workembed-eval")
    assert EvalConfig(datasets=["d"], tracking_uri=None).tracking_uri is None
    with pytest.raises(ValueError, match="experiment"):
        EvalConfig(datasets=["d"], experiment="")


def test_run_eval_logs_config_metrics_and_report_files_to_mlflow(tiny, tiny_bert, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / "reports" / "tiny.json"
    config = EvalConfig(
        model=str(tiny_bert),
        datasets=[str(tiny)],
        baselines=True,
        k=5,
        cache_dir=None,
        out=str(out),
        tracking_uri=mlflow_server,
        experiment="eval-test",
    )
    result = run_eval(config)
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == tiny_bert.name
    assert client.get_experiment(run.info.experiment_id).name == "eval-test"

    metrics = run.data.metrics
    assert metrics == flatten_metrics(result["results"])
    systems = result["results"]["tiny"]
    assert metrics["tiny/bm25/map"] == systems["bm25"]["map"] == round(LEXICAL["map"], 4)
    assert metrics["tiny/tfidf/rp_at_5"] == systems["tfidf"]["rp@5"] == 1.0
    model_key = str(tiny_bert).replace("/", "_")
    assert metrics[f"tiny/{model_key}/n_queries"] == 3.0
    assert metrics[f"tiny/{model_key}/ndcg_at_10"] == systems[str(tiny_bert)]["ndcg@10"]
    assert len(metrics) == 3 * (len(METRICS) + 3)  # 3 systems x (metrics, n_queries, without positives, s)

    params = run.data.params
    assert set(params) == set(EvalConfig.model_fields) - {"tracking_uri"}
    assert (params["model"], params["datasets"], params["k"]) == (
        str(tiny_bert),
        json.dumps([str(tiny)]),
        "5",
    )
    assert (params["baselines"], params["cache_dir"], params["scorer"]) == ("true", "null", "cosine")
    assert (params["out"], params["experiment"]) == (str(out), "eval-test")

    artifacts = sorted(item.path for item in client.list_artifacts(run.info.run_id))
    assert artifacts == ["tiny-map.png", "tiny-rp_at_5.png", "tiny.json", "tiny.md"]
    fetched = client.download_artifacts(run.info.run_id, "tiny.json", str(tmp_path / "fetched"))
    assert open(fetched).read() == out.read_text()


def test_cli_eval_logs_to_the_environment_tracking_uri_and_keeps_stdout_json(
    tiny, tiny_bert, mlflow_server, monkeypatch, capsys
):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    argv = [
        "eval",
        "--model",
        str(tiny_bert),
        "--dataset",
        str(tiny),
        "--set",
        "k=5",
        "--set",
        "cache_dir=null",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # MLflow's run URL goes to stderr, not into the JSON
    assert f"{mlflow_server}/#/experiments/" in captured.err
    assert "out" not in result and "plots" not in result
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(result["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).name == "workembed-eval"
    assert run.data.metrics == flatten_metrics(result["results"])
    # without --out the report files are written to a temporary folder and logged from there
    assert sorted(item.path for item in client.list_artifacts(run.info.run_id)) == [
        "eval-map.png",
        "eval-rp_at_5.png",
        "eval.json",
        "eval.md",
    ]
