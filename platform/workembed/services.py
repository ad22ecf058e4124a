"""Local development services on 127.0.0.1: a Ray head, an MLflow tracking server, an S3-compatible server.

``workembed services up`` starts whichever of them is not running yet and waits until each answers;
``down`` stops exactly the processes ``up`` started (tracked by process group in ``state_dir``), never
another Ray cluster or server on the machine. Logs and PID files live in ``state_dir``; the shell
environment clients need (``RAY_ADDRESS``, ``MLFLOW_TRACKING_URI``, ``AWS_ENDPOINT_URL``, ...) is written
to ``state_dir/env``.

MLflow runs its basic-auth app by default (``mlflow.auth``): every request needs a user. On first start
``up`` generates three passwords into ``state_dir/mlflow_credentials.json`` (mode 0600, never logged): the
admin, the pipeline user (may write every experiment and registered model: ``state_dir/env`` exports it as
``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``, and the local Ray head passes it to its jobs)
and the read-only serving user (``state_dir/serving.env``, for the Serve application). Other users read
what they did not create (``default_permission = READ``). :func:`rotate_mlflow_credentials` (``workembed
services rotate-mlflow-credentials``) gives the pipeline and serving users (and the admin) new passwords.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from pydantic import Field, field_validator

from workembed.config import Config
from workembed.errors import ClusterError

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
S3_ACCESS_KEY = "workembed"
S3_SECRET_KEY = "workembed-local-secret"
S3_REGION = "us-east-1"
MLFLOW_USERS = {"admin": "admin", "pipeline": "workembed-pipeline", "serving": "workembed-serving"}
"""The MLflow users ``up`` creates, by role: the admin, the pipeline (writes) and serving (reads)."""
MLFLOW_WRITER_ROLE = "workembed-writer"
"""The MLflow role of the pipeline user: EDIT on every experiment and registered model."""
MLFLOW_CREDENTIALS = "mlflow_credentials.json"
USERNAME_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"


class RayHeadConfig(Config):
    """The local Ray head (dashboard, Jobs API, GCS)."""

    enabled: bool = Field(True, description="Start the Ray head.")
    port: int = Field(6379, description="GCS port of the head node.")
    dashboard_port: int = Field(8265, description="Dashboard and Jobs API port (ray job submit --address).")
    client_port: int = Field(10001, description="Ray Client port (ray://127.0.0.1:PORT).")
    agent_port: int = Field(
        52365, description="Dashboard agent HTTP port; jobs are submitted through it, so `up` waits for it."
    )
    num_cpus: int = Field(6, ge=1, description="Logical CPUs; more than cores so data tasks are not starved.")


class MlflowServerConfig(Config):
    """The local MLflow tracking server (SQLite store)."""

    enabled: bool = Field(True, description="Start the MLflow server.")
    port: int = Field(5000, description="Tracking server port (MLFLOW_TRACKING_URI=http://127.0.0.1:PORT).")
    artifacts: str = Field(
        "s3",
        description="Artifact store: 's3' (a bucket on the local S3 server) "
        "or 'local' (state_dir/mlartifacts).",
    )
    auth: bool = Field(
        True,
        description="MLflow's basic-auth app: an admin, a pipeline user that may write (state_dir/env) and a "
        "read-only serving user (state_dir/serving.env), passwords generated on first start into "
        "state_dir/mlflow_credentials.json (0600). false: no authentication, anyone who reaches the port "
        "may move an alias.",
    )

    @field_validator("artifacts")
    @classmethod
    def _known_store(cls, value: str) -> str:
        if value not in ("s3", "local"):
            raise ValueError("must be 's3' or 'local'")
        return value


class S3ServerConfig(Config):
    """The local S3-compatible server (moto)."""

    enabled: bool = Field(True, description="Start the S3 server.")
    port: int = Field(9000, description="S3-compatible server port (AWS_ENDPOINT_URL=http://127.0.0.1:PORT).")
    buckets: list[str] = Field(default_factory=lambda: ["workembed"], description="Buckets created at start.")


class ServicesConfig(Config):
    """Where the local services listen and keep their state."""

    state_dir: str = Field(
        ".workembed/services",
        validate_default=True,
        description="PID files, logs, the SQLite store, env file.",
    )
    startup_timeout_s: float = Field(90.0, gt=0, description="How long to wait for a service to answer.")
    ray: RayHeadConfig = Field(default_factory=RayHeadConfig)
    mlflow: MlflowServerConfig = Field(default_factory=MlflowServerConfig)
    s3: S3ServerConfig = Field(default_factory=S3ServerConfig)

    @field_validator("state_dir")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return str(Path(value).expanduser().resolve())


class ServiceError(ClusterError):
    """A service did not start or stop as asked."""


@dataclass(frozen=True)
class Service:
    """One managed process group."""

    name: str
    command: list[str]
    env: dict[str, str]
    url: str
    probe: str  # an HTTP path answered with 200 once the service is ready
    also_ready: tuple[str, ...] = ()  # further URLs that must answer 200 before it counts as ready


def _bin(name: str) -> str:
    """An executable from this environment (beside the running interpreter) or from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise ServiceError(f"'{name}' not found beside {sys.executable} or on PATH")
    return found


