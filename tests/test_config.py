from pathlib import Path

import pytest
from pydantic import Field

from workembed.config import (
    DATA_DIR_ENV,
    Config,
    ConfigError,
    data_root,
    dump_config,
    load_config,
    parse_override,
    resolve_data_path,
)


class Inner(Config):
    size: int = 3
    names: list[str] = Field(default_factory=list)


class Outer(Config):
    name: str = "default"
    rate: float = 0.5
    inner: Inner = Field(default_factory=Inner)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file():
    config = load_config(Outer)
    assert (config.name, config.rate, config.inner.size) == ("default", 0.5, 3)


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "name: base\ninner:\n  size: 7\n")
    config = load_config(Outer, path, ["inner.size=9", "inner.names=[a, b]", "rate=1e-3"])
    assert config.name == "base"
    assert config.inner.size == 9
    assert config.inner.names == ["a", "b"]
    assert config.rate == pytest.approx(0.001)


def test_profile_merges_over_base(tmp_path):
    path = write(tmp_path, "name: base\ninner: {size: 2}\nprofiles:\n  gpu: {inner: {size: 64}}\n")
    assert load_config(Outer, path, profile="gpu").inner.size == 64
    assert load_config(Outer, path).inner.size == 2
    with pytest.raises(ConfigError, match="unknown profile 'tpu'.*gpu"):
        load_config(Outer, path, profile="tpu")


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "inner:\n  sise: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path)
    assert "inner.sise" in str(info.value)
    assert str(path) in str(info.value)


def test_wrong_type_from_override_is_marked(tmp_path):
    path = write(tmp_path, "name: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(Outer, path, ["inner.size=many"])
    message = str(info.value)
    assert "inner.size (from --set)" in message
    assert "valid integer" in message


def test_malformed_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("novalue")
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_override("a..b=1")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Outer, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="holds a value"):
        load_config(Outer, None, ["name=x", "name.first=1"])


def test_override_values_are_yaml_typed():
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a.b=12") == ("a.b", 12)
    assert parse_override("a=null") == ("a", None)
    assert parse_override("a=s3://bucket/x") == ("a", "s3://bucket/x")


def test_dump_round_trips(tmp_path):
    config = load_config(Outer, None, ["inner.names=[x]"])
    again = load_config(Outer, write(tmp_path, dump_config(config)))
    assert again == config


def test_data_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    (tmp_path / "esco").mkdir()
    assert data_root() == tmp_path
    assert resolve_data_path("esco") == str(tmp_path / "esco")
    assert resolve_data_path("s3://bucket/esco") == "s3://bucket/esco"
    assert resolve_data_path("/abs/path") == "/abs/path"
    monkeypatch.setenv(DATA_DIR_ENV, "relative/dir")
    with pytest.raises(ConfigError, match="absolute"):
        data_root()


def test_relative_path_falls_back_to_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "root"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local.csv").write_text("x\n")
    assert resolve_data_path("local.csv") == str(tmp_path / "local.csv")
    assert resolve_data_path("absent.csv") == str(tmp_path / "root" / "absent.csv")
