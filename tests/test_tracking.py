"""MLflow key names, metric flattening and logging a run to a real MLflow server."""

from __future__ import annotations

import json
import math

import pytest

from workembed.tracking import flatten_metrics, log_to_mlflow, metric_key


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("RP@5", "RP_at_5"),
        ("skillskape-dev/minilm/RP@5", "skillskape-dev/minilm/RP_at_5"),
        ("melo nld:q/bm25/ndcg@10", "melo_nld_q/bm25/ndcg_at_10"),
        ("../x//y.z", "_/x/_/y.z"),
        ("/abs/mrr", "_/abs/mrr"),
        ("compétence/map", "compétence/map"),
    ],
)
def test_metric_keys_are_accepted_by_mlflow(name, key):
    from mlflow.utils.validation import path_not_unique, validate_param_and_metric_name

    assert metric_key(name) == key
    assert validate_param_and_metric_name(key) and not path_not_unique(key)


def test_flatten_a_hand_built_eval_report():
    results = {
        "skillskape-dev": {
            "minilm": {"n_queries": 3, "map": 0.5, "rp@5": 0.25, "ndcg@10": math.nan, "seconds": 1.5},
            "bm25": {"n_queries": 3, "map": None, "rp@5": 1.0, "note": "text", "cached": True},
        },
        "melo/nl": {"tfidf": {"mrr": 0.125}},
    }
    assert flatten_metrics(results) == {
        "skillskape-dev/minilm/n_queries": 3.0,
        "skillskape-dev/minilm/map": 0.5,
        "skillskape-dev/minilm/rp_at_5": 0.25,
        "skillskape-dev/minilm/seconds": 1.5,
        "skillskape-dev/bm25/n_queries": 3.0,
        "skillskape-dev/bm25/rp_at_5": 1.0,
        "melo_nl/tfidf/mrr": 0.125,
    }
    assert flatten_metrics({"sys": {"map": 0.5}}, prefix="eval/dev") == {"eval/dev/sys/map": 0.5}
    with pytest.raises(ValueError, match="two metrics become the MLflow key 'd/rp_at_5'"):
        flatten_metrics({"d": {"rp@5": 0.1, "rp_at_5": 0.2}})


def test_log_to_mlflow_round_trip(mlflow_server, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    global_uri = mlflow.get_tracking_uri()
    (tmp_path / "report.json").write_text('{"map": 0.5}\n')
    (tmp_path / "notes.md").write_text("# notes\n")
    run_id = log_to_mlflow(
        mlflow_server,
        "tracking-test",
        run_name="round-trip",
        params={"model": "minilm", "k": 100, "cache_dir": None, "datasets": ["a", "b"], "esco": {"v": "1.2"}},
        metrics={"tiny/minilm/RP@5": 0.75, "tiny/minilm/map": 0.5, "tiny/bm25/map": math.nan, "x": None},
        artifacts=[tmp_path / "report.json", tmp_path / "notes.md"],
        tags={"stage": "eval"},
    )
    assert mlflow.get_tracking_uri() == global_uri  # the per-call URI did not leak into global state

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "round-trip"
    assert client.get_experiment(run.info.experiment_id).name == "tracking-test"
    assert run.data.metrics == {"tiny/minilm/RP_at_5": 0.75, "tiny/minilm/map": 0.5}
    assert run.data.params == {
        "model": "minilm",
        "k": "100",
        "cache_dir": "null",
        "datasets": json.dumps(["a", "b"]),
        "esco.v": "1.2",
    }
    assert run.data.tags["stage"] == "eval"
    assert sorted(item.path for item in client.list_artifacts(run_id)) == ["notes.md", "report.json"]
    fetched = client.download_artifacts(run_id, "report.json", str(tmp_path / "back"))
    assert open(fetched).read() == '{"map": 0.5}\n'

    second = log_to_mlflow(mlflow_server, "tracking-test", "again", {}, {"m": 1.0}, [])
    assert client.get_run(second).info.experiment_id == run.info.experiment_id  # the experiment is reused


@pytest.mark.parametrize(
    ("metrics", "artifacts", "error", "message"),
    [
        ({"a@b": 1.0, "a_at_b": 2.0}, [], ValueError, "'a@b' and 'a_at_b' both become the MLflow key"),
        ({"m": "high"}, [], ValueError, "metric 'm' must be a number, got str"),
        ({"m": 1.0}, ["missing.json"], FileNotFoundError, "artifacts to log are not files: .*missing.json"),
    ],
)
def test_bad_input_is_rejected_before_a_run_is_created(
    mlflow_server, tmp_path, metrics, artifacts, error, message
):
    from mlflow import MlflowClient

    with pytest.raises(error, match=message):
        log_to_mlflow(mlflow_server, "never-created", "bad", {}, metrics, [tmp_path / a for a in artifacts])
    assert MlflowClient(tracking_uri=mlflow_server).get_experiment_by_name("never-created") is None
