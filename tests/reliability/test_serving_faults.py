"""The served API under faults, on the real local stack (Ray, Serve, MLflow on 127.0.0.1): a promotion
swapping the version under 32 concurrent clients, MLflow killed and restarted while serving, a Serve replica
killed mid-load. Each test asserts what the clients saw; the load test records its latency percentiles in the
benchmark results (``tests/benchmarks/results/reliability-serving.json``)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml
from tests.conftest import free_port
from tests.reliability.conftest import wait_until
from tests.serving.conftest import Registry
from tests.serving.deploy import deploy_serve_config, replica_names, start_serve

from workembed.config import project_root

APP = "workembed"
API_KEY = "reliability-key-0123456789"
CLIENTS = 32
LOAD_S = 60.0
RANK = ("/v1/rank", {"texts": ["Python developer"], "space": "esco-skills", "k": 3})
EXTRACT = ("/v1/extract", {"sentences": ["You write Python code and maintain SQL databases."]})


@dataclass
class Answer:
    """One request as a client saw it."""

    route: str
    started: float
    ended: float
    status: int
    model: str | None


@dataclass
class Load:
    """Clients sending ``routes`` in turn until stopped; every answer is kept."""

    url: str
    routes: list[tuple[str, dict]]
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def client(self, index: int) -> None:
        with requests.Session() as session:
            session.headers["X-API-Key"] = API_KEY
            turn = index
            while not self.stop.is_set():
                route, body = self.routes[turn % len(self.routes)]
                turn += 1
                started = time.monotonic()
                try:
                    response = session.post(self.url + route, json=body, timeout=60)
                    status = response.status_code
                    model = response.json().get("model") if status == 200 else None
                except requests.RequestException:
                    status, model = 0, None  # no answer at all (connection reset, timeout)
                self.answers.append(Answer(route, started, time.monotonic(), status, model))

    def run(self, clients: int, during: Callable[[], None]) -> list[Answer]:
        """Run ``clients`` clients while ``during()`` runs; stop them when it returns."""
        with ThreadPoolExecutor(max_workers=clients) as pool:
            workers = [pool.submit(self.client, index) for index in range(clients)]
            try:
                during()
            finally:
                self.stop.set()
                for worker in workers:
                    worker.result()
        return self.answers

    def models_since(self, moment: float) -> list[str | None]:
        return [answer.model for answer in self.answers if answer.started >= moment]


@pytest.fixture
def serve_app(ray_session, tmp_path):
    """``deploy(model, tracking_uri, replicas=1)``: serve/config.yaml with test args on a local Serve (alias
    poll 0.5 s, API key set); the URL. Serve is shut down at the end."""
    from ray import serve

    port = free_port()

    def deploy(model: str, tracking_uri: str, replicas: int = 1) -> str:
        document = yaml.safe_load((project_root() / "serve" / "config.yaml").read_text(encoding="utf-8"))
        app = document["applications"][0]
        app["args"].update(
            model=model,
            tracking_uri=tracking_uri,
            alias_poll_s=0.5,
            esco="builtin",
            cache_dir=str(tmp_path / "serving"),
            profiles={**app["args"]["profiles"], "qdrant_path": str(tmp_path / "qdrant")},
        )
        app["runtime_env"] = {
            "env_vars": {"WORKEMBED_MODEL_CACHE": str(tmp_path / "models"), "WORKEMBED_API_KEY": API_KEY}
        }
        for deployment in app["deployments"]:
            if deployment["name"] == "Models":
                deployment["num_replicas"] = replicas
        start_serve(document, port)
        deploy_serve_config(document, APP)
        return f"http://127.0.0.1:{port}"

    yield deploy
    serve.shutdown()


def promote_through_the_gate(url: str, name: str, version: str) -> dict:
    """Promote ``version`` to ``champion`` with the registry's promotion (compare-and-set, decision tag);
    the gate's scores are equal for every model, so it passes."""
    from mlflow import MlflowClient

    from workembed.registry import RegistryConfig, promote, tags

    # the version's folder holds extraction.json (threshold 0.5); registration would also have tagged it
    MlflowClient(url).set_model_version_tag(name, version, tags.EXTRACTION_THRESHOLD, "0.5")
    config = RegistryConfig(
        tracking_uri=url, name=name, gate={"datasets": ["gate"]}, calibration={"datasets": []}
    )
    return promote(config, version, "champion", gate_scores=lambda *_: {"gate": {"map": 1.0, "mrr": 1.0}})


def percentile_ms(answers: list[Answer], q: float) -> float:
    return round(float(np.percentile([1000 * (a.ended - a.started) for a in answers], q)), 1)


