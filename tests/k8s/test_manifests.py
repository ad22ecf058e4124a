"""The Kubernetes manifests under k8s/: rendered with real kustomize (``kubectl kustomize``), validated
offline (built-in kinds with kubernetes-validate, KubeRay kinds against their CRD schemas), one Ray version
everywhere, serveConfigV2 generated from serve/config.yaml."""

from __future__ import annotations

import os
import re
import shutil
import tomllib

import pytest
import ray
import yaml

from tests.k8s.conftest import BUNDLED_SCHEMAS, OVERLAYS, ROOT, SHARED_SCHEMAS, by_kind
from workembed.deploy import k8s


def test_bundled_schemas_equal_the_shared_crds():
    if not SHARED_SCHEMAS.is_dir():
        pytest.skip(f"no {SHARED_SCHEMAS} to compare the bundle with")
    assert k8s.crd_documents(BUNDLED_SCHEMAS) == [doc for doc in k8s.crd_documents(SHARED_SCHEMAS) if doc]
    assert k8s.kuberay_schemas(BUNDLED_SCHEMAS) == k8s.kuberay_schemas(SHARED_SCHEMAS)


# ------------------------------------------------------------------------------------ rendered overlays


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_rendered_document_validates(rendered, schemas, overlay):
    manifests = rendered[overlay]
    assert k8s.validate_manifests(manifests, overlay, schemas) == []
    kinds = sorted({m.kind for m in manifests})
    assert {"RayCluster", "RayJob", "RayService", "Deployment", "Service", "ConfigMap"} <= set(kinds)
    assert set(by_kind(manifests, "Deployment")) >= {"mlflow"}
    assert all(m.doc["metadata"].get("namespace") == "workembed" for m in manifests if m.kind != "Namespace")
    assert all(m.origin.startswith(("k8s/", "a generator in k8s/")) for m in manifests)
    # KubeRay names a RayCluster's and a RayService's head Service <name>-head-svc: names must differ
    assert not set(by_kind(manifests, "RayCluster")) & set(by_kind(manifests, "RayService"))


