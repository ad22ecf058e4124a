"""``workembed models ...`` in-process: JSON on stdout, exit code 0 on success and 2 on a refusal or error."""

from __future__ import annotations

import json

import pytest
import yaml

from workembed.cli import main


@pytest.fixture
def cli(capsys):
    """``cli(*args) -> (exit code, stdout parsed as JSON or None, stderr)``."""

    def run(*args: str):
        code = main(list(args))
        captured = capsys.readouterr()
        return code, json.loads(captured.out) if captured.out.strip() else None, captured.err

    return run


@pytest.fixture
def config_file(make_config, tmp_path):
    """A registry.yaml on the test server (fresh model name), calibrating on the hand-built sets."""
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(make_config().model_dump(mode="json")), encoding="utf-8")
    return str(path)


def test_models_commands_end_to_end(cli, config_file, tiny_bert):
    code, registered, _ = cli("models", "register", "-c", config_file, "--model", str(tiny_bert))
    assert code == 0 and registered["version"] == "1" and registered["extraction"]["threshold"] > 0
    name = registered["name"]

    code, refused, err = cli("models", "promote", "-c", config_file, "--version", "1", "--alias", "champion")
    assert code == 2 and refused["decision"] == "refused" and refused["holder"] == "minilm"
    assert "refused" in err and "| dataset | metric | holder | candidate | diff | verdict |" in err

    code, listed, _ = cli("models", "list", "-c", config_file)
    assert (
        code == 0
        and listed["aliases"] == {}
        and listed["versions"][0]["promotions"] == {"champion": "refused"}
    )

    lenient = ("--set", "gate.tolerance=1.0")
    code, promoted, _ = cli(
        "models", "promote", "-c", config_file, *lenient, "--version", "1", "--alias", "champion"
    )
    assert code == 0 and promoted["decision"] == "promoted" and promoted["tolerance"] == 1.0

    code, shown, _ = cli("models", "show", "-c", config_file, "--name", name, "--version", "1")
    assert code == 0 and shown["aliases"] == ["champion"]
    assert shown["tags"]["workembed.promotion.champion"]["decision"] == "promoted"

    code, out, err = cli("models", "rollback", "-c", config_file, "--alias", "champion")
    assert (code, out) == (2, None) and "no previous holder" in err


def test_register_needs_one_source_and_a_tracking_server(cli, tiny_bert):
    with pytest.raises(SystemExit):
        main(["models", "register", "--model", str(tiny_bert), "--run", "abc"])
    code, out, err = cli("models", "list", "--name", "anything")
    assert (code, out) == (2, None) and "set MLFLOW_TRACKING_URI or tracking_uri" in err
