"""The promotion gate on hand-built datasets: a copy of minilm passes against minilm (equal metrics), the
tiny random BERT is refused and the alias stays, --force moves it (recorded as forced), rollback restores the
previous holder, and list/show report it all."""

from __future__ import annotations

import getpass
import json

import pytest
from mlflow import MlflowClient

from workembed.errors import RegistryError
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


def test_concurrent_promotions_one_wins_the_other_aborts_naming_the_winner(make_config, tiny_bert):
    """Two promotions of different versions to the same alias, both gated against the same holder: the one
    that moves the alias first wins; the other re-reads the alias before moving it, aborts naming the winner
    and records its void decision."""
    import threading

    from workembed.registry import ConcurrentPromotion
    from workembed.registry import promote as gated_promote
    from workembed.registry import tags as registry_tags

    config = make_config(calibration={"datasets": []})
    register_model(config, model_dir=tiny_bert)
    register_model(config, model_dir=tiny_bert)
    client = MlflowClient(config.tracking_uri)
    for version in ("1", "2"):
        client.set_model_version_tag(config.name, version, registry_tags.EXTRACTION_THRESHOLD, "0.5")

    both_read_the_holder = threading.Barrier(2, timeout=120)
    first_done = threading.Event()
    first_to_finish_its_gate = threading.Lock()
    calls: dict[str, int] = {}

    def gate_scores(model, gate, cache_dir):
        thread = threading.current_thread().name
        calls[thread] = calls.get(thread, 0) + 1
        if calls[thread] == 1:  # the holder's scores: both promotions have read the holder by now
            both_read_the_holder.wait()
        elif not first_to_finish_its_gate.acquire(blocking=False):
            assert first_done.wait(timeout=120)  # the later gate ends after the first promotion moved
        return {dataset: {"map": 1.0, "mrr": 1.0} for dataset in ("gate-jobs", "gate-skills")}

    outcomes: dict[str, object] = {}

    def run(version: str) -> None:
        try:
            outcomes[version] = gated_promote(config, version, "champion", gate_scores=gate_scores)
        except Exception as err:  # noqa: BLE001 - the outcome is asserted below
            outcomes[version] = err
        finally:
            first_done.set()

    threads = [threading.Thread(target=run, args=(v,), name=f"promote-{v}") for v in ("1", "2")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    won = [v for v, outcome in outcomes.items() if isinstance(outcome, dict)]
    lost = [v for v, outcome in outcomes.items() if isinstance(outcome, ConcurrentPromotion)]
    assert len(won) == 1 and len(lost) == 1, outcomes
    winner, loser = won[0], lost[0]
    error = outcomes[loser]
    assert f"moved to models:/{config.name}/{winner}" in str(error) and error.holder == winner
    assert isinstance(error, RegistryError)

    assert alias_holder(config, "champion") == winner
    assert outcomes[winner]["history"] == [winner]
    history = client.get_registered_model(config.name).tags["workembed.alias_history.champion"]
    assert json.loads(history) == [winner]
    assert decision(config, winner, "champion")["decision"] == "promoted"
    voided = decision(config, loser, "champion")
    assert voided["decision"] == "conflict" and voided["holder"] == "minilm"
    assert voided["reasons"] == [f"the alias moved to models:/{config.name}/{winner} while the gate ran"]


def test_the_decision_is_written_after_the_alias_moves(make_config, tiny_bert):
    """A promotion whose alias was moved meanwhile by hand leaves no ``promoted`` tag behind."""
    from workembed.registry import ConcurrentPromotion
    from workembed.registry import promote as gated_promote

    config = make_config(calibration={"datasets": []})
    register_model(config, model_dir=tiny_bert)
    register_model(config, model_dir=tiny_bert)
    client = MlflowClient(config.tracking_uri)
    client.set_model_version_tag(config.name, "1", "workembed.extraction_threshold", "0.5")

    def gate_scores(model, gate, cache_dir):
        if model == "minilm":  # while the gate runs, someone points the alias at version 2
            client.set_registered_model_alias(config.name, "champion", "2")
        return {"gate-jobs": {"map": 1.0, "mrr": 1.0}}

    with pytest.raises(ConcurrentPromotion, match=f"moved to models:/{config.name}/2"):
        gated_promote(config, "1", "champion", gate_scores=gate_scores)
    assert alias_holder(config, "champion") == "2"
    assert decision(config, "1", "champion")["decision"] == "conflict"
    assert "workembed.alias_history.champion" not in client.get_registered_model(config.name).tags
