"""The model download cache under serving: least-recently-used eviction that spares served versions, one
download when processes fetch a version at once, and an alias served from the cache while MLflow is down
(``/healthz`` degraded, then ok once a poll reaches the registry again)."""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.serving.conftest import Registry
from workembed.models.mlflow_models import (
    COMPLETE_MARKER,
    RegistryUnavailableError,
    cache_entry,
    cached_alias,
    download_model,
    evict_downloads,
    record_alias,
)
from workembed.serving.config import ServeConfig
from workembed.serving.versions import ModelHolder, ModelIdError, UngatedVersionError

API_KEY = "cache-test-key-1234"


@pytest.fixture(scope="module")
def four_versions(registry, tiny_bert):
    """A registered model with versions 1-4 of the tiny BERT."""
    name = registry.new_name("cache")
    for version in ("1", "2", "3", "4"):
        assert registry.register(name, tiny_bert) == version
    return name


def config(tracking_uri: str, tmp_path: Path, **changes) -> ServeConfig:
    base = {
        "tracking_uri": tracking_uri,
        "esco": "builtin",
        "cache_dir": str(tmp_path / "serving"),
        "alias_poll_s": 3600,
        "auth": "disabled",
    }
    return ServeConfig.model_validate({**base, **changes})


def cached_versions(cache: Path) -> set[str]:
    return {
        (folder / COMPLETE_MARKER).read_text(encoding="utf-8").strip()
        for folder in cache.iterdir()
        if (folder / COMPLETE_MARKER).is_file()
    }


def test_least_recently_used_versions_are_evicted_but_not_protected_ones(registry, four_versions, tmp_path):
    cache = tmp_path / "models"
    uris = [f"models:/{four_versions}/{version}" for version in (1, 2, 3, 4)]
    folders = [download_model(uri, registry.url, cache) for uri in uris]
    for age, folder in zip((400, 300, 200, 100), folders, strict=True):  # 1 used longest ago, 4 last
        marker = cache_entry(folder, cache) / COMPLETE_MARKER
        os.utime(marker, (time.time() - age, time.time() - age))
    assert download_model(uris[0], registry.url, cache) == folders[0]  # a use: 1 is the most recent now
    record_alias(f"models:/{four_versions}@canary", uris[2], registry.url, cache)  # the fallback of an alias

    removed = evict_downloads(1, protect=[folders[3]], cache_dir=cache)  # 4 served

    assert removed == [uris[1]]  # kept: 1 (most recent), 3 (an alias's last version), 4 (served)
    assert cached_versions(cache) == {uris[0], uris[2], uris[3]}
    assert not folders[1].exists() and (folders[0] / "config.json").is_file()
    assert download_model(uris[1], registry.url, cache) == folders[1]  # fetched again when asked for
    assert evict_downloads(5, cache_dir=cache) == []


def test_holders_evict_beyond_max_cached_versions_and_keep_what_they_serve(
    registry, four_versions, tmp_path, monkeypatch
):
    cache = tmp_path / "models"
    monkeypatch.setenv("WORKEMBED_MODEL_CACHE", str(cache))
    settings = config(registry.url, tmp_path, max_cached_versions=1)
    uri = f"models:/{four_versions}/%d"

    async def scenario():
        first = ModelHolder(uri % 1, settings)
        await first.start()
        second = ModelHolder(uri % 2, settings)
        await second.start()
        both_served = cached_versions(cache)
        first.close()  # no longer served (Serve evicted it from the replica)
        third = ModelHolder(uri % 3, settings)
        await third.start()
        for holder in (second, third):
            holder.close()
        return both_served

    both_served = asyncio.run(scenario())
    assert both_served == {uri % 1, uri % 2}  # over the limit of 1, but both are served
    assert cached_versions(cache) == {uri % 2, uri % 3}  # 1 evicted: served no more, least recently used


DOWNLOAD = """
import json, logging, os, pathlib, sys, time
from workembed.models.mlflow_models import download_model
uri, tracking_uri, cache, go = sys.argv[1:]
downloads = []
handler = logging.Handler()
handler.emit = lambda record: downloads.append(record.getMessage())
logger = logging.getLogger("workembed.models.mlflow_models")
logger.addHandler(handler)
logger.setLevel(logging.INFO)
pathlib.Path(f"{go}.ready-{os.getpid()}").touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
folder = download_model(uri, tracking_uri, cache)
files = sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())
print(json.dumps({"folder": str(folder), "files": files, "downloads": downloads}))
"""


