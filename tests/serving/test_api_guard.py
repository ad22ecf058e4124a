"""The HTTP API fails closed, without Ray: API keys (several, from the environment and a file, rotated, no
start without one), the body limit before parsing, the payload and token-vector limits, and error answers
that carry a request id and nothing of the deployment's internals."""

import asyncio
import logging

import pytest
from fastapi.testclient import TestClient

from workembed.errors import ConfigError, InputError, NotFoundError
from workembed.serving.app import (
    REQUEST_ID_HEADER,
    EncoderCall,
    RequestGuard,
    build_app,
    create_api,
    run_batch,
)
from workembed.serving.auth import ApiKeys, parse_keys
from workembed.serving.config import ServeConfig
from workembed.serving.schemas import RequestError, request_models
from workembed.serving.versions import ModelLoadError

KEY_ENV = "WORKEMBED_TEST_API_KEYS"
TRACKING = "http://10.1.2.3:5000"
INTERNALS = (TRACKING, "10.1.2.3", "Traceback", "/home/ray", "pid")


class Records(logging.Handler):
    """The records of Serve's logger (it need not propagate to caplog's handler)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "Records":
        logger = logging.getLogger("ray.serve")
        self._level = logger.level  # another test may have quieted the libraries' loggers
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logger = logging.getLogger("ray.serve")
        logger.removeHandler(self)
        logger.setLevel(self._level)

    def messages(self, level: int) -> list[str]:
        return [record.getMessage() for record in self.records if record.levelno == level]


class FakeServer:
    """A model server as :func:`create_api` uses it: ``served`` gives ``model`` or raises ``error``; encoder
    calls run at once; ``describe`` answers what a replica's describe holds."""

    def __init__(self, model=None, error: Exception | None = None, described: dict | None = None):
        self.model, self.error, self.described = model, error, described

    async def served(self):
        if self.error is not None:
            raise self.error
        return self.model

    async def submit(self, call: EncoderCall):
        (result,) = run_batch([call])
        if isinstance(result, Exception):
            raise result
        return result

    def describe(self):
        if self.error is not None:
            raise self.error
        return self.described

    def health(self):
        return {"status": "ok"}


def config(tmp_path, **fields) -> ServeConfig:
    return ServeConfig(esco="builtin", cache_dir=str(tmp_path), api_key_env=KEY_ENV, **fields)


def client(server, cfg: ServeConfig, key: str | None = None) -> TestClient:
    test_client = TestClient(create_api(server, None, cfg), raise_server_exceptions=False)
    if key is not None:
        test_client.headers["X-API-Key"] = key
    return test_client


# ------------------------------------------------------------------------------------------ auth


def test_keys_are_parsed_from_commas_newlines_and_comment_lines():
    text = "# rotation 2026-12\nold-key, new-key\n\n  third-key  \n#disabled-key\n,\n"
    assert parse_keys(text) == ["old-key", "new-key", "third-key"]
    assert parse_keys("") == [] and parse_keys(" , \n# only a comment") == []


@pytest.mark.parametrize("value", [None, "", " , \n"])
def test_without_a_key_the_app_does_not_start(tmp_path, monkeypatch, value):
    if value is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, value)
    cfg = config(tmp_path)
    for start in (lambda: create_api(FakeServer(), None, cfg), lambda: build_app(cfg.model_dump())):
        with pytest.raises(ConfigError, match=f"no API key is configured.*\\${KEY_ENV}.*auth: disabled"):
            start()
    missing = tmp_path / "no-such-keys"
    with pytest.raises(ConfigError, match="api_keys_file: cannot read"):
        create_api(FakeServer(), None, config(tmp_path, api_keys_file=str(missing)))
    empty = tmp_path / "keys"
    empty.write_text("# no key yet\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no API key is configured"):
        create_api(FakeServer(), None, config(tmp_path, api_keys_file=str(empty)))