def test_local_overlay_is_self_contained_and_gpu_overlay_has_gpu_workers(rendered):
    local, gpu = rendered["local"], rendered["gpu"]
    # local: PostgreSQL, MinIO and every Secret the pods name come with the overlay
    assert {"workembed-s3", "workembed-mlflow-db", "workembed-api"} <= set(by_kind(local, "Secret"))
    assert {"mlflow", "minio", "postgres"} <= set(by_kind(local, "Service"))
    assert by_kind(local, "ConfigMap")["workembed-env"]["data"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    # gpu: no Secrets with credentials in the repository; GPU groups on the GPU nodes
    assert by_kind(gpu, "Secret") == {}
    cluster = by_kind(gpu, "RayCluster")["workembed-interactive"]["spec"]
    assert [g["groupName"] for g in cluster["workerGroupSpecs"]] == ["cpu", "gpu"]
    jobs = by_kind(gpu, "RayJob")
    with_gpu = {
        name
        for name, job in jobs.items()
        if "gpu" in [g["groupName"] for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
    }
    assert with_gpu == {f"workembed-{s}" for s in ("ingest", "synthesize", "train", "evaluate", "extract")}
    pod = jobs["workembed-train"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][1]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["image"] == "registry.example.com/workembed:0.1.0-gpu"


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_stage_has_a_rayjob(rendered, overlay):
    from workembed.stages import STAGES

    jobs = by_kind(rendered[overlay], "RayJob")
    profile = " --profile gpu" if overlay == "gpu" else ""
    assert {name: job["spec"]["entrypoint"] for name, job in jobs.items()} == {
        f"workembed-{stage}": f"python -m jobs.{stage} -c jobs/configs/{stage}.yaml{profile}"
        for stage in k8s.PIPELINE_STAGES
    }
    assert set(STAGES) <= set(k8s.PIPELINE_STAGES)
    for job in jobs.values():
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["activeDeadlineSeconds"] > 0 and spec["backoffLimit"] >= 0
        assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["PYTHONPATH"] == "/app"
        assert job["metadata"]["labels"]["workembed.io/stage"] == job["metadata"]["name"].removeprefix(
            "workembed-"
        )


def test_stage_configs_have_the_profile_the_gpu_overlay_runs():
    for stage in k8s.PIPELINE_STAGES:
        config = ROOT / "jobs" / "configs" / f"{stage}.yaml"
        if config.is_file():  # stages still being added have no config yet
            assert "gpu" in (yaml.safe_load(config.read_text())["profiles"]), config


def test_ray_version_is_one_everywhere(rendered):
    installed = ray.__version__
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[train,data,serve]=={installed}" in pins
    assert k8s.dockerfile_arg(ROOT / k8s.DOCKERFILE, "RAY_VERSION") == installed
    for overlay, manifests in rendered.items():
        assert k8s.ray_version_problems(manifests, installed, overlay) == []
        clusters = [m for m in manifests if m.kind in k8s.RAY_CLUSTER_SPEC]
        assert len(clusters) == 1 + 1 + len(k8s.PIPELINE_STAGES)  # RayCluster, RayService, RayJobs
    wrong = k8s.ray_version_problems(rendered["local"], "9.9.9", "local")
    assert len(wrong) == 10
    assert (
        "RayService/workembed (from k8s/base/rayservice.yaml): spec.rayClusterConfig.rayVersion: '2.60.0'"
        in ("\n".join(wrong))
    )


def test_mlflow_image_pins_the_installed_mlflow():
    import mlflow

    assert k8s.dockerfile_arg(ROOT / "k8s" / "mlflow.Dockerfile", "MLFLOW_VERSION") == mlflow.__version__


def test_validate_command_checks_everything(kubectl, schemas, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("KUBECTL", kubectl)
    assert k8s.main(["validate"]) == 0
    counts = yaml.safe_load(capsys.readouterr().out)["validated"]
    assert set(counts) == {"k8s/overlays/local", "k8s/overlays/gpu"}
    assert counts["k8s/overlays/local"] > counts["k8s/overlays/gpu"] > 9


# ------------------------------------------------------------------------------------ broken manifests


def test_broken_manifests_fail_validation_naming_the_field(kubectl, schemas, tmp_path):
    overlay = tmp_path / "broken"
    overlay.mkdir()
    cpus = "/spec/headGroupSpec/rayStartParams/num-cpus"
    patches = [  # target kind and name, JSON patch operation, path, value
        ("RayJob", "workembed-ingest", "add", "/spec/entrypont", "python -m jobs.ingest"),  # wrong field
        ("RayCluster", "workembed-interactive", "replace", cpus, 0),  # wrong type
        ("RayService", "workembed", "replace", "/spec/upgradeStrategy/type", 3),
        ("Deployment", "mlflow", "replace", "/spec/replicas", "one"),  # built-in kind, wrong type
        ("Service", "mlflow", "add", "/spec/portz", []),  # built-in kind, wrong field
    ]
    kustomization = {
        "resources": [os.path.relpath(OVERLAYS["local"], overlay)],
        "patches": [
            {
                "target": {"kind": kind, "name": name},
                "patch": yaml.safe_dump([{"op": op, "path": p, "value": v}]),
            }
            for kind, name, op, p, v in patches
        ],
    }
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    problems = k8s.validate_manifests(k8s.render_overlay(overlay, kubectl), "broken", schemas)
    assert problems == [
        "broken: Service/mlflow (from k8s/base/mlflow.yaml): spec: "
        "Additional properties are not allowed ('portz' was unexpected)",
        "broken: Deployment/mlflow (from k8s/base/mlflow.yaml): spec.replicas: "
        "'one' is not of type 'integer', 'null'",
        "broken: RayCluster/workembed-interactive (from k8s/base/raycluster.yaml): "
        "spec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'",
        "broken: RayJob/workembed-ingest (from k8s/base/jobs/template/rayjob.yaml): spec: "
        "Additional properties are not allowed ('entrypont' was unexpected)",
        "broken: RayService/workembed (from k8s/base/rayservice.yaml): spec.upgradeStrategy.type: "
        "3 is not of type 'string'",
    ]


def test_unknown_kind_is_a_problem(schemas):
    manifest = k8s.Manifest(
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}, "w.yaml"
    )
    assert k8s.validate_manifests([manifest], "x", schemas) == [
        "x: Widget/w (from w.yaml): no schema for example.com/v1 Widget (Kubernetes 1.32)"
    ]


def test_strict_schema_forbids_unknown_fields_but_keeps_open_maps():
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "string"}}},  # a field named so
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
        },
    }
    assert k8s.strict_schema(schema) == {
        "type": "object",
        "properties": {
            "properties": {
                "type": "object",
                "properties": {"a": {"type": "string"}},
                "additionalProperties": False,
            },
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {}},
        },
        "additionalProperties": False,
    }


def test_render_failure_names_the_overlay(tmp_path):
    fake = tmp_path / "kubectl"
    fake.write_text("#!/bin/sh\necho 'Error: json: unknown field \"labels\"' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(
        k8s.ManifestError, match=r"overlays/local: `kubectl kustomize` failed .*unknown field"
    ):
        k8s.render_overlay(OVERLAYS["local"], str(fake))
    with pytest.raises(k8s.ManifestError, match="no kustomization.yaml"):
        k8s.render_overlay(tmp_path, str(fake))
    with pytest.raises(k8s.ManifestError, match=r"overlays/local: cannot run .*/missing"):
        k8s.render_overlay(OVERLAYS["local"], str(tmp_path / "missing"))


# --------------------------------------------------------------------------------------- serveConfigV2


def test_serve_config_v2_is_in_sync_with_serve_config():
    k8s.check_rayservice(ROOT / k8s.RAYSERVICE_MANIFEST, ROOT / k8s.SERVE_CONFIG)


