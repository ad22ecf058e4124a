"""MLflow's authentication on the rendered overlays: the tracking server runs the basic-auth app with its
settings in a ConfigMap and every password in a Secret (none in a ConfigMap or in a container's arguments),
the pipeline's Ray pods carry the pipeline user, the serving pods only the read-only serving user, and the
mlflow-users Job (which MLflow's NetworkPolicy admits) creates both. The last tests run the rendered pieces:
the init container's script, the server's arguments and the Job's environment, against a real server."""

from __future__ import annotations

import base64
import configparser
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.k8s.conftest import OVERLAYS, by_kind
from tests.k8s.test_hardening import selected
from workembed.deploy import k8s, mlflow_users

ADMIN, PIPELINE, SERVING = "workembed-mlflow-admin", "workembed-mlflow-pipeline", "workembed-mlflow-serving"
USER_SECRETS = {ADMIN, PIPELINE, SERVING}
ROOT = Path(__file__).resolve().parents[2]
CREDENTIALS_IN_URI = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@")


def secret_refs(node: Any) -> dict[str, bool]:
    """Every Secret a pod template reads (``envFrom.secretRef``, ``env.valueFrom.secretKeyRef``, a
    ``secret`` volume or projected source): name -> whether the reference is optional."""
    found: dict[str, bool] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef", "secret") and isinstance(value, dict):
                found[value.get("name") or value.get("secretName")] = bool(value.get("optional", False))
            found |= secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= secret_refs(item)
    return found


def templates(manifests: list[k8s.Manifest], kind: str):
    """``(Kind/name path, pod template)`` of every pod of the documents of ``kind``."""
    for m in manifests:
        if m.kind == kind:
            for path, template in k8s.pod_templates(m.doc):
                yield f"{m.kind}/{m.name} {path}", template


def deployment(manifests: list[k8s.Manifest]) -> dict[str, Any]:
    return by_kind(manifests, "Deployment")["mlflow"]["spec"]["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env") or []}


