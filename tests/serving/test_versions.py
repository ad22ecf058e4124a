"""ModelHolder: alias resolution, swaps after loading, failed loads, reconfiguration; multiplexed ids."""

import asyncio

import pytest

from workembed.serving.config import ServeConfig
from workembed.serving.versions import ModelHolder, ModelLoadError, UnknownModelError, multiplexed_uri


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


def test_multiplexed_ids_select_versions_of_the_default_model():
    default = "models:/workembed@champion"
    assert multiplexed_uri("", default) == default
    assert multiplexed_uri("2", default) == "models:/workembed/2"
    assert multiplexed_uri(" 12 ", "models:/workembed/1") == "models:/workembed/12"
    assert multiplexed_uri("challenger", default) == "models:/workembed@challenger"
    assert multiplexed_uri("models:/other/7", default) == "models:/other/7"
    assert multiplexed_uri("runs:/abc/model", default) == "runs:/abc/model"
    with pytest.raises(UnknownModelError, match="needs a registered default model"):
        multiplexed_uri("2", "minilm")
    with pytest.raises(UnknownModelError, match="neither a models:/ or runs:/ URI"):
        multiplexed_uri("../secrets", default)


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
