"""The Serve application end to end: serve/config.yaml deployed on a local Serve with versions registered
in a real MLflow server; every route, validation, auth, multiplexing by the proxy's header, live
reconfiguration (models, batching and the HTTP API's limits), an alias move under load."""

import copy
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import free_port
from tests.serving.deploy import deploy_serve_config, replica_names, start_serve
from workembed.config import project_root

APP = "workembed"
JSON = {"Content-Type": "application/json"}
API_KEY = "test-key-1234"
PYTHON = "http://data.europa.eu/esco/skill/ccd0a1d9-afda-43d9-b901-96344886e14d"
JAVA = "http://data.europa.eu/esco/skill/19a8293b-8e95-4de3-983f-77484079c389"
WEB_DEVELOPER = "http://data.europa.eu/esco/occupation/c40a2919-48a9-40ea-b506-1f34f693496d"
DATABASE_DEVELOPER = "http://data.europa.eu/esco/occupation/b11e1742-5e28-4270-b081-b0193d85ee7d"
PROFILES = [
    {
        "id": "p-python",
        "text": "Senior Python developer building REST APIs with Django",
        "category": "software",
        "language": "en",
        "location": "Berlin",
        "payload": {"rate": 80, "remote": True},
    },
    {
        "id": "p-nurse",
        "text": "Registered nurse with intensive care experience",
        "category": "health",
        "language": "en",
        "location": "Paris",
        "payload": {"rate": 40, "remote": False},
    },
    {
        "id": "p-java",
        "text": "Java backend engineer, Spring Boot and microservices",
        "category": "software",
        "language": "de",
        "location": "Berlin",
        "payload": {"rate": 70, "remote": False},
    },
]


@dataclass
class Served:
    """The running application: its URL, the registered model name, the deployed Serve config."""

    url: str
    name: str
    document: dict

    def version(self, number: int) -> str:
        return f"models:/{self.name}/{number}"

    def call(self, method: str, path: str, key: str | None = API_KEY, model: str | None = None, **kwargs):
        headers = {**kwargs.pop("headers", {}), **({"X-API-Key": key} if key else {})}
        if model is not None:
            headers["serve_multiplexed_model_id"] = model
        return requests.request(method, self.url + path, headers=headers, timeout=120, **kwargs)

    def post(self, path: str, body, **kwargs):
        return self.call("POST", path, json=body, **kwargs)

    def models(self) -> dict:
        response = self.call("GET", "/v1/models")
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def served(ray_session, registry, tiny_bert, tmp_path_factory):
    """serve/config.yaml with test args: champion = MiniLM (v1, threshold 0.5), challenger = tiny BERT
    (v2, threshold 0.5), v3 = tiny BERT without threshold (forced through the gate), v4 never gated; alias
    poll 0.5 s; API key set."""
    from ray import serve

    from workembed.models import resolve_model_path

    name = registry.new_name("app")
    assert registry.register(name, resolve_model_path("minilm"), threshold=0.5) == "1"
    assert registry.register(name, tiny_bert, threshold=0.5) == "2"
    assert registry.register(name, tiny_bert) == "3"
    registry.set_alias(name, "champion", "1")
    registry.set_alias(name, "challenger", "2")
    registry.record_decision(name, "3", "canary", "forced")  # a multiplexed version must have passed the gate
    assert registry.register(name, tiny_bert) == "4"  # never gated: not served

    state = tmp_path_factory.mktemp("serve-app")
    document = yaml.safe_load((project_root() / "serve" / "config.yaml").read_text(encoding="utf-8"))
    app = document["applications"][0]
    app["args"].update(
        model=f"models:/{name}@champion",
        tracking_uri=registry.url,
        alias_poll_s=0.5,
        esco="builtin",
        cache_dir=str(state / "serving"),
        profiles={**app["args"]["profiles"], "qdrant_path": str(state / "qdrant")},
    )
    app["runtime_env"] = {
        "env_vars": {
            "MLFLOW_TRACKING_URI": registry.url,
            "WORKEMBED_MODEL_CACHE": str(state / "models"),
            "WORKEMBED_API_KEY": API_KEY,
        }
    }
    port = free_port()
    start_serve(document, port)
    try:
        deploy_serve_config(document, APP)
        yield Served(f"http://127.0.0.1:{port}", name, document)
    finally:
        serve.shutdown()


