"""MLflow's users on Kubernetes: what the ``mlflow-users`` Job (``k8s/base/mlflow.yaml``) runs.

``python -m workembed.deploy.mlflow_users`` makes the tracking server's user store agree with the Secrets,
and may run any number of times. As the admin (``MLFLOW_AUTH_ADMIN_USERNAME`` / ``..._PASSWORD``, Secret
``workembed-mlflow-admin``) it creates the pipeline user (``MLFLOW_PIPELINE_USERNAME`` / ``..._PASSWORD``,
Secret ``workembed-mlflow-pipeline``) and the serving user (``MLFLOW_SERVING_USERNAME`` / ``..._PASSWORD``,
Secret ``workembed-mlflow-serving``) when missing, sets their passwords to the Secrets' (a rotated Secret
takes effect when the Job runs again) and gives the pipeline user the writer role: EDIT on every experiment
and registered model. Everyone else only reads (``default_permission = READ``). These are the users and
role ``workembed services up`` creates on a workstation (:mod:`workembed.services`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from workembed.errors import ConfigError, RegistryError, WorkembedError
from workembed.logs import setup_logging
from workembed.services import MLFLOW_WRITER_ROLE

logger = logging.getLogger("workembed.deploy.mlflow_users")  # also when run as __main__

WRITER_GRANTS = (("experiment", "*", "EDIT"), ("registered_model", "*", "EDIT"))
"""``(resource type, pattern, permission)`` of the writer role."""
WORKSPACE = "default"
ENV = {
    "admin": ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"),
    "pipeline": ("MLFLOW_PIPELINE_USERNAME", "MLFLOW_PIPELINE_PASSWORD"),
    "serving": ("MLFLOW_SERVING_USERNAME", "MLFLOW_SERVING_PASSWORD"),
}
"""The variables each user's name and password come from, by role."""


@dataclass(frozen=True)
class User:
    username: str
    password: str

    def __repr__(self) -> str:  # never the password
        return f"User({self.username!r})"


def users_from_env(env: Mapping[str, str]) -> dict[str, User]:
    """The admin, pipeline and serving users of :data:`ENV`; every variable must be set and non-empty, and
    the three names must differ."""
    missing = [name for names in ENV.values() for name in names if not env.get(name)]
    if missing:
        raise ConfigError(f"mlflow users: {', '.join(missing)} not set (from the workembed-mlflow-* Secrets)")
    users = {role: User(env[name], env[password]) for role, (name, password) in ENV.items()}
    if len({user.username for user in users.values()}) != len(users):
        raise ConfigError(
            "mlflow users: the admin, pipeline and serving users need three different names, got "
            + ", ".join(f"{role}={user.username}" for role, user in users.items())
        )
    return users


