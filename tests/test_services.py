"""`workembed services up/down` start real servers on 127.0.0.1 and stop exactly what they started."""

import json
import os
import subprocess
import sys
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

        with urllib.request.urlopen(f"{urls['mlflow']}/api/2.0/mlflow/experiments/search?max_results=5") as r:
            assert json.load(r)["experiments"][0]["name"] == "Default"

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
                "import ray; ray.init(); print('nodes', len(ray.nodes()))",
            ],
            env=os.environ | env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "nodes 1" in submitted.stdout
        env_file = (Path(config.state_dir) / "env").read_text()
        assert f"export MLFLOW_TRACKING_URI={urls['mlflow']}" in env_file
    finally:
        stopped = services.down(config)
    assert stopped == ["ray", "mlflow", "s3"]
    assert [p.pid for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
    assert services.status(config) == {
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
