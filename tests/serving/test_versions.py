"""ModelHolder: alias resolution, swaps after loading, failed loads, reconfiguration, the promotion gate;
multiplexed ids."""

import asyncio
import logging
import re

import pytest

from workembed.errors import InputError
from workembed.serving.config import ServeConfig
from workembed.serving.versions import (
    ModelHolder,
    ModelIdError,
    ModelLoadError,
    UngatedVersionError,
    UnknownModelError,
    multiplexed_uri,
)


@pytest.fixture(scope="module")
def versions(registry, tiny_bert, broken_model):
    """A registered model: 1 = tiny BERT with threshold 0.5, 2 = tiny BERT without, 3 = no model."""
    name = registry.new_name("holder")
    assert registry.register(name, tiny_bert, threshold=0.5) == "1"
    assert registry.register(name, tiny_bert) == "2"
    assert registry.register(name, broken_model) == "3"
    return name


@pytest.fixture
def champion(registry, versions, tmp_path_factory, monkeypatch):
    """``config(**changes)`` for ``models:/NAME@champion`` (alias reset to version 1)."""
    registry.set_alias(versions, "champion", "1")
    monkeypatch.setenv("WORKEMBED_MODEL_CACHE", str(tmp_path_factory.getbasetemp() / "holder-models"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry.url)  # mlflow_models.download_model needs it
    base = {
        "model": f"models:/{versions}@champion",
        "tracking_uri": registry.url,
        "esco": "builtin",
        "cache_dir": str(tmp_path_factory.getbasetemp() / "holder-serving"),
        "alias_poll_s": 3600,
    }
    return lambda **changes: ServeConfig.model_validate({**base, **changes})


def test_multiplexed_ids_select_versions_and_aliases_of_the_default_model():
    default = "models:/workembed@champion"
    assert multiplexed_uri("", default) == default
    assert multiplexed_uri("2", default) == "models:/workembed/2"
    assert multiplexed_uri(" 12 ", "models:/workembed/1") == "models:/workembed/12"
    assert multiplexed_uri("007", default) == "models:/workembed/7"  # one spelling per version
    assert multiplexed_uri("challenger", default) == "models:/workembed@challenger"
    assert multiplexed_uri("models:/workembed/7", default) == "models:/workembed/7"
    assert multiplexed_uri("models:/workembed@challenger", default) == "models:/workembed@challenger"


@pytest.mark.parametrize(
    ("model_id", "message"),
    [
        ("models:/other/7", "versions and aliases of 'workembed' only, not of 'other'"),
        ("models:/other@champion", "versions and aliases of 'workembed' only"),
        ("runs:/abc/model", "runs:/ URIs are not served"),
        ("runs:/x/../../etc", "runs:/ URIs are not served"),
        ("../secrets", "neither a version number"),
        ("models:/workembed/../../etc", "neither a version number"),
        ("models:/workembed/2/extra", "neither a version number"),
        ("/etc/passwd", "neither a version number"),
        ("no such model!", "neither a version number"),
        ("2\u00b2", "neither a version number"),  # a digit to str.isdigit, no version number
        ("x" * 400, "at most 300"),
    ],
)
def test_multiplexed_ids_outside_the_registered_model_are_bad_requests(model_id, message):
    with pytest.raises(ModelIdError, match=re.escape(message)) as raised:
        multiplexed_uri(model_id, "models:/workembed@champion")
    assert isinstance(raised.value, InputError)


def test_multiplexed_ids_need_a_registered_default_model():
    with pytest.raises(ModelIdError, match="'minilm' is not a registered model"):
        multiplexed_uri("2", "minilm")
    assert multiplexed_uri("", "minilm") == "minilm"


def test_alias_move_swaps_in_the_new_version_and_calls_in_flight_keep_theirs(registry, versions, champion):
    async def scenario():
        holder = ModelHolder(f"models:/{versions}@champion", champion())
        first = await holder.start()
        assert first.version == f"models:/{versions}/1" and holder.model is first
        assert await holder.refresh() is False  # the alias has not moved
        in_flight = holder.model
        registry.set_alias(versions, "champion", "2")
        assert await holder.refresh() is True
        holder.close()
        return holder, in_flight

    holder, in_flight = asyncio.run(scenario())
    assert holder.model.version == f"models:/{versions}/2"
    assert in_flight.version == f"models:/{versions}/1"  # the object a request took is left as it was
    assert in_flight.rank(["python"], "esco-skills", 2) == holder.model.rank(["python"], "esco-skills", 2)
    status = holder.status()
    assert status["uri"] == f"models:/{versions}@champion"
    assert status["version"] == f"models:/{versions}/2"
    assert status["info"] == {"dim": 32, "extraction_threshold": None, "runtime": "torch"}
    assert status["alias_poll_s"] == 3600 and status["last_poll"] is not None and status["error"] is None
    assert holder.closed


def test_polling_follows_the_alias_without_a_failed_call(registry, versions, champion):
    async def scenario():
        holder = ModelHolder(f"models:/{versions}@champion", champion(alias_poll_s=0.2))
        await holder.start()
        answered, failures = [], []

        async def keep_calling():
            while True:
                model = holder.model  # what a request does: take the model once, use it to the end
                try:
                    await asyncio.to_thread(model.rank, ["python developer"], "esco-skills", 3)
                    answered.append(model.version)
                except Exception as err:
                    failures.append(err)
                if answered and answered[-1].endswith("/2") and answered.count(answered[-1]) >= 3:
                    return

        caller = asyncio.create_task(keep_calling())
        await asyncio.sleep(0.3)
        await asyncio.to_thread(registry.set_alias, versions, "champion", "2")
        await asyncio.wait_for(caller, timeout=120)
        holder.close()
        await asyncio.sleep(0)  # let the cancellation land
        return holder, answered, failures

    holder, answered, failures = asyncio.run(scenario())
    assert failures == []
    assert answered[0] == f"models:/{versions}/1" and answered[-1] == f"models:/{versions}/2"
    assert answered == sorted(answered)  # once the new version answered, the old one never did again
    assert holder._poll_task is None


def test_a_version_that_cannot_load_leaves_the_served_one(registry, versions, champion):
    async def scenario():
        holder = ModelHolder(f"models:/{versions}@champion", champion())
        await holder.start()
        registry.set_alias(versions, "champion", "3")
        moved = await holder.refresh()
        failed = holder.status()
        registry.set_alias(versions, "champion", "1")
        back = await holder.refresh()
        holder.close()
        return holder, moved, failed, back

    holder, moved, failed, back = asyncio.run(scenario())
    assert moved is False and back is False
    assert failed["version"] == f"models:/{versions}/1"
    assert failed["error"]["version"] == f"models:/{versions}/3"
    assert "no config.json" in failed["error"]["message"]
    assert holder.status()["error"] is None  # the alias names the served version again
    assert holder.model.rank(["java"], "esco-skills", 1)[0][0]["id"]


def test_reconfigure_reloads_only_for_fields_the_model_depends_on(registry, versions, champion):
    async def scenario():
        holder = ModelHolder(f"models:/{versions}/1", champion())
        first = await holder.start()
        live = champion(alias_poll_s=5, batching={"max_batch_size": 4}, limits={"max_items": 8})
        kept = await holder.reconfigure(live)
        same = holder.model
        reloaded = await holder.reconfigure(champion(max_length=16))
        shorter = holder.model
        broken = await holder.reconfigure(champion(max_length=16, esco="/nonexistent/esco"))
        return holder, first, kept, same, reloaded, shorter, broken

    holder, first, kept, same, reloaded, shorter, broken = asyncio.run(scenario())
    assert kept is False and same is first and holder.polls is False
    assert reloaded is True and shorter is not first
    assert (first.encoder.max_length, shorter.encoder.max_length) == (128, 16)
    assert broken is False and holder.model is shorter  # a config that fails to load keeps the model
    assert holder.status()["error"]["version"] is None
    assert "/nonexistent/esco" in holder.status()["error"]["message"]


def test_an_unknown_alias_is_an_unknown_model(versions, champion):
    holder = ModelHolder(f"models:/{versions}@nobody", champion())
    with pytest.raises(UnknownModelError, match="holds alias 'nobody'"):
        asyncio.run(holder.start())
    assert holder.status()["version"] is None
    with pytest.raises(ModelLoadError, match="is not loaded"):
        holder.model  # noqa: B018


@pytest.fixture
def errors_logged():
    """The ERROR records of Serve's logger (which need not propagate to caplog's handler)."""
    records: list[logging.LogRecord] = []
    capture = logging.Handler(logging.ERROR)
    capture.emit = records.append
    logging.getLogger("ray.serve").addHandler(capture)
    yield records
    logging.getLogger("ray.serve").removeHandler(capture)


def test_an_alias_moved_past_the_gate_is_not_served(registry, versions, champion, errors_logged):
    uri = f"models:/{versions}@canary"
    registry.set_alias(versions, "canary", "1")  # through the gate: a promoted decision

    async def scenario():
        holder = ModelHolder(uri, champion())
        await holder.start()
        registry.set_alias(versions, "canary", "2", gated=False)  # by hand, past the gate
        by_hand = await holder.refresh()
        ungated = holder.status()
        registry.record_decision(versions, "2", "canary", "refused")
        refused = await holder.refresh()
        registry.record_decision(versions, "2", "canary", "promoted")
        promoted = await holder.refresh()
        holder.close()
        return holder, by_hand, ungated, refused, promoted

    holder, by_hand, ungated, refused, promoted = asyncio.run(scenario())
    assert (by_hand, refused, promoted) == (False, False, True)
    assert ungated["version"] == f"models:/{versions}/1"
    assert ungated["error"]["version"] == f"models:/{versions}/2"
    messages = [record.getMessage() for record in errors_logged]
    assert (
        f"model {uri}: alias 'canary' moved to version 2 without a passed gate "
        f"(workembed.promotion.canary: no decision); still serving models:/{versions}/1"
    ) in messages
    assert any("(workembed.promotion.canary: refused); still serving" in message for message in messages)
    assert holder.model.version == f"models:/{versions}/2" and holder.status()["error"] is None


def test_a_first_start_on_an_ungated_alias_fails(registry, versions, champion):
    registry.set_alias(versions, "nightly", "2", gated=False)
    holder = ModelHolder(f"models:/{versions}@nightly", champion())
    with pytest.raises(
        UngatedVersionError, match="moved to version 2 without a passed gate.*no version to serve"
    ):
        asyncio.run(holder.start())
    assert holder.status()["version"] is None


@pytest.fixture(scope="module")
def gated(registry, tiny_bert):
    """A registered model: 1 promoted to champion, 2 refused for it, 3 forced to canary, 4 no decision."""
    name = registry.new_name("gated")
    for version in ("1", "2", "3", "4"):
        assert registry.register(name, tiny_bert) == version
    registry.set_alias(name, "champion", "1")
    registry.record_decision(name, "2", "champion", "refused")
    registry.record_decision(name, "3", "canary", "forced")
    registry.set_alias(name, "canary", "4", gated=False)
    return name


def test_multiplexed_versions_are_served_only_after_the_gate(gated, champion):
    config = champion(model=f"models:/{gated}@champion")

    async def start(uri: str, gated_versions: bool = True) -> str:
        holder = ModelHolder(uri, config, gated_versions=gated_versions)
        try:
            return (await holder.start()).version
        finally:
            holder.close()

    assert asyncio.run(start(f"models:/{gated}/1")) == f"models:/{gated}/1"  # promoted
    assert asyncio.run(start(f"models:/{gated}/3")) == f"models:/{gated}/3"  # forced
    for refused in ("2", "4"):  # refused, no decision
        with pytest.raises(UngatedVersionError, match=f"version {refused} of '{gated}' has not passed"):
            asyncio.run(start(f"models:/{gated}/{refused}"))
    with pytest.raises(UnknownModelError, match=f"'{gated}' has no version 99"):
        asyncio.run(start(f"models:/{gated}/99"))
    with pytest.raises(UngatedVersionError, match="alias 'canary' moved to version 4 without a passed gate"):
        asyncio.run(start(f"models:/{gated}@canary"))  # an alias names a version that never passed for it
    # the configured default model is the operator's choice: a pinned version is served as it is
    assert asyncio.run(start(f"models:/{gated}/4", gated_versions=False)) == f"models:/{gated}/4"
