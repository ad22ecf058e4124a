"""Deploying a Serve config document in-process, as ``serve run serve/config.yaml`` does, and what tests
read of the running deployments."""

from __future__ import annotations

import time


def deploy_serve_config(document: dict, app: str, timeout_s: float = 600) -> None:
    """Deploy ``document`` (a Serve config) and wait until application ``app`` runs; RuntimeError when it
    fails to deploy, TimeoutError when it is not running after ``timeout_s``."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(document), _blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None and status.status == "RUNNING":
            return
        if status is not None and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"application {app} {status.status}: {status.message}")
        time.sleep(0.5)
    raise TimeoutError(
        f"application {app} not running after {timeout_s} s: {serve.status().applications.get(app)}"
    )


def start_serve(document: dict, port: int) -> None:
    """Start Serve with ``document``'s ``http_options`` (request timeout included) on 127.0.0.1:``port``."""
    from ray import serve

    serve.start(http_options={**document.get("http_options", {}), "host": "127.0.0.1", "port": port})


def replica_names(app: str, deployment: str) -> set[str]:
    """The actor names of the live replicas of ``deployment`` (a restarted replica gets a new name)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith(prefix)
    }