def mounted(spec: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume of ``spec`` that ``container`` mounts at the folder holding ``path``."""
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(Path(path).parent)]
    return next(v for v in spec["volumes"] if v["name"] == mount["name"])


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_mlflow_runs_basic_auth_with_settings_from_a_config_map_and_secrets(rendered, overlay):
    manifests = rendered[overlay]
    spec = deployment(manifests)
    (server,) = spec["containers"]
    (init,) = spec["initContainers"]
    assert "--app-name=basic-auth" in server["args"]
    assert server["image"].split("/")[-1].startswith("workembed-mlflow")
    # the ini the server reads is the one the init container writes, on a shared in-memory emptyDir
    path = env_of(server)["MLFLOW_AUTH_CONFIG_PATH"]["value"]
    assert env_of(init)["MLFLOW_AUTH_CONFIG_PATH"]["value"] == path
    volume = mounted(spec, server, path)
    assert volume["emptyDir"]["medium"] == "Memory" and mounted(spec, init, path) == volume
    assert next(m for m in server["volumeMounts"] if m["name"] == volume["name"])["readOnly"] is True
    # its settings: a ConfigMap with no database URI and no password
    (settings,) = [v for v in spec["volumes"] if "configMap" in v]
    config_map = by_kind(manifests, "ConfigMap")[settings["configMap"]["name"]]
    ini = configparser.ConfigParser()
    ini.read_string(config_map["data"]["basic_auth.ini"])
    assert ini["mlflow"]["default_permission"] == "READ"
    assert ini["mlflow"]["authorization_function"].endswith(":authenticate_request_basic_auth")
    assert not {"database_uri", "admin_password"} & set(ini["mlflow"])
    # the database URI reaches only the init container, from the Secret; the admin comes from its Secret
    uri = env_of(init)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]
    assert uri == {"name": "workembed-mlflow-db", "key": "MLFLOW_BACKEND_STORE_URI"}
    own = env_of(init)["MLFLOW_AUTH_DATABASE_URI"]["valueFrom"]["secretKeyRef"]
    assert own["name"] == "workembed-mlflow-db" and own["optional"] is True
    assert {"name": ADMIN} in [e.get("secretRef") for e in server["envFrom"]]
    assert ADMIN not in secret_refs(init)


def container_texts(manifests: list[k8s.Manifest]):
    for m in manifests:
        for where, container in k8s.containers(m.doc):
            yield f"{m.kind}/{m.name} {where}", [*container.get("command", []), *container.get("args", [])]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_no_password_in_a_config_map_or_container_arguments(rendered, overlay):
    manifests = rendered[overlay]
    for name, config_map in by_kind(manifests, "ConfigMap").items():
        for key, value in (config_map.get("data") or {}).items():
            assert not CREDENTIALS_IN_URI.search(value), f"ConfigMap/{name} {key}"
            assert not re.search(r"(?im)^\s*(database_uri|\w*password\w*)\s*=", value), f"ConfigMap/{name}"
    for where, texts in container_texts(manifests):
        for text in texts:
            assert not CREDENTIALS_IN_URI.search(text) and "PASSWORD=" not in text, where
    if overlay == "local":  # no generated secret value appears anywhere but in its Secret
        values = {
            base64.b64decode(value).decode()
            for doc in by_kind(manifests, "Secret").values()
            for key, value in doc["data"].items()
            if re.search(r"PASSWORD|SECRET|_KEY$|_URI$", key)
        }
        assert len(values) >= 7
        for m in manifests:
            if m.kind != "Secret":
                text = json.dumps(m.doc)
                assert not [v for v in values if v in text], m.describe()


def mlflow_secrets(template: dict[str, Any]) -> dict[str, bool]:
    return {name: optional for name, optional in secret_refs(template).items() if name in USER_SECRETS}


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_pipeline_pods_carry_the_pipeline_user_and_serving_pods_only_the_serving_user(rendered, overlay):
    manifests = rendered[overlay]
    pipeline = {
        where: t
        for kind in ("RayJob", "RayCluster")
        for where, t in templates(manifests, kind)
        if not where.endswith("submitterPodTemplate")
    }
    stages = {f"RayJob/workembed-{stage}" for stage in k8s.PIPELINE_STAGES}
    assert {where.split()[0] for where in pipeline} == stages | {"RayCluster/workembed-interactive"}
    assert len(pipeline) >= 2 * len(stages) + 2  # heads and worker groups
    for where, template in pipeline.items():
        assert mlflow_secrets(template) == {PIPELINE: False}, (
            where
        )  # required: a stage must not run as nobody
    for where, template in templates(manifests, "RayJob"):
        if where.endswith("submitterPodTemplate"):
            assert not mlflow_secrets(template), where
    serving = dict(templates(manifests, "RayService"))
    assert len(serving) == 2
    for where, template in serving.items():
        assert mlflow_secrets(template) == {SERVING: False}, where
    # the admin's Secret: MLflow itself and the Job that creates the users, nothing else
    readers = {
        f"{m.kind}/{m.name}"
        for m in manifests
        for _, template in k8s.pod_templates(m.doc)
        if ADMIN in secret_refs(template)
    }
    assert readers == {"Deployment/mlflow", "Job/mlflow-users"}
    # what the Secrets hold: the variables MLflow's client reads
    if overlay == "local":
        secrets = by_kind(manifests, "Secret")
        client = {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        assert set(secrets[PIPELINE]["data"]) == set(secrets[SERVING]["data"]) == client
        assert set(secrets[ADMIN]["data"]) == {*mlflow_users.ENV["admin"], "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    else:
        assert not by_kind(manifests, "Secret")  # the operator creates them (docs/kubernetes.md)


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_the_users_job_exists_reads_the_three_secrets_and_may_reach_mlflow(rendered, overlay):
    manifests = rendered[overlay]
    job = by_kind(manifests, "Job")["mlflow-users"]
    template = job["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["command"] == ["python", "-m", mlflow_users.__name__]
    assert re.fullmatch(r"(.*/)?workembed[:@].*", container["image"]), container["image"]
    env = env_of(container)
    for role, (name, password) in mlflow_users.ENV.items():
        secret = {"admin": ADMIN, "pipeline": PIPELINE, "serving": SERVING}[role]
        for variable in (name, password):
            ref = env[variable]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret and not ref.get("optional"), variable
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]["name"] == "workembed-env"
    assert job["metadata"].get("labels", {}).get("workembed.io/stage") is None  # applied with the platform
    # MLflow's NetworkPolicy admits it
    (rule,) = by_kind(manifests, "NetworkPolicy")["mlflow"]["spec"]["ingress"]
    (peer,) = rule["from"]
    assert "Job/mlflow-users spec.template" in selected(peer["podSelector"], manifests)


def test_auth_config_script_writes_the_secret_uri_as_mlflow_reads_it(rendered, tmp_path):
    """The init container's script, run here: '%' in a password survives MLflow's configparser, and a
    MLFLOW_AUTH_DATABASE_URI in the Secret takes the place of the backend store's."""
    spec = deployment(rendered["local"])
    (init,) = spec["initContainers"]
    (settings_mount,) = [m for m in init["volumeMounts"] if m.get("readOnly")]
    config_map = by_kind(rendered["local"], "ConfigMap")["mlflow-auth"]
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "basic_auth.ini").write_text(config_map["data"]["basic_auth.ini"])
    script = init["args"][0].replace(settings_mount["mountPath"], str(tmp_path / "settings"))
    assert init["command"] == ["python", "-c"]
    target = tmp_path / "auth" / "basic_auth.ini"
    target.parent.mkdir()

    def run(**env: str) -> str:
        base = {"PATH": os.environ["PATH"], "MLFLOW_AUTH_CONFIG_PATH": str(target)}
        subprocess.run([sys.executable, "-c", script], env=base | env, check=True)
        assert oct(target.stat().st_mode & 0o777) == "0o600"
        ini = configparser.ConfigParser()  # as mlflow.server.auth.config.read_auth_config reads it
        ini.read(target)
        return ini["mlflow"]["database_uri"]

    backend = "postgresql://mlflow:p%40ss%25w0rd@postgres:5432/mlflow"
    assert run(MLFLOW_BACKEND_STORE_URI=backend) == backend
    own = "postgresql://auth:s3%25cret@db:5432/mlflow_auth"
    assert run(MLFLOW_BACKEND_STORE_URI=backend, MLFLOW_AUTH_DATABASE_URI=own) == own
    assert "default_permission = READ" in target.read_text()


