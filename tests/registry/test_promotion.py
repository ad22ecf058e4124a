"""The promotion gate on hand-built datasets: a copy of minilm passes against minilm (equal metrics), the
tiny random BERT is refused and the alias stays, --force moves it (recorded as forced), rollback restores the
previous holder, and list/show report it all."""

from __future__ import annotations

import getpass
import json

import pytest
from mlflow import MlflowClient

from workembed.eval.runner import EvalConfig, evaluate
from workembed.models import resolve_model_path
from workembed.models.extraction_settings import read_extraction_settings
from workembed.models.mlflow_models import download_model
from workembed.registry import PromotionRefused, list_versions, rollback, show_version
from workembed.registry_commands import promote, register_model


@pytest.fixture(scope="module")
def registered(make_config, tiny_bert):
    """Versions of one model: 1 = minilm (copied), 2 = the tiny BERT (both calibrated), 3 = the tiny BERT
    without a threshold."""
    config = make_config()
    register_model(config, model_dir=resolve_model_path("minilm"))
    register_model(config, model_dir=tiny_bert)
    register_model(make_config(name=config.name, calibration={"datasets": []}), model_dir=tiny_bert)
    return config


def decision(config, version: str, alias: str) -> dict:
    tags = MlflowClient(config.tracking_uri).get_model_version(config.name, version).tags
    return json.loads(tags[f"workembed.promotion.{alias}"])


def alias_holder(config, alias: str) -> str | None:
    return MlflowClient(config.tracking_uri).get_registered_model(config.name).aliases.get(alias)


def test_first_holder_is_compared_with_minilm_and_a_copy_of_it_passes(registered):
    result = promote(registered, "1", "first")
    assert (result["decision"], result["holder"], result["reasons"]) == ("promoted", "minilm", [])
    assert [(row["dataset"], row["metric"]) for row in result["table"]] == [
        ("gate-jobs", "map"),
        ("gate-jobs", "mrr"),
        ("gate-skills", "map"),
        ("gate-skills", "mrr"),
    ]
    assert all(
        (row["holder"], row["candidate"], row["diff"], row["verdict"]) == (1.0, 1.0, 0.0, "ok")
        for row in result["table"]
    )
    assert alias_holder(registered, "first") == "1"
    recorded = decision(registered, "1", "first")
    assert recorded["by"] == getpass.getuser() and recorded["at"].endswith("+00:00")
    assert {key: recorded[key] for key in ("decision", "holder", "force", "table")} == {
        "decision": "promoted",
        "holder": "minilm",
        "force": False,
        "table": result["table"],
    }
    assert result["history"] == ["1"]


def test_a_worse_candidate_is_refused_and_the_alias_stays(registered):
    promote(registered, "1", "guard")
    with pytest.raises(PromotionRefused, match=r"\| gate-jobs \| map \| 1.0000 \|") as refused:
        promote(registered, "2", "guard")
    result = refused.value.result
    assert result["decision"] == "refused" and result["holder"] == f"models:/{registered.name}/1"
    candidate = download_model(f"models:/{registered.name}/2", registered.tracking_uri)
    tiny = evaluate(EvalConfig(datasets=registered.gate.datasets, model=str(candidate), cache_dir=None))
    for row in result["table"]:
        expected = round(tiny["results"][row["dataset"]][tiny["model"]][row["metric"]], 4)
        assert (row["holder"], row["candidate"], row["verdict"]) == (1.0, expected, "regressed")
        assert row["diff"] == round(expected - 1.0, 4)
    assert result["reasons"] == ["4 gate metric(s) dropped by more than 0.005"]
    assert alias_holder(registered, "guard") == "1"
    assert decision(registered, "2", "guard")["decision"] == "refused"


def test_force_moves_the_alias_and_rollback_restores_the_previous_holder(registered):
    promote(registered, "1", "forced")
    result = promote(registered, "2", "forced", force=True)
    assert (result["decision"], result["history"]) == ("forced", ["1", "2"])
    assert alias_holder(registered, "forced") == "2"
    assert decision(registered, "2", "forced")["force"] is True

    back = rollback(registered, "forced")
    assert (back["from"], back["to"], back["history"]) == ("2", "1", ["1"])
    assert alias_holder(registered, "forced") == "1"
    tags = MlflowClient(registered.tracking_uri).get_model_version(registered.name, "1").tags
    assert json.loads(tags["workembed.rollback.forced"])["from"] == "2"
    with pytest.raises(ValueError, match="no previous holder"):
        rollback(registered, "forced")

    to = rollback(registered, "forced", to="3")  # to a version that never held it: appended
    assert (to["from"], to["to"], to["history"]) == ("1", "3", ["1", "3"])
    assert rollback(registered, "forced", to="1")["history"] == ["1"]  # back to its last turn


def test_a_candidate_without_threshold_is_refused_unless_forced(registered):
    with pytest.raises(PromotionRefused, match="no calibrated extraction threshold") as refused:
        promote(registered, "3", "thresholdless")
    assert refused.value.result["table"] == []  # refused before any evaluation
    assert alias_holder(registered, "thresholdless") is None
    forced = promote(registered, "3", "thresholdless", force=True)
    assert forced["decision"] == "forced" and alias_holder(registered, "thresholdless") == "3"


def test_list_and_show(registered, mlflow_server):
    promote(registered, "1", "listed")
    listing = list_versions(registered)
    assert [v["version"] for v in listing["versions"]] == ["1", "2", "3"]
    assert listing["aliases"]["listed"] == "1"
    first, _, third = listing["versions"]
    assert "listed" in first["aliases"] and first["promotions"]["listed"] == "promoted"
    threshold = read_extraction_settings(
        download_model(f"models:/{registered.name}/1", mlflow_server)
    ).threshold
    assert (first["extraction_threshold"], third["extraction_threshold"]) == (threshold, None)
    assert first["source"] == str(resolve_model_path("minilm").resolve())

    shown = show_version(registered, "1")
    version = MlflowClient(mlflow_server).get_model_version(registered.name, "1")
    assert (shown["source"], shown["run_id"], shown["uri"]) == (
        version.source,
        version.run_id,
        f"models:/{registered.name}/1",
    )
    assert shown["tags"]["workembed.promotion.listed"]["decision"] == "promoted"
    assert shown["tags"]["workembed.extraction_threshold"] == str(threshold)
    with pytest.raises(FileNotFoundError, match="has no version 9"):
        show_version(registered, "9")