def test_disabled_auth_opens_the_api_with_a_warning_at_every_start(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    cfg = config(tmp_path, auth="disabled")
    described = {"default": None, "multiplexed": [], "spaces": []}
    with Records() as records:
        open_api = client(FakeServer(described=described), cfg)
        build_app(cfg.model_dump())
    warnings = [message for message in records.messages(logging.WARNING) if "auth: disabled" in message]
    assert len(warnings) == 2 and "open" in warnings[0]
    assert open_api.get("/v1/models").status_code == 200


def test_every_key_of_the_environment_and_the_file_is_valid_and_the_file_rotates(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "env-one,env-two")
    keys_file = tmp_path / "api-keys"
    keys_file.write_text("# mounted secret\nfile-old\n", encoding="utf-8")
    cfg = config(tmp_path, api_keys_file=str(keys_file))
    api = client(FakeServer(described={"spaces": []}), cfg)

    def status(key: str | None) -> int:
        return api.get("/v1/models", headers={"X-API-Key": key} if key else {}).status_code

    assert [status(key) for key in ("env-one", "env-two", "file-old")] == [200, 200, 200]
    assert [status(key) for key in (None, "", "env-one,env-two", "env", "file-old ", "wrong")] == [401] * 6
    assert api.get("/healthz").status_code == 200 and api.get("/openapi.json").status_code == 200

    keys_file.write_text("file-old\nfile-new\n", encoding="utf-8")  # rotation: both valid
    assert (status("file-old"), status("file-new")) == (200, 200)
    keys_file.write_text("file-new\n", encoding="utf-8")  # the old key is withdrawn
    assert (status("file-old"), status("file-new"), status("env-one")) == (401, 200, 200)

    with Records() as records:
        keys_file.unlink()  # an unreadable file never opens the API: the keys read last stay
        assert (status("file-new"), status("file-old"), status(None)) == (200, 401, 401)
    assert any("keys read before stay valid" in message for message in records.messages(logging.ERROR))


def test_an_api_keys_object_compares_digests_of_every_key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "a" * 64 + "\n" + "b")
    keys = ApiKeys(KEY_ENV)
    assert keys.count == 2
    assert keys.matches("a" * 64) and keys.matches("b")
    assert not keys.matches("a" * 63) and not keys.matches(None) and not keys.matches("")


# --------------------------------------------------------------------------------- body limit


def run_guard(messages: list[dict], max_body_bytes: int, headers: list | None = None):
    """Run :class:`RequestGuard` over an app that records the body it gets; the messages sent back, the
    body the app got (None: not called) and how many request messages were read."""
    got: dict = {}
    read = [0]

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        got["body"] = body
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    queue = list(messages)

    async def receive():
        read[0] += 1
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/embed", "headers": headers or []}
    asyncio.run(RequestGuard(app, max_body_bytes)(scope, receive, send))
    return sent, got.get("body"), read[0]


def chunk(body: bytes, more: bool = True) -> dict:
    return {"type": "http.request", "body": body, "more_body": more}


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams():
    chunks = [chunk(b"x" * 400), chunk(b"x" * 400), chunk(b"x" * 400), chunk(b"x" * 400, more=False)]
    sent, body, read = run_guard(chunks, 1000)
    assert body is None and read == 3  # the fourth chunk is never read, the app never called
    assert sent[0]["status"] == 413
    headers = dict(sent[0]["headers"])
    assert b"x-request-id" in headers
    assert b"limits.max_body_bytes" in sent[1]["body"] and headers[b"x-request-id"] in sent[1]["body"]

    sent, body, _ = run_guard([chunk(b"x" * 500), chunk(b"x" * 500, more=False)], 1000)
    assert sent[0]["status"] == 200 and body == b"x" * 1000  # at the limit: the whole body reaches the app


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read():
    sent, body, read = run_guard([chunk(b"{}", more=False)], 1000, headers=[(b"content-length", b"1001")])
    assert (sent[0]["status"], body, read) == (413, None, 0)


def test_the_body_limit_comes_before_parsing_and_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k1")
    cfg = config(tmp_path, limits={"max_body_bytes": 2048})
    api = client(FakeServer(error=AssertionError("the route must not run")), cfg)
    big = b'{"texts": ["' + b"x" * 4096 + b'"]}'
    for key in (None, "k1"):
        headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
        by_length = api.post("/v1/embed", content=big, headers=headers)
        streamed = api.post("/v1/embed", content=iter([big[:1500], big[1500:]]), headers=headers)
        for refused in (by_length, streamed):
            assert refused.status_code == 413, refused.text
            assert refused.json()["request_id"] == refused.headers[REQUEST_ID_HEADER]
    assert "transfer-encoding" not in by_length.request.headers
    assert streamed.request.headers["transfer-encoding"] == "chunked"
    assert api.post("/v1/embed", content=b"{not json" + b" " * 1000, headers=headers).status_code == 422


# ----------------------------------------------------------------------------- request limits


def test_a_profile_payload_over_its_limit_is_refused_naming_the_field(tmp_path):
    limits = config(tmp_path, limits={"max_payload_bytes": 64}).limits
    ProfilesRequest = request_models(limits).ProfilesRequest
    fits = {"id": "p", "text": "Python", "payload": {"note": "é" * 26}}  # 63 bytes as JSON
    ProfilesRequest.model_validate({"profiles": [fits]})
    over = {"id": "q", "text": "Python", "payload": {"note": "é" * 27}}
    with pytest.raises(Exception) as raised:
        ProfilesRequest.model_validate({"profiles": [fits, over]})
    (problem,) = raised.value.errors()
    assert problem["loc"] == ("profiles", 1, "payload")
    assert "64 (limits.max_payload_bytes)" in problem["msg"]