def wait_until_up(uri: str, timeout_s: float = 300.0, interval_s: float = 5.0) -> None:
    """Return once ``uri``'s ``/health`` answers 200; :class:`RegistryError` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10) as response:
                if response.status == 200:
                    return
                reason = f"HTTP {response.status}"
        except (urllib.error.URLError, OSError) as err:
            reason = str(getattr(err, "reason", err))
        if time.monotonic() >= deadline:
            raise RegistryError(f"mlflow at {uri} did not answer /health within {timeout_s:.0f}s: {reason}")
        time.sleep(interval_s)


def _call(uri: str, user: User, endpoint: str, method: str, **kwargs) -> Any:
    """One call of MLflow's REST API as ``user``; the answer's JSON, None for 404."""
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    creds = MlflowHostCreds(uri, username=user.username, password=user.password)
    response = http_request(creds, endpoint, method, max_retries=0, **kwargs)
    if response.status_code == 404:
        return None
    if response.status_code == 401:
        raise RegistryError(
            f"mlflow at {uri} refused the password of {user.username} on {endpoint}: for the admin, the "
            "Secret no longer holds the password MLflow's user store has (set on its first start; see "
            "docs/kubernetes.md, Security)"
        )
    if response.status_code != 200:
        raise RegistryError(
            f"mlflow: {method} {endpoint} as {user.username} answered {response.status_code}: "
            f"{response.text[:300]}"
        )
    return response.json() if response.content else {}


def ensure_users(uri: str, users: Mapping[str, User]) -> dict[str, Any]:
    """Create or update the pipeline and serving users and the writer role on the server at ``uri`` (see
    the module docstring); returns what changed (names only, never a password)."""
    from mlflow.server.auth import routes

    admin = users["admin"]
    me = _call(uri, admin, routes.GET_CURRENT_USER, "GET")
    if not (me or {}).get("user", {}).get("is_admin"):
        raise RegistryError(f"mlflow: {admin.username} is not an admin of {uri}")
    report: dict[str, Any] = {"created": [], "password_set": [], "role_created": False, "granted": []}
    for role in ("pipeline", "serving"):
        user = users[role]
        if _call(uri, admin, routes.GET_USER, "GET", params={"username": user.username}) is None:
            _call(
                uri,
                admin,
                routes.CREATE_USER,
                "POST",
                json={"username": user.username, "password": user.password},
            )
            report["created"].append(user.username)
            logger.info("mlflow: created user %s", user.username)
        else:  # an admin setting another user's password: no current password needed
            _call(
                uri,
                admin,
                routes.UPDATE_USER_PASSWORD,
                "PATCH",
                json={"username": user.username, "password": user.password},
            )
            report["password_set"].append(user.username)
            logger.info("mlflow: set the password of %s from its Secret", user.username)

    found = _call(uri, admin, routes.LIST_ROLES, "GET", params={"workspace": WORKSPACE}) or {}
    writer = next((r for r in found.get("roles", []) if r["name"] == MLFLOW_WRITER_ROLE), None)
    if writer is None:
        writer = _call(
            uri, admin, routes.CREATE_ROLE, "POST", json={"workspace": WORKSPACE, "name": MLFLOW_WRITER_ROLE}
        )["role"]
        report["role_created"] = True
        logger.info("mlflow: created role %s", MLFLOW_WRITER_ROLE)
    held = _call(uri, admin, routes.LIST_ROLE_PERMISSIONS, "GET", params={"role_id": writer["id"]}) or {}
    have = {(p["resource_type"], p["resource_pattern"]): p for p in held.get("role_permissions", [])}
    for resource, pattern, permission in WRITER_GRANTS:
        grant = have.get((resource, pattern))
        if grant is None:
            _call(
                uri,
                admin,
                routes.ADD_ROLE_PERMISSION,
                "POST",
                json={
                    "role_id": writer["id"],
                    "resource_type": resource,
                    "resource_pattern": pattern,
                    "permission": permission,
                },
            )
        elif grant["permission"] != permission:
            _call(
                uri,
                admin,
                routes.UPDATE_ROLE_PERMISSION,
                "PATCH",
                json={"role_permission_id": grant["id"], "permission": permission},
            )
        else:
            continue
        report["granted"].append(f"{permission} {resource} {pattern}")

    pipeline = users["pipeline"].username
    assigned = _call(uri, admin, routes.LIST_USER_ROLES, "GET", params={"username": pipeline}) or {}
    if not any(r["id"] == writer["id"] for r in assigned.get("roles", [])):
        _call(uri, admin, routes.ASSIGN_ROLE, "POST", json={"username": pipeline, "role_id": writer["id"]})
        report["granted"].append(f"{MLFLOW_WRITER_ROLE} to {pipeline}")
        logger.info("mlflow: gave %s the role %s", pipeline, MLFLOW_WRITER_ROLE)
    for role in ("pipeline", "serving"):  # each Secret's password now signs its user in
        _call(uri, users[role], routes.GET_CURRENT_USER, "GET")
    return report


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workembed.deploy.mlflow_users", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="the MLflow server (default: $MLFLOW_TRACKING_URI)"
    )
    parser.add_argument(
        "--wait-s", type=float, default=300.0, help="how long to wait for the server's /health"
    )
    args = parser.parse_args(argv)
    env = os.environ if env is None else env
    setup_logging()
    try:
        uri = args.tracking_uri or env.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise ConfigError("mlflow users: no --tracking-uri and no MLFLOW_TRACKING_URI")
        users = users_from_env(env)
        wait_until_up(uri, args.wait_s)
        report = ensure_users(uri, users)
    except WorkembedError as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
