"""Secrets in typed configs: loaded from YAML and ``--set`` as plain strings, held as ``SecretStr``, handed
in clear only to the S3 filesystem, and blank in every dump that leaves the process."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import yaml
from pydantic import Field, SecretBytes, SecretStr

from workembed.config import Config, dump_config, load_config, public_dump
from workembed.data.config import IngestConfig, StorageConfig
from workembed.data.storage import filesystem_for
from workembed.synth.config import SynthConfig
from workembed.tracking import param_values
from workembed.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
SECRET = "SECRET-VALUE-123"
KEY_ID = "KEY-ID-456"


class Endpoint(Config):
    url: str = "http://127.0.0.1:9000"
    token: SecretStr | None = None


class Deep(Config):
    name: str = "deep"
    storage: StorageConfig = Field(default_factory=StorageConfig)
    endpoints: list[Endpoint] = Field(default_factory=list)
    by_name: dict[str, Endpoint] = Field(default_factory=dict)
    extra: dict[str, object] = Field(default_factory=dict)
    tokens: list[SecretStr] = Field(default_factory=list)
    blob: SecretBytes | None = None


def deep() -> Deep:
    return Deep.model_validate(
        {
            "storage": {"endpoint_url": "http://s3", "access_key_id": KEY_ID, "secret_access_key": SECRET},
            "endpoints": [{"token": SECRET}, {"url": "http://other"}],
            "by_name": {"a": {"token": SECRET + "-a"}},
            "extra": {"kept": 1, "hidden": SecretStr(SECRET + "-x")},
            "tokens": [SECRET + "-1", SECRET + "-2"],
            "blob": SECRET.encode(),
        }
    )


def test_public_dump_blanks_every_secret_of_nested_configs_lists_and_mappings():
    config = deep()
    dumped = public_dump(config)
    assert SECRET not in json.dumps(dumped) and KEY_ID not in json.dumps(dumped)
    assert dumped["storage"] == {
        "endpoint_url": "http://s3",
        "region": None,
        "access_key_id": None,
        "secret_access_key": None,
    }
    assert dumped["endpoints"] == [
        {"url": "http://127.0.0.1:9000", "token": None},
        {"url": "http://other", "token": None},
    ]
    assert dumped["by_name"] == {"a": {"url": "http://127.0.0.1:9000", "token": None}}
    assert dumped["extra"] == {"kept": 1}  # a mapping entry holding a secret is left out
    assert dumped["tokens"] is None and dumped["blob"] is None
    # the config itself keeps its secrets, and a plain dump would carry them (python mode)
    assert config.storage.secret_access_key.get_secret_value() == SECRET
    assert config.model_dump()["endpoints"][0]["token"].get_secret_value() == SECRET


def test_public_dump_validates_again_with_the_secrets_unset_and_takes_model_dump_arguments():
    config = deep()
    again = Deep.model_validate({**public_dump(config), "tokens": []})
    assert again.storage.secret_access_key is None and again.storage.access_key_id is None
    assert again.storage.endpoint_url == "http://s3"
    partial = public_dump(config, exclude={"storage": {"endpoint_url"}, "by_name": True})
    assert "by_name" not in partial and "endpoint_url" not in partial["storage"]
    assert partial["storage"]["secret_access_key"] is None
    assert public_dump(StorageConfig()) == StorageConfig().model_dump(mode="json")  # nothing set: the same


@pytest.mark.parametrize(
    ("cls", "shipped"),
    [(IngestConfig, "ingest.yaml"), (TrainConfig, "train.yaml"), (SynthConfig, "synthesize.yaml")],
)
def test_job_configs_load_keys_as_plain_strings_and_dump_none_of_them(tmp_path, cls, shipped):
    raw = yaml.safe_load((ROOT / "jobs" / "configs" / shipped).read_text())
    raw["storage"] = {"secret_access_key": SECRET}
    path = tmp_path / shipped
    path.write_text(yaml.safe_dump(raw))
    config = load_config(cls, path, [f"storage.access_key_id={KEY_ID}"])
    assert isinstance(config.storage.secret_access_key, SecretStr)
    assert config.storage.secret_access_key.get_secret_value() == SECRET
    assert config.storage.access_key_id.get_secret_value() == KEY_ID
    assert SECRET not in repr(config) and KEY_ID not in str(config.storage)
    for text in (
        dump_config(config),
        json.dumps(public_dump(config)),
        json.dumps(param_values(public_dump(config))),
    ):
        assert SECRET not in text and KEY_ID not in text
    assert cls.model_validate(public_dump(config)).storage.secret_access_key is None


def test_param_values_leave_secret_values_out():
    params = param_values(
        {"a": 1, "key": SecretStr(SECRET), "nested": {"b": "x", "token": SecretStr(SECRET)}}
    )
    assert params == {"a": "1", "nested.b": "x"}


def test_configured_keys_reach_the_s3_filesystem_in_clear_else_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ENV-KEY-ID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "ENV-SECRET")
    storage = StorageConfig(endpoint_url="http://127.0.0.1:9", access_key_id=KEY_ID, secret_access_key=SECRET)
    # pyarrow's S3FileSystem pickles with the credentials it was built with
    configured = pickle.dumps(filesystem_for("s3://bucket/key", storage))
    assert SECRET.encode() in configured and KEY_ID.encode() in configured
    assert b"ENV-SECRET" not in configured
    fallback = pickle.dumps(
        filesystem_for("s3://bucket/key", StorageConfig(endpoint_url="http://127.0.0.1:9"))
    )
    assert b"ENV-SECRET" in fallback and b"ENV-KEY-ID" in fallback and SECRET.encode() not in fallback