def test_rendered_rayservices_serve_the_generated_config(rendered):
    expected = k8s.serve_config_v2(yaml.safe_load((ROOT / k8s.SERVE_CONFIG).read_text()))
    for manifests in rendered.values():
        service = by_kind(manifests, "RayService")["workembed"]
        assert yaml.safe_load(service["spec"]["serveConfigV2"]) == expected
    assert expected["http_options"] == {**expected["http_options"], "host": "0.0.0.0", "port": 8000}


def serving_app(**changes) -> dict:
    app = {
        "name": "workembed",
        "route_prefix": "/",
        "import_path": k8s.SERVING_IMPORT_PATH,
        "args": {
            "model": "models:/workembed@champion",
            "tracking_uri": "http://127.0.0.1:5000",
            "esco": "builtin",
        },
        "deployments": [{"name": "Models", "num_replicas": 2}],
    }
    return {**app, **changes}


def test_serve_config_v2_takes_cluster_settings_from_the_environment():
    config = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "127.0.0.1", "port": 8123, "request_timeout_s": 30},
        "applications": [
            serving_app(
                runtime_env={
                    "env_vars": {
                        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
                        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
                        "WORKEMBED_MODEL_CACHE": "/var/cache/models",
                    }
                }
            ),
            {
                "name": "other",
                "route_prefix": "/other",
                "import_path": "pkg.mod:app",
                "args": {"x": 1},
                "runtime_env": {"env_vars": {"AWS_ACCESS_KEY_ID": "key"}},
            },
        ],
    }
    assert k8s.serve_config_v2(config) == {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": 8000, "request_timeout_s": 30},
        "applications": [
            serving_app(
                args={
                    "model": "models:/workembed@champion",
                    "tracking_uri": None,
                    "esco": "builtin",
                    "profiles": {"qdrant_url": k8s.QDRANT_URL, "qdrant_path": None},
                },
                runtime_env={"env_vars": {"WORKEMBED_MODEL_CACHE": "/var/cache/models"}},
            ),
            {"name": "other", "route_prefix": "/other", "import_path": "pkg.mod:app", "args": {"x": 1}},
        ],
    }


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            serving_app(args={"model": "models:/workembed/3"}),
            "serve.yaml: applications[0].args.model: 'models:/workembed/3' is not a registry alias",
        ),
        (
            serving_app(args={"model": "models:/w@champion", "modle": "x"}),
            "applications[0].args: modle: Extra",
        ),
        (
            serving_app(args={"model": "models:/w@champion", "api_key_env": "KEY"}),
            "applications[0].args.api_key_env: 'KEY' must be WORKEMBED_API_KEY",
        ),
        (
            serving_app(runtime_env={"working_dir": "."}),
            "applications[0].runtime_env.working_dir: a local folder cannot reach the cluster",
        ),
        (
            serving_app(deployments=[{"name": "Models", "num_replicas": "many"}]),
            "not a valid Serve config: applications[0].deployments[0]: Value error, `num_replicas`",
        ),
    ],
)
def test_serve_config_v2_rejects_what_cannot_run_in_the_cluster(app, message):
    with pytest.raises(k8s.ManifestError) as caught:
        k8s.serve_config_v2({"applications": [app]}, "serve.yaml")
    assert message in str(caught.value)


def test_sync_rewrites_only_the_generated_block(tmp_path):
    manifest = tmp_path / "rayservice.yaml"
    original = (ROOT / k8s.RAYSERVICE_MANIFEST).read_text()
    stale = re.sub(r"model: models:/workembed@champion", "model: models:/workembed@old", original)
    assert stale != original
    manifest.write_text(stale)
    with pytest.raises(k8s.ManifestError, match=r"out of date .*\n(.*\n)*-\s+model: models:/workembed@old"):
        k8s.check_rayservice(manifest, ROOT / k8s.SERVE_CONFIG)
    assert k8s.sync_rayservice(manifest, ROOT / k8s.SERVE_CONFIG) is True
    assert manifest.read_text() == original  # comments and everything else kept
    assert k8s.sync_rayservice(manifest, ROOT / k8s.SERVE_CONFIG) is False
    k8s.check_rayservice(manifest, ROOT / k8s.SERVE_CONFIG)


def test_check_command_reports_a_stale_manifest(tmp_path, capsys):
    manifest = tmp_path / "rayservice.yaml"
    shutil.copy(ROOT / k8s.RAYSERVICE_MANIFEST, manifest)
    serve_config = tmp_path / "config.yaml"
    config = yaml.safe_load((ROOT / k8s.SERVE_CONFIG).read_text())
    config["applications"][0]["deployments"][0]["num_replicas"] = 5
    serve_config.write_text(yaml.safe_dump(config))
    argv = ["--manifest", str(manifest), "--serve-config", str(serve_config)]
    assert k8s.main(["check", *argv]) == 2
    assert "spec.serveConfigV2 is out of date" in capsys.readouterr().err
    assert k8s.main(["sync", *argv]) == 0
    assert k8s.main(["check", *argv]) == 0
