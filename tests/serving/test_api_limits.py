"""The deployed API fails closed: serve/config.yaml on a local Serve (tiny BERT as the default model) with
API keys from the environment and a file, small request limits and a Models deployment that takes one
request at a time and queues one more. Keys, the 413 body limit (by length and chunked, before the key
check), payload and token-vector limits, the full queue's 503, error bodies, and no start without a key."""

import copy
import select
import socket
import time

import pytest
import requests
import yaml

from tests.conftest import free_port
from tests.serving.deploy import deploy_serve_config, start_serve
from workembed.config import project_root

APP = "workembed"
ENV_KEYS = ("env-key-1", "env-key-2")
FILE_KEY = "file-key-1"


@pytest.fixture(scope="module")
def deployed(ray_session, tiny_bert, tmp_path_factory):
    """serve/config.yaml with tiny BERT, keys in $WORKEMBED_API_KEY (two) and in a keys file, small limits,
    Models at one ongoing and one queued request. Yields (base URL, keys file, deployed document)."""
    from ray import serve

    state = tmp_path_factory.mktemp("serve-limits")
    keys_file = state / "api-keys"
    keys_file.write_text(f"# mounted secret\n{FILE_KEY}\n", encoding="utf-8")
    document = yaml.safe_load((project_root() / "serve" / "config.yaml").read_text(encoding="utf-8"))
    app = document["applications"][0]
    app["args"].update(
        model=str(tiny_bert),
        esco="builtin",
        runtime="torch",
        cache_dir=str(state / "serving"),
        api_keys_file=str(keys_file),
        limits={
            **app["args"]["limits"],
            "max_body_bytes": 4096,
            "max_payload_bytes": 64,
            "max_token_vectors": 4,
        },
        profiles={**app["args"]["profiles"], "qdrant_path": str(state / "qdrant")},
    )
    app["runtime_env"] = {
        "env_vars": {"WORKEMBED_API_KEY": ",".join(ENV_KEYS), "WORKEMBED_MODEL_CACHE": str(state / "models")}
    }
    models = next(entry for entry in app["deployments"] if entry["name"] == "Models")
    models.update(max_ongoing_requests=1, max_queued_requests=1)
    port = free_port()
    start_serve(document, port)
    try:
        deploy_serve_config(document, APP)
        yield f"http://127.0.0.1:{port}", keys_file, document
    finally:
        serve.shutdown()


def post(base: str, path: str, key: str | None = ENV_KEYS[0], **kwargs) -> requests.Response:
    headers = {"Content-Type": "application/json", **({"X-API-Key": key} if key else {})}
    return requests.post(base + path, headers=headers, timeout=120, **kwargs)


def assert_error_body(response: requests.Response) -> None:
    """An error answer: a short detail and the request id of its X-Request-ID header, nothing internal."""
    body = response.json()
    assert body["request_id"] and body["request_id"] == response.headers["X-Request-ID"]
    for internal in ("Traceback", "pid", "127.0.0.1", "/tmp/"):
        assert internal not in response.text


def test_every_configured_key_is_valid_and_the_key_file_rotates(deployed):
    base, keys_file, _ = deployed
    texts = {"texts": ["Python"]}
    assert [post(base, "/v1/embed", key, json=texts).status_code for key in (*ENV_KEYS, FILE_KEY)] == [
        200
    ] * 3
    for key in (None, "wrong", ",".join(ENV_KEYS)):
        refused = post(base, "/v1/embed", key, json=texts)
        assert refused.status_code == 401
        assert_error_body(refused)
    keys_file.write_text("file-key-2\n", encoding="utf-8")  # a rotated Secret: read without a restart
    assert post(base, "/v1/embed", "file-key-2", json=texts).status_code == 200
    assert post(base, "/v1/embed", FILE_KEY, json=texts).status_code == 401
    assert requests.get(base + "/healthz", timeout=30).status_code == 200


def test_a_body_over_the_limit_is_413_by_length_and_chunked_before_the_key(deployed):
    base, _, _ = deployed
    big = b'{"texts": ["' + b"x" * 5000 + b'"]}'
    for key in (None, ENV_KEYS[0]):
        by_length = post(base, "/v1/embed", key, data=big)
        chunked = post(base, "/v1/embed", key, data=iter([big[:3000], big[3000:]]))
        assert chunked.request.headers["Transfer-Encoding"] == "chunked"
        for refused in (by_length, chunked):
            assert refused.status_code == 413, refused.text
            assert "limits.max_body_bytes" in refused.json()["detail"]
            assert_error_body(refused)
    fits = post(base, "/v1/embed", data=iter([b'{"texts": ', b'["Python"]}']))  # chunked, under the limit
    assert fits.status_code == 200, fits.text


