"""Shared fixtures: one local Ray instance per test run, a real S3-compatible server, the data root."""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import pytest

# Ray stays on 127.0.0.1; nothing reaches a model hub or a telemetry endpoint.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def free_port(low: int = 20000, high: int = 60000) -> int:
    """A free TCP port on 127.0.0.1 outside Ray's default worker-port range (10002-19999)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if low <= port < high:
            return port


@contextlib.contextmanager
def environ(values: dict[str, str]):
    """``os.environ`` with ``values`` set, restored afterwards (for fixtures wider than a test)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def _no_ambient_tracking(monkeypatch):
    """A shell's MLFLOW_TRACKING_URI must not make tests log runs; tests that log pass their server."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data root (``../shared/data`` or ``$WORKEMBED_DATA_DIR``)."""
    from workembed.config import data_root

    root = data_root()
    if root is None:
        pytest.skip("no data root: ../shared/data is absent and WORKEMBED_DATA_DIR is unset")
    return root


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole run (more logical CPUs than cores, dashboard off)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1, with the standard AWS variables pointing at it."""
    from workembed import services

    config = services.ServicesConfig.model_validate(
        {
            "state_dir": str(tmp_path_factory.mktemp("s3-server")),
            "ray": {"enabled": False},
            "mlflow": {"enabled": False},
            "s3": {"port": free_port(), "buckets": ["workembed-test"]},
        }
    )
    services.up(config, log=lambda _: None)
    env = services.s3_env(config)
    with environ(env):
        yield {"endpoint": env["AWS_ENDPOINT_URL"], "bucket": "workembed-test", **env}
    services.down(config, log=lambda _: None)


@pytest.fixture(scope="session")
def minilm():
    """The packaged all-MiniLM-L6-v2, loaded once."""
    from workembed.models import Encoder

    return Encoder("minilm")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (SQLite store, artifacts served from a local folder);
    yields its URL. The process-wide MLflow tracking URI is left untouched: clients pass the URL."""
    from workembed import services

    config = services.ServicesConfig.model_validate(
        {
            "state_dir": str(tmp_path_factory.mktemp("mlflow-server")),
            "ray": {"enabled": False},
            "s3": {"enabled": False},
            "mlflow": {"port": free_port(), "artifacts": "local"},
        }
    )
    urls = services.up(config, log=lambda _: None)
    yield urls["mlflow"]
    services.down(config, log=lambda _: None)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A folder with a tiny randomly initialised BERT (hidden size 32, 2 layers) and MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    from workembed.models import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(folder)
    source = resolve_model_path("minilm")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (source / name).exists():
            (folder / name).write_bytes((source / name).read_bytes())
    return folder
