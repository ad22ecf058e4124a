"""Reliability tests: real local services on 127.0.0.1 killed and restarted at chosen moments, each test
asserting what was lost (nothing) and what the client saw.

Every test here is marked ``reliability`` and ``integration`` at collection (``make test`` runs them,
``pytest -m reliability`` selects them). Waits are bounded (:func:`wait_until`), and every process a test
starts through :class:`ServiceProcess` (the ``service_processes`` fixture) is killed at its end.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from tests.conftest import free_port

LOOPBACK = "127.0.0.1"
REPO = Path(__file__).resolve().parents[2]


def pytest_itemcollected(item: pytest.Item) -> None:
    """Before the tiers are decided (``tests/conftest.py``): reliability tests start servers."""
    item.add_marker("reliability")
    if not any(mark.name in ("unit", "integration") for mark in item.iter_markers()):
        item.add_marker("integration")


def wait_until(predicate: Callable[[], object], timeout_s: float, what: str, every_s: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned); fail naming ``what`` after
    ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}", pytrace=False)
        time.sleep(every_s)


def port_open(port: int) -> bool:
    """Whether something accepts TCP connections on ``127.0.0.1:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def http_answers(url: str) -> bool:
    """Whether ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def group_alive(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    from workembed.services import group_processes

    return group_processes(pgid)


class ServiceProcess:
    """A server command on a fixed port of 127.0.0.1, in a process group of its own (output in
    ``log``): :meth:`start` waits until ``probe`` answers 200, :meth:`kill` SIGKILLs the whole group,
    :meth:`restart` starts the same command again on the same port."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        log: Path,
        probe: str = "/",
        env: dict[str, str] | None = None,
        startup_s: float = 60.0,
    ):
        self.name, self.command, self.port, self.log = name, command, port, log
        self.probe, self.env, self.startup_s = probe, env or {}, startup_s
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ServiceProcess:
        if port_open(self.port):
            pytest.fail(f"{self.name}: port {self.port} is taken before start", pytrace=False)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=os.environ | self.env,
                cwd=REPO,
                start_new_session=True,
            )

        def ready() -> bool:
            if self.process.poll() is not None:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
                pytest.fail(f"{self.name} exited with {self.process.returncode} while starting:\n{tail}")
            return http_answers(self.url + self.probe)

        wait_until(ready, self.startup_s, f"{self.name} to answer at {self.url}{self.probe}", every_s=0.1)
        return self

    def kill(self) -> None:
        """SIGKILL the process group; return once none of it is left and the port is closed."""
        if self.process is None:
            return
        pgid = self.process.pid
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        wait_until(lambda: not group_alive(pgid), 10, f"{self.name}'s processes to exit")
        wait_until(lambda: not port_open(self.port), 10, f"{self.name}'s port {self.port} to close")

    def restart(self, command: list[str] | None = None) -> ServiceProcess:
        """Kill (if running) and start again on the same port (``command``: another command line)."""
        self.kill()
        self.command = command or self.command
        return self.start()


@pytest.fixture
def service_processes():
    """Make :class:`ServiceProcess` es that are killed when the test ends (whatever happened)."""
    made: list[ServiceProcess] = []

    def make(*args, **kwargs) -> ServiceProcess:
        service = ServiceProcess(*args, **kwargs)
        made.append(service)
        return service

    yield make
    for service in made:
        service.kill()


S3_KEYS = {"AWS_ACCESS_KEY_ID": "workembed", "AWS_SECRET_ACCESS_KEY": "workembed-local-secret"}


@pytest.fixture
def durable_s3(tmp_path, service_processes, monkeypatch):
    """A function that starts the local S3 server (moto) that keeps its objects in a folder
    (:mod:`tests.reliability.durable_s3`), with bucket ``reliability``; the ``AWS_*`` variables point at
    it. ``durable_s3(hold_after=REGEX)`` injects that module's hold. Returns the :class:`ServiceProcess`
    (``.data`` is the folder, ``.storage`` the settings for a config's ``storage:``)."""

    def start(hold_after: str | None = None) -> ServiceProcess:
        port, data = free_port(), tmp_path / "s3-data"
        command = [sys.executable, "-m", "tests.reliability.durable_s3", "-p", str(port), "--data", str(data)]
        if hold_after:
            command += ["--hold-after", hold_after]
        service = service_processes("s3", command, port, tmp_path / "s3.log", probe="/moto-api/")
        service.data = data
        service.storage = {
            "endpoint_url": service.url,
            "region": "us-east-1",
            "access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
            "secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        }
        env = {"AWS_ENDPOINT_URL": service.url, "AWS_DEFAULT_REGION": "us-east-1", **S3_KEYS}
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        service.start()
        import boto3

        boto3.client("s3", endpoint_url=service.url).create_bucket(Bucket="reliability")
        return service

    return start