def test_payload_and_token_vector_limits_are_422_naming_the_field(deployed):
    base, _, _ = deployed
    profile = {"id": "p1", "text": "Python developer", "payload": {"note": "x" * 64}}
    refused = post(base, "/v1/profiles", json={"profiles": [profile]})
    assert refused.status_code == 422
    assert [problem["loc"] for problem in refused.json()["detail"]] == [["body", "profiles", 0, "payload"]]
    assert_error_body(refused)
    profile["payload"] = {"rate": 80}
    assert post(base, "/v1/profiles", json={"profiles": [profile]}).status_code == 200

    tokens = post(base, "/v1/embed", json={"texts": ["python developer", "java sql dba"], "tokens": True})
    assert tokens.status_code == 422 and "limits.max_token_vectors" in tokens.json()["detail"]
    assert_error_body(tokens)
    within = post(base, "/v1/embed", json={"texts": ["python developer"], "tokens": True})
    assert within.status_code == 200 and len(within.json()["embeddings"][0]["tokens"]) == 2


def test_errors_and_models_tell_no_internals(deployed):
    base, _, _ = deployed
    missing = post(base, "/v1/rank", json={"texts": ["Python"], "space": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    assert_error_body(missing)
    no_threshold = post(base, "/v1/extract", json={"sentences": ["Python"]})
    assert no_threshold.status_code == 409
    assert_error_body(no_threshold)
    models = requests.get(base + "/v1/models", headers={"X-API-Key": ENV_KEYS[1]}, timeout=30).json()
    assert not {"replica", "pid"} & set(models) and models["spaces"] == ["esco-skills", "esco-occupations"]


def test_timeouts_and_queue_limits_are_deployed(deployed):
    from ray.serve.context import _get_global_client

    _, _, document = deployed
    details = _get_global_client().get_serve_details()
    assert details["http_options"]["request_timeout_s"] == document["http_options"]["request_timeout_s"] > 0
    deployments = details["applications"][APP]["deployments"]
    for name, queued in (("Models", 1), ("Matcher", 256)):
        config = deployments[name]["deployment_config"]
        assert config["max_queued_requests"] == queued
        assert config["backpressure_config"] == {"status_code": 503, "retry_after_s": 1.0}


def held_request(port: int) -> socket.socket:
    """A request whose body never ends: it holds a Models slot (or its place in the queue) until closed."""
    held = socket.create_connection(("127.0.0.1", port), timeout=120)
    held.sendall(
        b"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"X-API-Key: {ENV_KEYS[0]}\r\nContent-Length: 100\r\n\r\n".encode()
        + b'{"texts": '
    )
    return held


def test_a_full_queue_is_answered_503_with_retry_after(deployed):
    base, _, _ = deployed
    port = int(base.rsplit(":", 1)[1])
    held = [held_request(port) for _ in range(3)]  # one ongoing, one queued: one of three is refused
    try:
        readable, _, _ = select.select(held, [], [], 120)
        assert len(readable) >= 1
        answer = readable[0].recv(65536).decode("latin-1")
        head = answer.split("\r\n\r\n", 1)[0].lower()
        assert head.startswith("http/1.1 503"), answer
        assert "\r\nretry-after: 1" in head
    finally:
        for connection in held:
            connection.close()
    for _ in range(60):  # the held requests are let go: a client that waits Retry-After is served again
        again = post(base, "/v1/embed", json={"texts": ["Python"]})
        if again.status_code != 503:
            break
        time.sleep(int(again.headers["Retry-After"]))
    assert again.status_code == 200, again.text


def test_without_an_api_key_the_application_does_not_start(deployed):
    """Last in the module: the deploy replaces the application above."""
    document = copy.deepcopy(deployed[2])
    app = document["applications"][0]
    app["args"] = {**app["args"], "api_key_env": "WORKEMBED_TEST_NO_SUCH_KEY", "api_keys_file": None}
    app["runtime_env"] = {}
    with pytest.raises(RuntimeError, match="no API key is configured"):
        deploy_serve_config(document, APP, timeout_s=300)
