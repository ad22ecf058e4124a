"""`workembed services up/down` start real servers on 127.0.0.1 and stop exactly what they started."""

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from tests.conftest import free_port
from workembed import services
from workembed.cli import main


@pytest.fixture
def config(tmp_path):
    return services.ServicesConfig.model_validate(
        {
            "state_dir": str(tmp_path / "state"),
            "ray": {
                "port": free_port(),
                "dashboard_port": free_port(),
                "client_port": free_port(),
                "agent_port": free_port(),
                "num_cpus": 2,
            },
            "mlflow": {"port": free_port()},
            "s3": {"port": free_port(), "buckets": ["alpha", "beta"]},
        }
    )


def _tree(pid):
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


@pytest.mark.integration
def test_services_up_answer_and_down_leaves_nothing(config, capsys):
    urls = services.up(config)
    try:
        assert set(urls) == {"s3", "mlflow", "ray"}
        assert all(url.startswith("http://127.0.0.1:") for url in urls.values())
        report = services.status(config)
        assert all(entry["running"] and entry["answers"] for entry in report.values()), report
        processes = [p for name in report for p in _tree(report[name]["pid"])]
        for proc in processes:  # nothing listens beyond loopback
            for conn in proc.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    assert conn.laddr.ip in ("127.0.0.1", "::1", "::ffff:127.0.0.1"), (
                        proc.cmdline(),
                        conn.laddr,
                    )

        env = services.client_env(config)
        import boto3

        s3 = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        )
        assert {b["Name"] for b in s3.list_buckets()["Buckets"]} == {"alpha", "beta"}

        search = f"{urls['mlflow']}/api/2.0/mlflow/experiments/search?max_results=5"
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(search)  # MLflow answers nobody without credentials
        with urllib.request.urlopen(_basic_auth(search, env)) as r:
            assert json.load(r)["experiments"][0]["name"] == "Default"
        credentials = Path(config.state_dir) / "mlflow_credentials.json"
        for private in (credentials, Path(config.state_dir) / "env", Path(config.state_dir) / "serving.env"):
            assert private.stat().st_mode & 0o777 == 0o600, private
        assert report["mlflow"]["auth"]["users"]["pipeline"] == env["MLFLOW_TRACKING_USERNAME"]

        # a second `up` starts nothing new
        services.up(config)
        assert services.status(config)["ray"]["pid"] == report["ray"]["pid"]

        # `ray job submit` reaches the head with the token the env file names
        submitted = subprocess.run(
            [
                str(Path(sys.executable).parent / "ray"),
                "job",
                "submit",
                "--address",
                urls["ray"],
                "--",
                "python",
                "-c",
                "import os, ray; ray.init(); print('nodes', len(ray.nodes()), "
                "os.environ.get('MLFLOW_TRACKING_USERNAME'))",
            ],
            env={k: v for k, v in (os.environ | env).items() if not k.startswith("MLFLOW_TRACKING_")}
            | {"RAY_ADDRESS": env["RAY_ADDRESS"]},
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "nodes 1 workembed-pipeline" in submitted.stdout  # jobs on the head get the pipeline user
        env_file = (Path(config.state_dir) / "env").read_text()
        assert f"export MLFLOW_TRACKING_URI={urls['mlflow']}" in env_file
        assert f"export MLFLOW_TRACKING_PASSWORD={env['MLFLOW_TRACKING_PASSWORD']}" in env_file
        passwords = [
            user["password"]
            for role, user in json.loads(credentials.read_text()).items()
            if role != "secret_key"
        ]
        logged = "".join(p.read_text(errors="replace") for p in Path(config.state_dir).glob("*.log"))
        assert not [p for p in passwords if p in logged + capsys.readouterr().err]  # never printed

        # new passwords: the old ones stop working, the env files hold the new ones
        code = main(
            ["services", "rotate-mlflow-credentials", "--set", f"state_dir={config.state_dir}"]
            + ["--set", f"mlflow.port={config.mlflow.port}"]
        )
        out, err = capsys.readouterr()
        assert code == 0, err
        assert json.loads(out)["rotated"] == ["admin", "workembed-pipeline", "workembed-serving"]
        new = services.client_env(config)
        assert new["MLFLOW_TRACKING_PASSWORD"] != env["MLFLOW_TRACKING_PASSWORD"]
        with pytest.raises(urllib.error.HTTPError, match="401"):
            urllib.request.urlopen(_basic_auth(search, env))
        with urllib.request.urlopen(_basic_auth(search, new)) as r:
            assert r.status == 200
        env_file = (Path(config.state_dir) / "env").read_text()
        assert f"export MLFLOW_TRACKING_PASSWORD={new['MLFLOW_TRACKING_PASSWORD']}" in env_file
    finally:
        stopped = services.down(config)
    assert stopped == ["ray", "mlflow", "s3"]
    assert [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    after = services.status(config)
    assert after["mlflow"].pop("auth")["serving_env"].endswith("serving.env")
    assert after == {
        name: {"running": False, "pid": None, "answers": False, "url": urls[name]} for name in urls
    }
    assert not (Path(services.ray_temp_dir(config)) / "ray_current_cluster").exists()


def test_taken_port_is_a_clear_error(config):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", config.s3.port))
        busy.listen()
        with pytest.raises(services.ServiceError, match=f"port {config.s3.port} .* is taken"):
            services.up(config)
    assert services.status(config)["s3"]["running"] is False


def test_cli_down_without_up_stops_nothing(config, capsys):
    code = main(["services", "down", "--set", f"state_dir={config.state_dir}"])
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"stopped": []}


def test_default_state_dir_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # services run from their state dir: a relative default would break them
    assert services.ServicesConfig().state_dir == str(tmp_path / ".workembed" / "services")


def _basic_auth(url: str, env: dict[str, str]) -> urllib.request.Request:
    user = f"{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}"
    return urllib.request.Request(
        url, headers={"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}
    )


def _as(monkeypatch, env: dict[str, str]) -> None:
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        if key in env:
            monkeypatch.setenv(key, env[key])
        else:
            monkeypatch.delenv(key, raising=False)


def test_mlflow_users_who_may_move_an_alias(mlflow_server, mlflow_services, monkeypatch):
    """Nobody unauthenticated and not the read-only serving user may set an alias or a tag; the pipeline
    user may; the users are the ones `services up` created."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    pipeline = services.mlflow_user_env(mlflow_services, "pipeline")
    serving = services.mlflow_user_env(mlflow_services, "serving")
    assert (pipeline["MLFLOW_TRACKING_USERNAME"], serving["MLFLOW_TRACKING_USERNAME"]) == (
        "workembed-pipeline",
        "workembed-serving",
    )
    assert services.serving_env(mlflow_services) == {"MLFLOW_TRACKING_URI": mlflow_server, **serving}
    client = MlflowClient(tracking_uri=mlflow_server)
    _as(monkeypatch, pipeline)
    name = f"auth-{os.getpid()}-{free_port()}"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment(name))
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)

    for env, status in (({}, "401"), (serving, "403")):  # nobody, the serving user
        _as(monkeypatch, env)
        with pytest.raises(MlflowException, match=status):
            client.set_registered_model_alias(name, "champion", "1")
        with pytest.raises(MlflowException, match=status):
            client.set_model_version_tag(name, "1", "workembed.promotion.champion", "{}")
        with pytest.raises(MlflowException, match=status):
            client.set_registered_model_tag(name, "workembed.alias_history.champion", "[]")
    assert client.get_registered_model(name).aliases == {}  # the serving user reads

    _as(monkeypatch, pipeline)
    client.set_registered_model_alias(name, "champion", "1")
    client.set_model_version_tag(name, "1", "workembed.promotion.champion", "{}")
    assert client.get_registered_model(name).aliases == {"champion": "1"}