@pytest.mark.slow
def test_a_promotion_under_load_fails_no_request(mlflow_server, serve_app, tiny_bert):
    from tests.benchmarks.common import save

    registry = Registry(mlflow_server)
    name = registry.new_name("reliability-load")
    assert registry.register(name, tiny_bert, threshold=0.5) == "1"
    assert registry.register(name, tiny_bert, threshold=0.5) == "2"
    promote_through_the_gate(mlflow_server, name, "1")
    url = serve_app(f"models:/{name}@champion", mlflow_server)
    load = Load(url, [RANK, EXTRACT])
    promoted_at: list[float] = []

    def promote_midway() -> None:
        time.sleep(LOAD_S / 3)
        assert promote_through_the_gate(mlflow_server, name, "2")["decision"] == "promoted"
        promoted_at.append(time.monotonic())
        time.sleep(LOAD_S * 2 / 3)

    answers = load.run(CLIENTS, promote_midway)
    failed = [answer for answer in answers if answer.status != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    old, new = f"models:/{name}/1", f"models:/{name}/2"
    assert {answer.model for answer in answers} == {old, new}
    last = sorted(answers, key=lambda answer: answer.started)[-CLIENTS:]
    assert {answer.model for answer in last} == {new}  # the swap completed under load
    assert all(answer.model == old for answer in answers if answer.ended < promoted_at[0])
    save(
        "reliability-serving",
        {
            "scenario": f"{CLIENTS} clients for {LOAD_S:g} s on /v1/rank and /v1/extract (tiny BERT), "
            "champion promoted from version 1 to 2 a third of the way in",
            "requests": len(answers),
            "failed": len(failed),
            "throughput_rps": round(len(answers) / LOAD_S, 1),
            "latency_ms": {f"p{q}": percentile_ms(answers, q) for q in (50, 90, 99)},
        },
    )


@pytest.mark.slow
def test_mlflow_killed_while_serving_then_the_alias_poll_resumes(
    serve_app, service_processes, tiny_bert, tmp_path
):
    port = free_port()
    mlflow = service_processes(
        "mlflow",
        [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'mlflow.db'}",
            "--artifacts-destination",
            str(tmp_path / "mlflow-artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        port,
        tmp_path / "mlflow.log",
        probe="/health",
        startup_s=120,
    ).start()
    registry = Registry(mlflow.url)
    name = registry.new_name("reliability-mlflow")
    assert registry.register(name, tiny_bert, threshold=0.5) == "1"
    promote_through_the_gate(mlflow.url, name, "1")
    url = serve_app(f"models:/{name}@champion", mlflow.url)
    load = Load(url, [RANK, EXTRACT])
    moments: dict[str, float] = {}

    def kill_and_restart() -> None:
        time.sleep(3)
        mlflow.kill()
        moments["killed"] = time.monotonic()
        wait_until(lambda: model_error(url), 60, "the alias poll to report MLflow unreachable")
        time.sleep(5)  # ten alias polls fail while requests go on
        mlflow.start()
        moments["restarted"] = time.monotonic()
        assert registry.register(name, tiny_bert, threshold=0.5) == "2"
        promote_through_the_gate(mlflow.url, name, "2")
        wait_until(
            lambda: load.models_since(time.monotonic() - 1)[-4:] == [f"models:/{name}/2"] * 4,
            180,
            "the restarted MLflow's new champion to be served",
            every_s=0.2,
        )

    answers = load.run(8, kill_and_restart)
    failed = [answer for answer in answers if answer.status != 200]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed: {failed[:5]}"
    while_down = [a for a in answers if moments["killed"] <= a.started and a.ended <= moments["restarted"]]
    assert len(while_down) > 10 and {a.model for a in while_down} == {f"models:/{name}/1"}
    assert model_error(url) is None  # a poll succeeded again: the error is cleared


def model_error(url: str) -> dict | None:
    """The default model's recorded error in ``GET /v1/models`` (None while the alias polls succeed)."""
    response = requests.get(url + "/v1/models", headers={"X-API-Key": API_KEY}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["default"]["error"]


@pytest.mark.slow
def test_a_replica_killed_mid_load_fails_only_its_requests_in_flight(mlflow_server, serve_app, tiny_bert):
    import ray

    registry = Registry(mlflow_server)
    name = registry.new_name("reliability-replica")
    assert registry.register(name, tiny_bert, threshold=0.5) == "1"
    promote_through_the_gate(mlflow_server, name, "1")
    url = serve_app(f"models:/{name}@champion", mlflow_server, replicas=2)
    before = replica_names(APP, "Models")
    assert len(before) == 2
    victim = sorted(before)[0]
    load = Load(url, [RANK])
    moments: dict[str, float] = {}

    def kill_one_replica() -> None:
        time.sleep(5)
        moments["killed"] = time.monotonic()
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
        wait_until(
            lambda: len(replica_names(APP, "Models") - {victim}) == 2,
            180,
            "Serve to replace the killed replica",
            every_s=0.2,
        )
        time.sleep(3)  # the new replica takes requests too

    answers = load.run(8, kill_one_replica)
    failed = [answer for answer in answers if answer.status != 200]
    in_flight = [a for a in failed if a.started <= moments["killed"] <= a.ended]
    assert failed == in_flight, f"failed after the kill: {[a for a in failed if a not in in_flight][:5]}"
    assert len(failed) <= 8  # at most one request per client was in flight
    after = replica_names(APP, "Models")
    assert victim not in after and len(after) == 2
    assert sum(a.started > moments["killed"] for a in answers) > 10