def _path_with_this_environment() -> str:
    """PATH with this interpreter's folder first, so that a job's ``python`` is this environment's."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def ray_temp_dir(config: ServicesConfig) -> str:
    """A short, per-cluster temp dir (Ray's socket paths must stay under ~100 characters)."""
    return f"/tmp/workembed-ray-{os.getuid()}-{config.ray.port}"


def s3_env(config: ServicesConfig) -> dict[str, str]:
    """Environment variables that point boto3, s3fs and pyarrow at the local S3 server."""
    return {
        "AWS_ENDPOINT_URL": f"http://{LOOPBACK}:{config.s3.port}",
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
    }


def services_env(config: ServicesConfig) -> dict[str, str]:
    """``MLFLOW_TRACKING_URI`` (with the pipeline user's credentials) and the ``AWS_*`` variables of the
    enabled MLflow and S3 servers."""
    env: dict[str, str] = {}
    if config.mlflow.enabled:
        env["MLFLOW_TRACKING_URI"] = f"http://{LOOPBACK}:{config.mlflow.port}"
        env |= mlflow_user_env(config, "pipeline")
    if config.s3.enabled:
        env |= s3_env(config)
    return env


def serving_env(config: ServicesConfig) -> dict[str, str]:
    """What a Serve application needs to read the registry: ``MLFLOW_TRACKING_URI`` and the read-only serving
    user's credentials (``state_dir/serving.env``)."""
    if not config.mlflow.enabled:
        return {}
    env = {"MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{config.mlflow.port}"}
    return env | mlflow_user_env(config, "serving")


# ------------------------------------------------------------------------------------ MLflow users


def mlflow_credentials_path(config: ServicesConfig) -> Path:
    return Path(config.state_dir) / MLFLOW_CREDENTIALS


def mlflow_credentials(config: ServicesConfig) -> dict[str, Any] | None:
    """The generated MLflow credentials (``secret_key`` and ``{role: {username, password}}``), if any."""
    path = mlflow_credentials_path(config)
    if not (config.mlflow.enabled and config.mlflow.auth and path.is_file()):
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def mlflow_user_env(config: ServicesConfig, role: str) -> dict[str, str]:
    """``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` of ``role`` (``admin``, ``pipeline``,
    ``serving``); empty without authentication or before the first start."""
    found = mlflow_credentials(config)
    if found is None:
        return {}
    return {USERNAME_ENV: found[role]["username"], PASSWORD_ENV: found[role]["password"]}


def ensure_mlflow_credentials(config: ServicesConfig) -> dict[str, Any]:
    """The MLflow credentials of ``state_dir``, generated (random passwords, file mode 0600) when absent, and
    the auth app's config ``state_dir/mlflow_auth.ini`` (no secret in it)."""
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    path = mlflow_credentials_path(config)
    if not path.is_file():
        users = {role: {"username": name, "password": _password()} for role, name in MLFLOW_USERS.items()}
        _write_private(path, json.dumps({"secret_key": secrets.token_hex(32), **users}, indent=2))
    (state / "mlflow_auth.ini").write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{state / 'mlflow_auth.db'}\n"
        f"admin_username = {MLFLOW_USERS['admin']}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n",
        encoding="utf-8",
    )
    return json.loads(path.read_text(encoding="utf-8"))