def test_token_vectors_over_the_limit_are_422_and_within_it_answered(tiny_bert, tmp_path, monkeypatch):
    from workembed.serving.runtime import ServedModel

    monkeypatch.setenv(KEY_ENV, "k1")
    cfg = config(tmp_path, limits={"max_token_vectors": 4})
    model = ServedModel(str(tiny_bert), cfg)
    api = client(FakeServer(model=model), cfg, key="k1")
    answered = api.post("/v1/embed", json={"texts": ["python developer", "java"], "tokens": True})
    assert answered.status_code == 200, answered.text
    assert sum(len(row["tokens"]) for row in answered.json()["embeddings"]) == 3
    refused = api.post("/v1/embed", json={"texts": ["python developer", "java sql dba"], "tokens": True})
    assert refused.status_code == 422
    assert "texts: 6 token vectors" in refused.json()["detail"]
    assert "limits.max_token_vectors" in refused.json()["detail"]
    assert refused.json()["request_id"] == refused.headers[REQUEST_ID_HEADER]
    pooled = api.post("/v1/embed", json={"texts": ["python developer", "java sql dba"]})
    assert pooled.status_code == 200  # the limit counts token vectors only


# ------------------------------------------------------------------------------- error answers


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ModelLoadError(f"model 'models:/w/2' could not be loaded: OSError: {TRACKING}/get-artifact"), 503),
        (NotFoundError(f"model 'models:/w/9' could not be downloaded from {TRACKING}: no version"), 404),
        (RuntimeError("The actor died: pid=4242, ip=10.1.2.3, actor_id=ab12\nTraceback (most recent)"), 500),
        (ValueError("operands could not be broadcast together /home/ray/app.py"), 500),
        (InputError("space file /home/ray/spaces/x.tsv line 3 is invalid"), 500),
    ],
)
def test_error_answers_carry_a_request_id_and_no_internals(tmp_path, monkeypatch, error, code):
    monkeypatch.setenv(KEY_ENV, "k1")
    api = client(FakeServer(error=error), config(tmp_path), key="k1")
    with Records() as records:
        answers = [api.post("/v1/embed", json={"texts": ["Python"]}), api.get("/v1/models")]
    for response in answers:
        assert response.status_code == code
        body = response.json()
        assert set(body) == {"detail", "request_id"}
        assert body["request_id"] == response.headers[REQUEST_ID_HEADER] != ""
        for internal in INTERNALS:
            assert internal not in response.text
        if code == 503:
            assert response.headers["Retry-After"] == "1"
        logged = [record for record in records.records if getattr(record, "request_id", None)]
        assert body["request_id"] in {record.request_id for record in logged}  # the cause is in the log
    if code == 404:
        assert "models:/w/9" in answers[0].json()["detail"]  # what the client named stays


def test_routing_and_validation_errors_carry_a_request_id(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k1")
    api = client(FakeServer(), config(tmp_path), key="k1")
    for response, code in (
        (api.get("/v1/nowhere"), 404),
        (api.get("/v1/embed"), 405),
        (api.post("/v1/embed", json={"texts": []}), 422),
        (api.post("/v1/embed", json={"texts": ["x"]}, headers={"X-API-Key": "nope"}), 401),
    ):
        assert response.status_code == code
        assert response.json()["request_id"] == response.headers[REQUEST_ID_HEADER]
    invalid = api.post("/v1/embed", json={"texts": []}).json()
    assert [problem["loc"] for problem in invalid["detail"]] == [["body", "texts"]]
    ids = {api.get("/v1/nowhere").json()["request_id"] for _ in range(3)}
    assert len(ids) == 3


def test_served_models_tell_versions_not_the_replica(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k1")
    error = {
        "at": "2026-12-07T10:00:00+00:00",
        "version": "models:/w/3",
        "message": f"OSError: {TRACKING} down",
    }
    described = {
        "replica": "abc123",
        "pid": 4242,
        "default": {
            "uri": "models:/w@champion",
            "version": "models:/w/2",
            "info": {"dim": 32},
            "error": error,
        },
        "multiplexed": [{"uri": "models:/w/1", "version": "models:/w/1", "info": {}, "error": None}],
        "spaces": ["esco-skills"],
    }
    answer = client(FakeServer(described=described), config(tmp_path), key="k1").get("/v1/models").json()
    assert answer == {
        "default": {
            "uri": "models:/w@champion",
            "version": "models:/w/2",
            "info": {"dim": 32},
            "error": {**error, "message": "OSError: <internal> down"},
        },
        "multiplexed": [described["multiplexed"][0]],
        "spaces": ["esco-skills"],
    }


def test_a_request_error_raised_in_a_route_is_422(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "k1")
    answer = client(FakeServer(error=RequestError("texts: too many")), config(tmp_path), key="k1").post(
        "/v1/embed", json={"texts": ["Python"]}
    )
    assert (answer.status_code, answer.json()["detail"]) == (422, "texts: too many")