def pluck(ranked: list[list[dict]], key: str) -> list[list]:
    return [[hit[key] for hit in hits] for hits in ranked]


def test_a_batch_of_mixed_calls_answers_each_call_as_alone(tiny_bert, tmp_path):
    from workembed.serving.app import EncoderCall, run_batch
    from workembed.serving.config import ServeConfig
    from workembed.serving.runtime import NoThresholdError, ServedModel, UnknownSpaceError

    model = ServedModel(str(tiny_bert), ServeConfig(esco="builtin", cache_dir=str(tmp_path)))
    calls = [
        EncoderCall(model, "rank", ("python", "java"), space="esco-skills", k=2),
        EncoderCall(model, "embed", ("registered nurse",)),
        EncoderCall(model, "rank", ("sql databases",), space="esco-skills", k=5),
        EncoderCall(model, "rank", ("web developer",), space="esco-occupations", k=1),
        EncoderCall(model, "embed", ("python developer",), tokens=True),
        EncoderCall(model, "rank", ("python",), space="nope", k=1),
        EncoderCall(model, "extract", ("python",)),
        EncoderCall(model, "embed", ("java", "sql")),
    ]
    results = run_batch(calls)
    assert len(results) == len(calls)
    for call, result in zip(calls, results, strict=True):
        if call.space == "nope":
            assert isinstance(result, UnknownSpaceError)
        elif call.op == "extract":
            assert isinstance(result, NoThresholdError)
        elif call.op == "rank":
            alone = model.rank(list(call.texts), call.space, call.k)
            assert [[hit["id"] for hit in hits] for hits in result] == [
                [hit["id"] for hit in hits] for hits in alone
            ]
            np.testing.assert_allclose(
                [[hit["score"] for hit in hits] for hits in result],
                [[hit["score"] for hit in hits] for hits in alone],
                atol=1e-5,
            )
        else:
            alone = model.embed(list(call.texts), tokens=call.tokens)
            assert len(result) == len(call.texts)
            np.testing.assert_allclose(
                [row["embedding"] for row in result], [row["embedding"] for row in alone], atol=1e-5
            )
            if call.tokens:
                assert [t["token"] for t in result[0]["tokens"]] == ["python", "developer"]


def test_the_live_api_hands_requests_to_the_app_set_last():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from workembed.serving.app import LiveApi

    def answering(name: str) -> FastAPI:
        app = FastAPI()
        app.get("/which")(lambda: {"app": name})
        return app

    live = LiveApi()
    live.api = answering("first")
    with TestClient(live) as client:  # the lifespan's startup and shutdown are answered by LiveApi
        assert client.get("/which").json() == {"app": "first"}
        live.api = answering("second")
        assert client.get("/which").json() == {"app": "second"}
        assert client.get("/nowhere").status_code == 404


class FailingServer:
    """A model server (as :func:`create_api` uses it) whose every call raises ``error``: a bug or a user error
    met while answering a request."""

    def __init__(self, error: Exception):
        self.error = error

    async def served(self):
        raise self.error

    def describe(self):
        raise self.error