def rotate_mlflow_credentials(config: ServicesConfig, roles: tuple[str, ...] = tuple(MLFLOW_USERS)) -> dict:
    """New passwords for the MLflow users of ``roles`` (on the running server, through the admin), written to
    the credentials and env files. Clients must source the env files again; the Ray head and Serve
    applications keep the old passwords until restarted (``services down`` / ``up``, a new deployment)."""
    found = mlflow_credentials(config)
    if found is None:
        raise ServiceError("no MLflow credentials to rotate: MLflow auth is off or `services up` never ran")
    if not _answers(next(s for s in _services(config) if s.name == "mlflow")):
        raise ServiceError(
            f"MLflow at http://{LOOPBACK}:{config.mlflow.port} does not answer: services up first"
        )
    UPDATE_USER_PASSWORD = _auth_routes().UPDATE_USER_PASSWORD

    for role in sorted(roles, key=lambda role: role == "admin"):  # the admin's own password last
        password = _password()
        _mlflow_admin_call(
            config,
            found,
            UPDATE_USER_PASSWORD,
            "PATCH",
            json={"username": found[role]["username"], "password": password}
            | ({"current_password": found[role]["password"]} if role == "admin" else {}),
        )
        found[role]["password"] = password
        _write_private(mlflow_credentials_path(config), json.dumps(found, indent=2))
        logger.info("mlflow: new password for %s", found[role]["username"])
    _write_env_files(config)
    return {"rotated": [found[role]["username"] for role in roles], **_mlflow_usage(config)}