def test_two_processes_fetching_one_version_download_it_once(registry, four_versions, tiny_bert, tmp_path):
    cache, go = tmp_path / "models", tmp_path / "go"
    uri = f"models:/{four_versions}/4"
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", DOWNLOAD, uri, registry.url, str(cache), str(go)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    while len(list(tmp_path.glob("go.ready-*"))) < 2:  # both imported what they need
        if any(process.poll() is not None for process in processes):
            break
        time.sleep(0.05)
    go.touch()  # both start downloading at once
    results = [json.loads(process.communicate(timeout=300)[0]) for process in processes]

    assert [process.returncode for process in processes] == [0, 0]
    assert results[0]["folder"] == results[1]["folder"]
    expected = sorted(str(path.relative_to(tiny_bert)) for path in tiny_bert.rglob("*") if path.is_file())
    assert results[0]["files"] == results[1]["files"] == expected
    folder = Path(results[0]["folder"])
    assert (folder / "model.safetensors").read_bytes() == (tiny_bert / "model.safetensors").read_bytes()
    downloads = [message for result in results for message in result["downloads"]]
    assert len(downloads) == 1 and downloads[0].startswith(f"downloaded {uri} into ")
    assert sorted(path.name for path in cache.iterdir()) == sorted(
        [".locks", cache_entry(folder, cache).name]
    )


@pytest.fixture
def own_mlflow(tmp_path_factory, monkeypatch):
    """A tracking server of this test's own (it is stopped and started again), the same helper as the
    ``mlflow_server`` fixture's; ``(config, url)``. A call to it while it is down fails at once."""
    from workembed import services

    settings = services.ServicesConfig.model_validate(
        {
            "state_dir": str(tmp_path_factory.mktemp("own-mlflow")),
            "ray": {"enabled": False},
            "s3": {"enabled": False},
            "mlflow": {"port": free_port(), "artifacts": "local"},
        }
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    services.ensure_mlflow_credentials(settings)
    for key, value in services.mlflow_user_env(settings, "pipeline").items():  # this server's user
        monkeypatch.setenv(key, value)
    try:
        yield settings, services.up(settings)["mlflow"]
    finally:
        services.down(settings)


class Replica:
    """The part of a ``Models`` replica that ``/healthz`` reads: its default model holder."""

    def __init__(self, default: ModelHolder):
        from workembed.serving.app import ModelServer

        self.default = default
        self.health = ModelServer.health.__get__(self)


@pytest.mark.integration  # starts an MLflow server of its own
def test_an_alias_is_served_from_the_cache_while_mlflow_is_down(own_mlflow, tiny_bert, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from workembed import services
    from workembed.serving.app import create_api

    settings, url = own_mlflow
    monkeypatch.setenv("WORKEMBED_MODEL_CACHE", str(tmp_path / "models"))
    registry = Registry(url)
    name = registry.new_name("offline")
    assert registry.register(name, tiny_bert) == "1"
    registry.set_alias(name, "champion", "1")
    uri = f"models:/{name}@champion"
    serve_config = config(url, tmp_path, model=uri)

    async def serve_once() -> None:
        holder = ModelHolder(uri, serve_config)
        await holder.start()  # served once: downloaded, and the alias's version recorded
        holder.close()

    asyncio.run(serve_once())
    assert cached_alias(uri, url)["version"] == f"models:/{name}/1"
    services.down(settings)

    async def offline():
        holder = ModelHolder(uri, serve_config)
        model = await holder.start()
        api = TestClient(create_api(Replica(holder), None, serve_config))
        degraded, health = holder.status()["degraded"], api.get("/healthz")
        still_down = await holder.refresh()
        health_still = api.get("/healthz").json()["status"]
        services.up(settings)
        back = await holder.refresh()
        healthy = api.get("/healthz")
        holder.close()
        return holder, model, degraded, health, still_down, health_still, back, healthy

    holder, model, degraded, health, still_down, health_still, back, healthy = asyncio.run(offline())
    assert model.version == f"models:/{name}/1"
    assert degraded["version"] == f"models:/{name}/1" and "unavailable" in degraded["message"]
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert url not in health.text  # /healthz is open: it names no server
    assert (still_down, health_still) == (False, "degraded")
    assert back is False and holder.status()["degraded"] is None  # the registry answers: same version
    assert (healthy.status_code, healthy.json()) == (200, {"status": "ok"})


@pytest.mark.integration  # starts an MLflow server of its own
def test_no_cached_version_while_mlflow_is_down_is_a_clear_error(own_mlflow, tmp_path, monkeypatch):
    from workembed import services

    settings, url = own_mlflow
    services.down(settings)
    monkeypatch.setenv("WORKEMBED_MODEL_CACHE", str(tmp_path / "empty"))
    holder = ModelHolder("models:/never-served@champion", config(url, tmp_path))
    with pytest.raises(
        RegistryUnavailableError, match="no cached version of 'models:/never-served@champion'"
    ):
        asyncio.run(holder.start())


def test_bad_model_ids_are_400_and_ungated_versions_403(tmp_path):
    from workembed.serving.app import http_error

    bad = http_error(ModelIdError("model 'runs:/x/../../etc': runs:/ URIs are not served"))
    assert (bad.status_code, bad.detail) == (400, "model 'runs:/x/../../etc': runs:/ URIs are not served")
    ungated = http_error(UngatedVersionError("version 3 of 'w' has not passed the promotion gate", "3"))
    assert ungated.status_code == 403 and "promotion gate" in ungated.detail