@pytest.mark.parametrize("where", ["/v1/embed", "/v1/models"])  # through `answer`, and raised in the route
def test_a_bug_is_answered_500_with_a_request_id_and_a_user_error_4xx(tmp_path, monkeypatch, where):
    from fastapi.testclient import TestClient

    from workembed.errors import InputError, NotFoundError
    from workembed.serving.app import REQUEST_ID_HEADER, create_api
    from workembed.serving.config import ServeConfig
    from workembed.serving.schemas import RequestError

    monkeypatch.setenv("WORKEMBED_API_KEY", API_KEY)
    config = ServeConfig(esco="builtin", cache_dir=str(tmp_path))

    def call(error: Exception):
        client = TestClient(create_api(FailingServer(error), None, config), raise_server_exceptions=False)
        client.headers["X-API-Key"] = API_KEY
        if where == "/v1/models":
            return client.get(where)
        return client.post(where, json={"texts": ["Python"]})

    records: list[logging.LogRecord] = []
    capture = logging.Handler(logging.ERROR)
    capture.emit = records.append  # Serve's logger need not propagate to caplog's handler
    logging.getLogger("ray.serve").addHandler(capture)
    try:
        bug = call(ValueError("operands could not be broadcast together"))  # a ValueError too is a bug
    finally:
        logging.getLogger("ray.serve").removeHandler(capture)
    assert bug.status_code == 500
    request_id = bug.headers[REQUEST_ID_HEADER]
    assert bug.json() == {"detail": f"internal error, request id {request_id}", "request_id": request_id}
    assert "broadcast" not in bug.text  # the cause is logged, not answered
    logged = [record for record in records if getattr(record, "request_id", None) == request_id]
    assert len(logged) == 1 and request_id in logged[0].getMessage() and logged[0].exc_info is not None

    user_error = call(RequestError("filter 'salary' is unknown"))
    assert user_error.status_code == 422
    assert user_error.json() == {
        "detail": "filter 'salary' is unknown",
        "request_id": user_error.headers[REQUEST_ID_HEADER],
    }
    internal = call(InputError("a record of the space file is invalid"))  # not the request's fault
    assert internal.status_code == 500 and "record" not in internal.text
    assert call(NotFoundError("model '9' not found")).status_code == 404


def replica_states() -> dict[str, dict]:
    from ray import serve

    deployments = serve.status().applications[APP].deployments
    return {name: dict(deployment.replica_states) for name, deployment in deployments.items()}


# ------------------------------------------------------------------------------------ tests


def test_healthz_and_docs_are_open_and_v1_routes_need_the_key(served):
    assert served.call("GET", "/healthz", key=None).json() == {"status": "ok"}
    assert served.call("GET", "/docs", key=None).status_code == 200
    paths = served.call("GET", "/openapi.json", key=None).json()["paths"]
    assert {
        "/v1/embed",
        "/v1/rank",
        "/v1/extract",
        "/v1/normalize/title",
        "/v1/match",
        "/v1/profiles",
    } <= set(paths)
    for key in (None, "wrong-key"):
        refused = served.post("/v1/embed", {"texts": ["Python"]}, key=key)
        assert refused.status_code == 401
        assert "X-API-Key" in refused.json()["detail"]
        assert refused.json()["request_id"] == refused.headers["X-Request-ID"]  # one id, Serve's
        assert served.call("GET", "/v1/models", key=key).status_code == 401
    assert served.post("/v1/embed", {"texts": ["Python"]}).status_code == 200