def test_users_job_refuses_missing_or_clashing_users_and_a_server_that_does_not_answer(capsys):
    env = {name: f"{role}-value" for role, names in mlflow_users.ENV.items() for name in names}
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    missing = {k: v for k, v in env.items() if k != "MLFLOW_SERVING_PASSWORD"}
    assert mlflow_users.main([], env=missing) == 2
    assert "MLFLOW_SERVING_PASSWORD not set" in capsys.readouterr().err
    clash = env | {"MLFLOW_SERVING_USERNAME": env["MLFLOW_PIPELINE_USERNAME"]}
    assert mlflow_users.main([], env=clash) == 2
    assert "three different names" in capsys.readouterr().err
    assert mlflow_users.main(["--wait-s", "0"], env=env) == 2
    err = capsys.readouterr().err
    assert "did not answer /health" in err and "-value" not in err  # never a password


# ------------------------------------------------------------------------ the rendered pieces, running


def secret_values(manifests: list[k8s.Manifest]) -> dict[str, dict[str, str]]:
    return {
        name: {key: base64.b64decode(value).decode() for key, value in doc["data"].items()}
        for name, doc in by_kind(manifests, "Secret").items()
    }


def resolve_env(container: dict[str, Any], secrets: dict[str, dict[str, str]]) -> dict[str, str]:
    """A container's ``env`` and ``envFrom`` Secrets as the kubelet would set them (ConfigMaps left out)."""
    env = {}
    for source in container.get("envFrom") or []:
        if "secretRef" in source:
            env |= secrets[source["secretRef"]["name"]]
    for item in container.get("env") or []:
        ref = (item.get("valueFrom") or {}).get("secretKeyRef")
        if "value" in item:
            env[item["name"]] = item["value"]
        elif ref and ref["key"] in secrets.get(ref["name"], {}):
            env[item["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def rest(
    uri: str, endpoint: str, user: tuple[str, str] | None, body: dict | None = None, method: str = "POST"
) -> tuple[int, Any]:
    """``method`` (with ``body``) or ``GET`` one MLflow REST endpoint as ``user``: (status, JSON)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{uri}{endpoint}", data=data, method=method if data else "GET")
    request.add_header("Content-Type", "application/json")
    if user is not None:
        token = base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read()
            return response.status, json.loads(body) if body.startswith(b"{") else None
    except urllib.error.HTTPError as err:
        return err.code, None


@contextlib.contextmanager
def mlflow_server(args: list[str], env: dict[str, str], log: Path):
    """``mlflow`` with the Deployment's arguments on 127.0.0.1 (a port of its own, one worker)."""
    port = free_port()
    args = [a for a in args if not a.startswith(("--host=", "--port=", "--workers="))]
    args += ["--host=127.0.0.1", f"--port={port}", "--workers=1"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("mlflow")), *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not (_listening(port) and rest(uri, "/health", None)[0] == 200):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        yield uri
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_job(env: dict[str, str]) -> tuple[int, dict[str, Any] | None, str]:
    """``python -m workembed.deploy.mlflow_users`` as the Job runs it, with ``env``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = mlflow_users.main(["--wait-s", "30"], env=env)
    return code, json.loads(out.getvalue()) if code == 0 else None, err.getvalue()


@pytest.mark.integration
def test_rendered_mlflow_and_users_job_give_the_pipeline_writes_and_serving_reads(rendered, tmp_path):
    manifests = rendered["local"]
    secrets = secret_values(manifests)
    spec = deployment(manifests)
    (server,) = spec["containers"]
    (init,) = spec["initContainers"]
    # the Secret's backend store is PostgreSQL in the cluster; here a SQLite file, shared with the user
    # store as the backend's database is there
    secrets["workembed-mlflow-db"] = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    (tmp_path / "settings").mkdir()
    (tmp_path / "settings" / "basic_auth.ini").write_text(
        by_kind(manifests, "ConfigMap")["mlflow-auth"]["data"]["basic_auth.ini"]
    )
    (settings_mount,) = [m for m in init["volumeMounts"] if m.get("readOnly")]
    script = init["args"][0].replace(settings_mount["mountPath"], str(tmp_path / "settings"))
    config_path = tmp_path / "basic_auth.ini"
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "MLFLOW_AUTH_CONFIG_PATH": str(config_path)}
    init_env = resolve_env(init, secrets) | {"MLFLOW_AUTH_CONFIG_PATH": str(config_path)}
    subprocess.run([sys.executable, "-c", script], env=base | init_env, check=True)

    server_env = resolve_env(server, secrets) | base
    server_env |= {"MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts")}
    server_env = {k: v for k, v in server_env.items() if not k.startswith("AWS_")}
    (job_container,) = by_kind(manifests, "Job")["mlflow-users"]["spec"]["template"]["spec"]["containers"]
    job_env = resolve_env(job_container, secrets)
    pipeline = (secrets[PIPELINE]["MLFLOW_TRACKING_USERNAME"], secrets[PIPELINE]["MLFLOW_TRACKING_PASSWORD"])
    serving = (secrets[SERVING]["MLFLOW_TRACKING_USERNAME"], secrets[SERVING]["MLFLOW_TRACKING_PASSWORD"])

    with mlflow_server(server["args"], server_env, tmp_path / "mlflow.log") as uri:
        job_env["MLFLOW_TRACKING_URI"] = uri
        assert rest(uri, "/api/2.0/mlflow/experiments/search?max_results=1", None)[0] == 401
        assert rest(uri, "/api/2.0/mlflow/experiments/search?max_results=1", pipeline)[0] == 401  # not yet

        code, report, err = run_job(job_env)
        assert code == 0, err
        assert sorted(report["created"]) == sorted([pipeline[0], serving[0]]) and report["role_created"]

        # the pipeline writes: an experiment, a registered model; the serving user reads them and may not
        # change them (no run, no alias move, no update)
        status, created = rest(uri, "/api/2.0/mlflow/experiments/create", pipeline, {"name": "k8s-auth"})
        assert status == 200
        assert (
            rest(uri, "/api/2.0/mlflow/registered-models/create", pipeline, {"name": "workembed"})[0] == 200
        )
        experiment = f"/api/2.0/mlflow/experiments/get?experiment_id={created['experiment_id']}"
        assert rest(uri, experiment, serving)[0] == 200
        assert rest(uri, "/api/2.0/mlflow/registered-models/get?name=workembed", serving)[0] == 200
        run = {"experiment_id": created["experiment_id"]}
        assert rest(uri, "/api/2.0/mlflow/runs/create", serving, run)[0] == 403
        assert rest(uri, "/api/2.0/mlflow/runs/create", pipeline, run)[0] == 200
        alias = {"name": "workembed", "alias": "champion", "version": "1"}
        assert rest(uri, "/api/2.0/mlflow/registered-models/alias", serving, alias)[0] == 403
        update = {"name": "workembed", "description": "changed"}
        assert rest(uri, "/api/2.0/mlflow/registered-models/update", serving, update, "PATCH")[0] == 403
        assert rest(uri, "/api/2.0/mlflow/registered-models/update", pipeline, update, "PATCH")[0] == 200

        # running it again changes nothing but setting the same passwords
        code, report, err = run_job(job_env)
        assert code == 0, err
        assert report == {
            "created": [],
            "password_set": [pipeline[0], serving[0]],
            "role_created": False,
            "granted": [],
        }

        # rotation: a new password in the pipeline's Secret, the Job again: the old one no longer signs in
        rotated = job_env | {"MLFLOW_PIPELINE_PASSWORD": "rotated-" + pipeline[1][:8]}
        assert run_job(rotated)[0] == 0
        assert rest(uri, experiment, pipeline)[0] == 401
        assert rest(uri, experiment, (pipeline[0], rotated["MLFLOW_PIPELINE_PASSWORD"]))[0] == 200

        # an admin password that is not the store's: a clear error, nothing changed
        code, _, err = run_job(rotated | {"MLFLOW_AUTH_ADMIN_PASSWORD": "not-the-admin-password"})
        assert code == 2 and "refused the password of admin" in err and "not-the-admin" not in err