def _password() -> str:
    return secrets.token_urlsafe(24)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (0600 from the start, replaced atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(path)


def _mlflow_admin_call(config: ServicesConfig, found: dict[str, Any], endpoint: str, method: str, **kwargs):
    """One call of MLflow's auth API as the admin; the answer's JSON, None for 404."""
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    admin = found["admin"]
    creds = MlflowHostCreds(
        f"http://{LOOPBACK}:{config.mlflow.port}", username=admin["username"], password=admin["password"]
    )
    response = http_request(creds, endpoint, method, max_retries=0, **kwargs)
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ServiceError(
            f"mlflow: {method} {endpoint} as {admin['username']} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return response.json() if response.content else {}


def _auth_routes():
    """MLflow's auth route names (importing its server package warns about Starlette internals: not ours)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="starlette.middleware.wsgi is deprecated")
        from mlflow.server.auth import routes
    return routes


def _ensure_mlflow_users(config: ServicesConfig) -> None:
    """Create the pipeline and serving users and the pipeline's writer role when missing."""
    routes = _auth_routes()

    found = ensure_mlflow_credentials(config)
    for role in ("pipeline", "serving"):
        user = found[role]
        if _mlflow_admin_call(config, found, routes.GET_USER, "GET", params={"username": user["username"]}):
            continue
        _mlflow_admin_call(config, found, routes.CREATE_USER, "POST", json=user)
        logger.info("mlflow: created user %s", user["username"])
    roles = _mlflow_admin_call(config, found, routes.LIST_ROLES, "GET", params={"workspace": "default"})
    writer = next((r for r in (roles or {}).get("roles", []) if r["name"] == MLFLOW_WRITER_ROLE), None)
    if writer is None:
        writer = _mlflow_admin_call(
            config,
            found,
            routes.CREATE_ROLE,
            "POST",
            json={"workspace": "default", "name": MLFLOW_WRITER_ROLE},
        )["role"]
        for resource in ("experiment", "registered_model"):
            grant = {"role_id": writer["id"], "resource_type": resource, "resource_pattern": "*"}
            _mlflow_admin_call(
                config, found, routes.ADD_ROLE_PERMISSION, "POST", json=grant | {"permission": "EDIT"}
            )
    pipeline = found["pipeline"]["username"]
    held = _mlflow_admin_call(config, found, routes.LIST_USER_ROLES, "GET", params={"username": pipeline})
    if not any(r["id"] == writer["id"] for r in (held or {}).get("roles", [])):
        _mlflow_admin_call(
            config, found, routes.ASSIGN_ROLE, "POST", json={"username": pipeline, "role_id": writer["id"]}
        )


def _mlflow_usage(config: ServicesConfig) -> dict[str, Any]:
    """Where the MLflow users' credentials are (never the passwords)."""
    state = Path(config.state_dir)
    return {
        "users": {role: name for role, name in MLFLOW_USERS.items()},
        "pipeline_env": str(state / "env"),
        "serving_env": str(state / "serving.env"),
        "credentials": str(mlflow_credentials_path(config)),
    }


def _write_env_files(config: ServicesConfig) -> None:
    """``state_dir/env`` (clients and the pipeline) and, with MLflow auth, ``state_dir/serving.env``."""
    state = Path(config.state_dir)
    _write_private(state / "env", "".join(f"export {k}={v}\n" for k, v in client_env(config).items()))
    if mlflow_credentials(config) is not None:
        _write_private(
            state / "serving.env", "".join(f"export {k}={v}\n" for k, v in serving_env(config).items())
        )


def client_env(config: ServicesConfig) -> dict[str, str]:
    """What a shell needs to talk to the running services."""
    env: dict[str, str] = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    if config.ray.enabled:
        env |= {"RAY_ADDRESS": f"http://{LOOPBACK}:{config.ray.dashboard_port}"} | ray_auth_env(config)
    return env | services_env(config)


def ray_auth_env(config: ServicesConfig) -> dict[str, str]:
    """Token authentication for the local Ray head: the token lives in ``state_dir/ray_auth_token``."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(Path(config.state_dir) / "ray_auth_token")}


def _ensure_ray_token(config: ServicesConfig) -> None:
    path = Path(ray_auth_env(config)["RAY_AUTH_TOKEN_PATH"])
    if not path.is_file():
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)


def _services(config: ServicesConfig) -> list[Service]:
    state = Path(config.state_dir)
    base_env = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    services: list[Service] = []
    if config.s3.enabled:
        services.append(
            Service(
                name="s3",
                command=[_bin("moto_server"), "-H", LOOPBACK, "-p", str(config.s3.port)],
                env=base_env | s3_env(config),
                url=f"http://{LOOPBACK}:{config.s3.port}",
                probe="/moto-api/",
            )
        )
    if config.mlflow.enabled:
        env = base_env | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job workers
        if config.mlflow.artifacts == "s3":
            if not config.s3.enabled:
                raise ServiceError("mlflow.artifacts=s3 needs the S3 server (s3.enabled=true)")
            artifacts = f"s3://{config.s3.buckets[0]}/mlflow-artifacts"
            env |= s3_env(config) | {"MLFLOW_S3_ENDPOINT_URL": f"http://{LOOPBACK}:{config.s3.port}"}
        else:
            artifacts = str(state / "mlartifacts")
        auth: list[str] = []
        found = mlflow_credentials(config)
        if config.mlflow.auth:
            auth = ["--app-name", "basic-auth"]
            env |= {"MLFLOW_AUTH_CONFIG_PATH": str(state / "mlflow_auth.ini")}
        if found is not None:
            env |= {
                "MLFLOW_FLASK_SERVER_SECRET_KEY": found["secret_key"],
                "MLFLOW_AUTH_ADMIN_USERNAME": found["admin"]["username"],
                "MLFLOW_AUTH_ADMIN_PASSWORD": found["admin"]["password"],  # read on the first start only
            }
        services.append(
            Service(
                name="mlflow",
                command=[
                    _bin("mlflow"),
                    "server",
                    *auth,
                    "--backend-store-uri",
                    f"sqlite:///{state / 'mlflow.db'}",
                    "--artifacts-destination",
                    artifacts,
                    "--host",
                    LOOPBACK,
                    "--port",
                    str(config.mlflow.port),
                    "--workers",
                    "1",
                ],
                env=env,
                url=f"http://{LOOPBACK}:{config.mlflow.port}",
                probe="/health",
            )
        )
    if config.ray.enabled:
        services.append(
            Service(
                name="ray",
                command=[
                    _bin("ray"),
                    "start",
                    "--head",
                    "--block",
                    "--node-ip-address",
                    LOOPBACK,
                    "--port",
                    str(config.ray.port),
                    "--dashboard-host",
                    LOOPBACK,
                    "--dashboard-port",
                    str(config.ray.dashboard_port),
                    "--ray-client-server-port",
                    str(config.ray.client_port),
                    "--dashboard-agent-listen-port",
                    str(config.ray.agent_port),
                    "--num-cpus",
                    str(config.ray.num_cpus),
                    "--temp-dir",
                    ray_temp_dir(config),
                    "--disable-usage-stats",
                ],
                # jobs and workers on the local head reach the local MLflow and S3 servers by default
                env=base_env | ray_auth_env(config) | services_env(config),
                url=f"http://{LOOPBACK}:{config.ray.dashboard_port}",
                probe="/api/version",
                also_ready=(f"http://{LOOPBACK}:{config.ray.agent_port}/api/local_raylet_healthz",),
            )
        )
    return services


# ------------------------------------------------------------------------------------------ lifecycle


def _pid_file(config: ServicesConfig, name: str) -> Path:
    return Path(config.state_dir) / f"{name}.pid"


def _running_pid(config: ServicesConfig, name: str) -> int | None:
    """The recorded process-group leader of a service, if that process is still alive."""
    path = _pid_file(config, name)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    try:
        proc = psutil.Process(record["pid"])
        if proc.create_time() == record["create_time"] and proc.status() != psutil.STATUS_ZOMBIE:
            return record["pid"]
    except psutil.NoSuchProcess:
        pass
    return None


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _answers(service: Service) -> bool:
    return all(_answers_200(service, url) for url in (service.url + service.probe, *service.also_ready))


def _answers_200(service: Service, url: str) -> bool:
    request = urllib.request.Request(url)
    token_path = service.env.get("RAY_AUTH_TOKEN_PATH")
    if token_path and Path(token_path).is_file():
        request.add_header("Authorization", f"Bearer {Path(token_path).read_text().strip()}")
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def up(config: ServicesConfig) -> dict[str, str]:
    """Start the enabled services that are not running; wait until each answers. Returns their URLs."""
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    if config.mlflow.enabled and config.mlflow.auth:
        ensure_mlflow_credentials(config)  # before the services are built: the Ray head's env names the user
    urls: dict[str, str] = {}
    started: list[str] = []
    try:
        for service in _services(config):
            urls[service.name] = service.url
            if _running_pid(config, service.name):
                logger.info("%s: already running at %s", service.name, service.url)
                continue
            _start(config, service)
            started.append(service.name)
    except BaseException:
        for name in reversed(started):  # leave nothing half-started behind
            _stop_group(config, name)
        raise
    if config.mlflow.enabled and config.mlflow.auth:
        _ensure_mlflow_users(config)
        usage = _mlflow_usage(config)
        logger.info(
            "mlflow: basic auth; `source %s` exports the pipeline user's MLFLOW_TRACKING_USERNAME and "
            "MLFLOW_TRACKING_PASSWORD, %s has the read-only serving user's, %s all passwords (admin: %s)",
            usage["pipeline_env"],
            usage["serving_env"],
            usage["credentials"],
            MLFLOW_USERS["admin"],
        )
    _write_env_files(config)
    return urls


def _start(config: ServicesConfig, service: Service) -> None:
    state = Path(config.state_dir)
    if _port_open(_port_of(service)):
        raise ServiceError(
            f"{service.name}: port {_port_of(service)} on {LOOPBACK} is taken by another process; "
            f"choose another with --set {service.name}.port=PORT"
        )
    logger.info("%s: starting at %s (log: %s)", service.name, service.url, state / f"{service.name}.log")
    if service.name == "ray":
        _ensure_ray_token(config)
    with open(state / f"{service.name}.log", "ab") as log_file:
        proc = subprocess.Popen(
            service.command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ | service.env | {"PATH": _path_with_this_environment()},
            cwd=state,
            start_new_session=True,
        )
    _pid_file(config, service.name).write_text(
        json.dumps({"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()})
    )
    _wait_ready(config, service, proc)
    if service.name == "s3":
        _create_buckets(config)


def _wait_ready(config: ServicesConfig, service: Service, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + config.startup_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            _stop_group(config, service.name)
            log_path = Path(config.state_dir) / f"{service.name}.log"
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-5:])
            raise ServiceError(
                f"{service.name} exited with code {proc.returncode} while starting; "
                f"end of {log_path}:\n{tail}"
            )
        if _answers(service):
            return
        time.sleep(0.5)
    _stop_group(config, service.name)
    raise ServiceError(f"{service.name} did not answer at {service.url} within {config.startup_timeout_s} s")


def _create_buckets(config: ServicesConfig) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://{LOOPBACK}:{config.s3.port}",
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name=S3_REGION,
    )
    existing = {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}
    for bucket in config.s3.buckets:
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)


def group_processes(pgid: int) -> list[psutil.Process]:
    """Every live process in a process group."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    return found


def _stop_group(config: ServicesConfig, name: str, grace_s: float = 20.0) -> bool:
    """Stop a recorded process group: SIGTERM, then SIGKILL whatever is left after ``grace_s``."""
    path = _pid_file(config, name)
    if not path.is_file():
        return False
    pgid = json.loads(path.read_text())["pid"]
    stopped = False
    if _running_pid(config, name) or group_processes(pgid):
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_processes(pgid):
                time.sleep(0.2)
            if not group_processes(pgid):
                break
        stopped = True
    path.unlink(missing_ok=True)
    if name == "ray":
        # A killed head leaves its address marker behind; a later ray.init() would try to join it.
        Path(ray_temp_dir(config), "ray_current_cluster").unlink(missing_ok=True)
    return stopped


def down(config: ServicesConfig) -> list[str]:
    """Stop the services ``up`` started (in reverse order); returns the names stopped."""
    stopped = []
    for service in reversed(_services(config)):
        if _stop_group(config, service.name):
            logger.info("%s: stopped", service.name)
            stopped.append(service.name)
    return stopped


def status(config: ServicesConfig) -> dict[str, dict[str, object]]:
    """Per service: whether its process runs, whether it answers, its URL."""
    report = {}
    for service in _services(config):
        pid = _running_pid(config, service.name)
        report[service.name] = {
            "running": pid is not None,
            "pid": pid,
            "answers": _answers(service),
            "url": service.url,
        }
        if service.name == "mlflow" and config.mlflow.auth:
            report[service.name]["auth"] = _mlflow_usage(config)
    return report