def test_embed_rank_and_titles_answer_with_the_champion(served, minilm):
    embedded = served.post("/v1/embed", {"texts": ["Python", "registered nurse"]}).json()
    assert embedded["model"] == served.version(1)
    vectors = np.array([row["embedding"] for row in embedded["embeddings"]])
    np.testing.assert_allclose(vectors, minilm.embed(["Python", "registered nurse"]), atol=1e-5)

    tokens = served.post("/v1/embed", {"texts": ["Python developer"], "tokens": True}).json()
    assert [(t["token"], t["start"], t["end"]) for t in tokens["embeddings"][0]["tokens"]] == [
        ("python", 0, 6),
        ("developer", 7, 16),
    ]

    ranked = served.post("/v1/rank", {"texts": ["Python", "Java"], "space": "esco-skills", "k": 3}).json()
    assert ranked["model"] == served.version(1) and ranked["space"] == "esco-skills"
    assert [len(hits) for hits in ranked["results"]] == [3, 3]
    assert [hits[0]["id"] for hits in ranked["results"]] == [PYTHON, JAVA]
    assert ranked["results"][0][0]["label"] == "Python (computer programming)"
    scores = [hit["score"] for hit in ranked["results"][0]]
    assert scores == sorted(scores, reverse=True)

    titles = served.post("/v1/normalize/title", {"titles": ["web developer", "database developer"], "k": 2})
    assert [hits[0]["id"] for hits in titles.json()["results"]] == [WEB_DEVELOPER, DATABASE_DEVELOPER]
    assert titles.json()["results"][0][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_extract_gives_skills_with_their_spans(served):
    sentence = "Experience with Python and Java is required."
    found = served.post("/v1/extract", {"sentences": [sentence]}).json()
    assert found["model"] == served.version(1) and found["threshold"] == 0.5
    skills = found["sentences"][0]["skills"]
    assert [skill["id"] for skill in skills] == [PYTHON, JAVA]
    assert skills[0]["spans"] == [{"start": 16, "end": 22, "text": "Python"}]
    assert all(skill["score"] >= 0.5 for skill in skills)

    ad = "Backend developer wanted.\n\n" + sentence
    from_ad = served.post("/v1/extract", {"text": ad}).json()["sentences"]
    located = [entry for entry in from_ad if entry["sentence"] == sentence]
    assert len(located) == 1
    assert ad[located[0]["start"] : located[0]["end"]] == sentence
    assert [skill["id"] for skill in located[0]["skills"]] == [PYTHON, JAVA]


def test_extract_is_refused_for_a_version_without_threshold(served):
    refused = served.post("/v1/extract", {"sentences": ["Python"]}, model="3")
    assert refused.status_code == 409
    assert "no calibrated extraction threshold" in refused.json()["detail"]
    assert served.version(3) in refused.json()["detail"]


@pytest.mark.parametrize(
    ("path", "body", "location"),
    [
        ("/v1/embed", {"texts": []}, ["body", "texts"]),
        ("/v1/embed", {"texts": ["   "]}, ["body", "texts", 0]),
        ("/v1/embed", {"texts": ["x" * 2001]}, ["body", "texts", 0]),
        ("/v1/embed", {"texts": "Python"}, ["body", "texts"]),
        ("/v1/embed", {"texts": ["Python"], "colour": "red"}, ["body", "colour"]),
        ("/v1/rank", {"texts": ["Python"], "space": "esco-skills", "k": 0}, ["body", "k"]),
        ("/v1/rank", {"texts": ["Python"], "space": "esco-skills", "k": 101}, ["body", "k"]),
        ("/v1/rank", {"texts": ["Python"] * 65, "space": "esco-skills"}, ["body", "texts"]),
        ("/v1/normalize/title", {"titles": [1]}, ["body", "titles", 0]),
        ("/v1/profiles", {"profiles": [{"id": "a"}]}, ["body", "profiles", 0, "text"]),
    ],
)
def test_invalid_requests_are_422_naming_the_field(served, path, body, location):
    response = served.post(path, body)
    assert response.status_code == 422
    assert [problem["loc"] for problem in response.json()["detail"]] == [location]


def test_other_bad_requests_are_answered_with_a_message(served):
    neither = served.post("/v1/extract", {})
    assert neither.status_code == 422 and "exactly one of 'text' and 'sentences'" in neither.text
    bad_filter = served.post("/v1/match", {"document": "Python", "filters": {"salary": 1}})
    assert bad_filter.status_code == 422 and "unknown filter 'salary'" in bad_filter.text
    not_json = served.call(
        "POST", "/v1/embed", data="{not json", headers={"Content-Type": "application/json"}
    )
    assert not_json.status_code == 422 and not_json.json()["detail"][0]["type"] == "json_invalid"
    space = served.post("/v1/rank", {"texts": ["Python"], "space": "nope"})
    assert space.status_code == 404 and "unknown target space 'nope'" in space.json()["detail"]
    missing = served.post("/v1/embed", {"texts": ["Python"]}, model="99")
    assert missing.status_code == 404, missing.text
    assert "has no version 99" in missing.json()["detail"]
    for model in ("no such model!", "runs:/x/../../etc", "models:/other/1"):
        bad = served.post("/v1/embed", {"texts": ["Python"]}, model=model)
        assert bad.status_code == 400, bad.text
        assert model in bad.json()["detail"]
    ungated = served.post("/v1/embed", {"texts": ["Python"]}, model="4")
    assert ungated.status_code == 403 and "has not passed the promotion gate" in ungated.json()["detail"]


def test_multiplexed_versions_are_selected_by_header(served):
    texts = {"texts": ["Python"]}
    assert served.post("/v1/embed", texts).json()["model"] == served.version(1)
    for model, version in (("2", 2), ("challenger", 2), (served.version(3), 3), ("champion", 1)):
        answer = served.post("/v1/embed", texts, model=model).json()
        assert answer["model"] == served.version(version)
        assert len(answer["embeddings"][0]["embedding"]) == (384 if version == 1 else 32)
    hyphenated = served.post("/v1/embed", texts, headers={"serve-multiplexed-model-id": "2"}).json()
    assert hyphenated["model"] == served.version(2)  # the proxy reads either spelling of the header
    described = served.models()
    assert described["default"]["uri"] == f"models:/{served.name}@champion"
    assert described["default"]["version"] == served.version(1)
    assert described["default"]["info"]["extraction_threshold"] == 0.5
    assert described["default"]["last_poll"] is not None and described["default"]["error"] is None
    loaded = {entry["uri"]: entry["version"] for entry in described["multiplexed"]}
    assert loaded == {
        served.version(2): served.version(2),
        f"models:/{served.name}@challenger": served.version(2),
        served.version(3): served.version(3),
    }
    assert described["spaces"] == ["esco-skills", "esco-occupations"]
    assert not {"replica", "pid"} & set(described)  # nothing of the replica's process reaches a client


def test_profiles_are_upserted_and_matched_with_filters(served, minilm):
    stored = served.post("/v1/profiles", {"profiles": PROFILES}).json()
    assert stored == {"model": served.version(1), "upserted": 3, "total": 3}
    again = served.post("/v1/profiles", {"profiles": PROFILES[:1]}).json()
    assert again["total"] == 3  # the same id replaces its profile

    project = "We need a Python developer for our Django web API"
    matched = served.post("/v1/match", {"document": project, "k": 3}).json()
    assert matched["model"] == served.version(1)
    profile_vectors = minilm.embed([profile["text"] for profile in PROFILES])
    expected = profile_vectors @ minilm.embed([project])[0]
    order = [PROFILES[i]["id"] for i in np.argsort(-expected)]
    assert [hit["id"] for hit in matched["results"]] == order
    assert order[0] == "p-python"
    np.testing.assert_allclose(
        [hit["score"] for hit in matched["results"]], np.sort(expected)[::-1], atol=1e-4
    )
    assert matched["results"][0]["payload"] == {"rate": 80, "remote": True}
    assert matched["results"][0]["location"] == "Berlin"

    def ids(filters: dict) -> list[str]:
        answer = served.post("/v1/match", {"document": project, "k": 3, "filters": filters})
        assert answer.status_code == 200, answer.text
        return [hit["id"] for hit in answer.json()["results"]]

    assert ids({"category": "software", "language": "de"}) == ["p-java"]
    assert ids({"payload.remote": True}) == ["p-python"]
    assert ids({"location": ["Paris"]}) == ["p-nurse"]
    assert ids({"payload.rate": [70, 40], "category": "health"}) == ["p-nurse"]

    sections = ["Python developer", "Django web API"]
    by_sections = served.post("/v1/match", {"sections": sections, "k": 1}).json()["results"]
    mean = minilm.embed(sections).mean(axis=0)
    assert by_sections[0]["id"] == "p-python"
    assert by_sections[0]["score"] == pytest.approx(
        float(profile_vectors[0] @ mean / np.linalg.norm(mean)), abs=1e-4
    )

    other_version = served.post("/v1/match", {"document": project}, model="2").json()
    assert other_version == {"model": served.version(2), "results": []}  # each version has its own index


def test_bad_requests_leave_the_replicas_running(served):
    before, states = replica_names(APP, "Models"), replica_states()
    assert states == {name: {"RUNNING": 1} for name in ("Models", "Matcher")}  # Models is the ingress
    bad = [
        served.call("POST", "/v1/rank", data="[[[", headers=JSON),
        served.post("/v1/rank", {"texts": ["x" * 100_000], "space": "esco-skills"}),
        served.post("/v1/rank", {"texts": ["Python"], "space": "nope"}),
        served.post("/v1/embed", {"texts": ["Python"]}, model="404"),
        served.post("/v1/extract", {"sentences": ["Python"]}, model="3"),
        served.post("/v1/match", {"document": "Python", "filters": {"payload.": 1}}),
    ]
    assert [response.status_code for response in bad] == [422, 422, 404, 404, 409, 422]
    assert replica_names(APP, "Models") == before
    assert replica_states() == states
    assert served.post("/v1/embed", {"texts": ["Python"]}).status_code == 200


def test_a_changed_user_config_applies_without_a_restart(served):
    before, replicas = served.models(), replica_names(APP, "Models")
    assert before["default"]["alias_poll_s"] == 0.5
    three = {"texts": ["Python", "Java", "SQL"]}
    assert served.post("/v1/embed", three).status_code == 200
    document = copy.deepcopy(served.document)
    app = document["applications"][0]
    changed = {
        **app["args"],
        "alias_poll_s": 0.75,
        "batching": {"max_batch_size": 8, "batch_wait_timeout_s": 0.01},
        "limits": {**app["args"]["limits"], "max_items": 2},
    }
    models_entry = next(entry for entry in app["deployments"] if entry["name"] == "Models")
    models_entry["user_config"] = changed
    deploy_serve_config(document, APP)

    def applied() -> bool:
        polls = served.models()["default"]["alias_poll_s"]
        return polls == 0.75 and served.post("/v1/embed", three).status_code == 422

    deadline = time.monotonic() + 60
    while not applied() and time.monotonic() < deadline:
        time.sleep(0.2)
    after = served.models()
    assert after["default"]["alias_poll_s"] == 0.75
    refused = served.post("/v1/embed", three)  # the HTTP API is rebuilt with the new limits
    assert refused.status_code == 422
    assert [problem["loc"] for problem in refused.json()["detail"]] == [["body", "texts"]]
    assert served.post("/v1/embed", {"texts": ["Python", "Java"]}).status_code == 200
    assert replica_names(APP, "Models") == replicas  # reconfigured in place
    assert after["default"]["loaded_at"] == before["default"]["loaded_at"]  # nothing it depends on changed
    served.document = document


def test_alias_move_under_load_has_no_failed_request(served, registry):
    replicas = replica_names(APP, "Models")
    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def keep_ranking() -> None:
        while not stop.is_set():
            response = served.post(
                "/v1/rank", {"texts": ["Python developer"], "space": "esco-skills", "k": 2}
            )
            model = response.json().get("model") if response.status_code == 200 else None
            answers.append((response.status_code, model or response.text))

    with ThreadPoolExecutor(max_workers=4) as pool:
        workers = [pool.submit(keep_ranking) for _ in range(4)]
        deadline = time.monotonic() + 60
        while len(answers) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        registry.set_alias(served.name, "champion", "2")
        moved_at = len(answers)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and [model for _, model in answers[-8:]] != [served.version(2)] * 8:
            time.sleep(0.1)
        stop.set()
        for worker in workers:
            worker.result()

    assert [answer for answer in answers if answer[0] != 200] == []
    models = [model for _, model in answers]
    assert models[0] == served.version(1) and models[-8:] == [served.version(2)] * 8
    assert set(models) == {served.version(1), served.version(2)}
    assert served.version(1) in models[moved_at:]  # the old version answered while the new one loaded
    after = served.models()
    assert after["default"]["version"] == served.version(2)
    assert replica_names(APP, "Models") == replicas
