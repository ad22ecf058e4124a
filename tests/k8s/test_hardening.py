"""Hardening of the Kubernetes manifests, checked on the rendered overlays: the profile index is a Qdrant
server on a persistent volume; pods mount no service-account token, run on read-only root filesystems
with ephemeral-storage limits; the gpu overlay is released pinned by digest (and refused without digests);
no credential is committed (the local overlay generates its own); NetworkPolicies admit only the pods
that need MLflow, Qdrant and the serving port."""

from __future__ import annotations

import base64
import copy
import hashlib
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.k8s.conftest import OVERLAYS, ROOT, by_kind
from workembed.deploy import k8s

PINNED = re.compile(r"^[^@\s:]+(?::\d+)?(?:/[^@\s:]+)*@sha256:[0-9a-f]{64}$")
"""``NAME@sha256:<64 hex>``: an image pinned by digest and nothing else (no tag)."""


def serving_args(manifests: list[k8s.Manifest]) -> dict:
    config = yaml.safe_load(by_kind(manifests, "RayService")["workembed"]["spec"]["serveConfigV2"])
    (app,) = [a for a in config["applications"] if a["import_path"] == k8s.SERVING_IMPORT_PATH]
    return app["args"]


def mounts(container: dict, template: dict) -> dict[str, dict]:
    """mountPath → the volume mounted there."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes") or []}
    return {
        m["mountPath"]: volumes.get(m["name"], {"name": m["name"]}) for m in container.get("volumeMounts", [])
    }


def ray_templates(manifests: list[k8s.Manifest]):
    """(manifest, path, template) of every Ray head and worker pod (not RayJob submitters)."""
    for m in manifests:
        if m.kind in k8s.RAY_CLUSTER_SPEC:
            for path, template in k8s.pod_templates(m.doc):
                if not path.endswith("submitterPodTemplate"):
                    yield m, path, template


# ------------------------------------------------------------------------------- (a) profile index


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_profiles_live_in_a_qdrant_server_on_a_persistent_volume(rendered, overlay):
    manifests = rendered[overlay]
    profiles = serving_args(manifests)["profiles"]
    assert profiles["qdrant_url"] == k8s.QDRANT_URL == "http://qdrant:6333"
    assert profiles["qdrant_path"] is None  # no index in the pod's filesystem

    statefulset = by_kind(manifests, "StatefulSet")["qdrant"]
    template = statefulset["spec"]["template"]
    (container,) = template["spec"]["containers"]
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    assert {m["mountPath"]: m["name"] for m in container["volumeMounts"]}["/qdrant/storage"] == (
        claim["metadata"]["name"]
    )
    assert (
        claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        and claim["spec"]["resources"]["requests"]["storage"]
    )
    assert statefulset["spec"]["replicas"] == 1
    assert statefulset["spec"]["serviceName"] in by_kind(manifests, "Service")
    assert by_kind(manifests, "Service")[statefulset["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"

    # the URL's host is the Service in front of that pod, its port the container's REST port
    service = by_kind(manifests, "Service")["qdrant"]
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    (http,) = [p for p in service["spec"]["ports"] if p["port"] == 6333]
    assert {p["name"]: p["containerPort"] for p in container["ports"]}[http["targetPort"]] == 6333

    image = container["image"]
    if overlay == "local":  # the base's pin; the gpu release pins it by digest (below)
        assert re.fullmatch(r"qdrant/qdrant:v\d+\.\d+\.\d+", image), image
    lock = (ROOT / "platform" / "requirements.lock").read_text()
    client = re.search(r"^qdrant-client==(\d+)\.(\d+)\.", lock, re.M)
    server = re.search(r":v(\d+)\.(\d+)\.", image)
    assert client and server and client[1] == server[1] and abs(int(client[2]) - int(server[2])) <= 1


def test_serve_config_v2_never_keeps_profiles_in_the_pod():
    app = {
        "name": "workembed",
        "route_prefix": "/",
        "import_path": k8s.SERVING_IMPORT_PATH,
        "args": {
            "model": "models:/w@champion",
            "profiles": {"qdrant_path": "/tmp/q", "collection_prefix": "p"},
        },
    }
    args = k8s.serve_config_v2({"applications": [app]})["applications"][0]["args"]
    assert args["profiles"] == {"qdrant_path": None, "qdrant_url": k8s.QDRANT_URL, "collection_prefix": "p"}
    # a server the Serve config names itself (a managed Qdrant) is kept
    app["args"]["profiles"] = {"qdrant_url": "https://qdrant.example.com:6333"}
    args = k8s.serve_config_v2({"applications": [app]})["applications"][0]["args"]
    assert args["profiles"] == {"qdrant_url": "https://qdrant.example.com:6333", "qdrant_path": None}


# ------------------------------------------------------------------------------------- (b) hardening


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_every_container_is_read_only_with_ephemeral_storage_limits_and_no_token(rendered, overlay):
    manifests = rendered[overlay]
    assert k8s.hardening_problems(manifests, overlay) == []
    templates = [(m, path, t) for m in manifests for path, t in k8s.pod_templates(m.doc)]
    # every workload is covered: the Ray clusters' heads and workers, the RayJob submitters, the rest
    kinds = {m.kind for m, _, _ in templates}
    assert {"Deployment", "StatefulSet", "RayCluster", "RayJob", "RayService"} <= kinds
    assert sum(path.endswith("submitterPodTemplate") for _, path, _ in templates) == len(k8s.PIPELINE_STAGES)
    for m, path, template in templates:
        assert template["spec"]["automountServiceAccountToken"] is False, f"{m.describe()} {path}"
    checked = 0
    for m in manifests:
        for path, container in k8s.containers(m.doc):
            where = f"{m.describe()} {path}"
            exception = k8s.READ_ONLY_ROOT_EXCEPTIONS.get(f"{m.kind}/{m.name}: {path}")
            assert container["securityContext"]["readOnlyRootFilesystem"] is True or exception, where
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            for kind in ("requests", "limits"):
                assert container["resources"][kind]["ephemeral-storage"], where
            checked += 1
    assert checked > 3 * len(k8s.PIPELINE_STAGES)
    assert all(reason.strip() for reason in k8s.READ_ONLY_ROOT_EXCEPTIONS.values())


def dockerfile_env(name: str, dockerfile: Path = ROOT / k8s.DOCKERFILE) -> str:
    match = re.search(rf"\b{name}=(\S+)", dockerfile.read_text())
    assert match, f"{dockerfile}: no {name}"
    return match[1]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_what_ray_writes_lands_on_volumes(rendered, overlay):
    """Ray's session folder (/tmp/ray), $HOME (its caches: models, ONNX exports, target spaces, Hugging Face,
    torch extensions) and the paths the environment names are volumes, so the read-only root holds."""
    manifests = rendered[overlay]
    home = dockerfile_env("HOME")
    assert dockerfile_env("TORCH_EXTENSIONS_DIR").startswith(home + "/")
    env_paths = {
        key: value
        for key, value in by_kind(manifests, "ConfigMap")["workembed-env"]["data"].items()
        if value.startswith("/")
    }
    assert env_paths == {"WORKEMBED_DATA_DIR": "/data"}
    seen = 0
    for m, path, template in ray_templates(manifests):
        container = template["spec"]["containers"][0]
        mounted = mounts(container, template)
        where = f"{m.describe()} {path}"
        assert "emptyDir" in mounted["/tmp"] and "emptyDir" in mounted[home], where
        assert mounted["/dev/shm"]["emptyDir"]["medium"] == "Memory", where
        assert set(env_paths.values()) <= set(mounted), where
        if m.kind == "RayJob":  # the stages' runtime env moves the DeepSpeed op cache onto the runs volume
            runtime_env = yaml.safe_load(m.doc["spec"]["runtimeEnvYAML"])["env_vars"]
            assert runtime_env["TORCH_EXTENSIONS_DIR"].startswith("/app/runs/")
            assert "persistentVolumeClaim" in mounted["/app/runs"], where
        seen += 1
    assert seen == 2 + 2 + 2 * len(k8s.PIPELINE_STAGES) + (1 + 5 if overlay == "gpu" else 0)
    mlflow = by_kind(manifests, "Deployment")["mlflow"]["spec"]["template"]
    mounted = mounts(mlflow["spec"]["containers"][0], mlflow)
    assert "emptyDir" in mounted["/tmp"] and "emptyDir" in mounted["/home/mlflow"]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_only_the_autoscaler_gets_an_api_token(rendered, overlay):
    """Heads mount no token, yet KubeRay's autoscaler sidecar calls the API server: it mounts a projected
    token (with the CA and namespace) where Kubernetes clients look for it."""
    clusters = [m for m in rendered[overlay] if m.kind in k8s.RAY_CLUSTER_SPEC]
    assert len(clusters) == 2 + len(k8s.PIPELINE_STAGES)
    for m in clusters:
        spec = k8s._at(m.doc, k8s.RAY_CLUSTER_SPEC[m.kind])
        assert spec["enableInTreeAutoscaling"] is True
        head = spec["headGroupSpec"]["template"]
        assert head["spec"]["automountServiceAccountToken"] is False
        volumes = {v["name"]: v for v in head["spec"]["volumes"]}
        (token,) = [
            v
            for v in spec["autoscalerOptions"]["volumeMounts"]
            if v["mountPath"] == k8s.SERVICE_ACCOUNT_MOUNT
        ]
        assert token["readOnly"] is True
        sources = volumes[token["name"]]["projected"]["sources"]
        assert sources[0]["serviceAccountToken"]["path"] == "token"
        assert sources[1]["configMap"] == {
            "name": "kube-root-ca.crt",
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }
        assert sources[2]["downwardAPI"]["items"] == [
            {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
        ]
        # ... and no Ray container mounts it
        for container in head["spec"]["containers"]:
            assert token["name"] not in {v["name"] for v in container.get("volumeMounts", [])}


def test_hardening_problems_name_what_is_missing(rendered):
    manifests = copy.deepcopy(rendered["local"])
    docs = {(m.kind, m.name): m.doc for m in manifests}
    mlflow = docs["Deployment", "mlflow"]["spec"]["template"]["spec"]
    del mlflow["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    del mlflow["containers"][0]["resources"]["limits"]["ephemeral-storage"]
    worker = docs["RayService", "workembed"]["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"][
        "spec"
    ]
    worker["automountServiceAccountToken"] = True
    worker["containers"][0]["volumeMounts"].append({"name": "cache", "mountPath": "/cache"})
    docs["RayCluster", "workembed-interactive"]["spec"]["autoscalerOptions"]["volumeMounts"] = []
    mlflow_path = "local: Deployment/mlflow (from k8s/base/mlflow.yaml): spec.template.spec.containers[0]"
    worker_path = (
        "local: RayService/workembed (from k8s/base/rayservice.yaml): "
        "spec.rayClusterConfig.workerGroupSpecs[0].template.spec"
    )
    assert k8s.hardening_problems(manifests, "local") == [
        f"{mlflow_path}.securityContext.readOnlyRootFilesystem: must be true",
        f"{mlflow_path}.resources.limits: no ephemeral-storage",
        "local: RayCluster/workembed-interactive (from k8s/base/raycluster.yaml): "
        "spec.autoscalerOptions.volumeMounts: no projected service-account token at "
        "/var/run/secrets/kubernetes.io/serviceaccount (the autoscaler calls the API server)",
        f"{worker_path}.automountServiceAccountToken: must be false",
        f"{worker_path}.containers[0].volumeMounts: no volume 'cache' in the pod",
    ]


# ------------------------------------------------------------------------------ (b) release by digest


def fake_digests(images) -> str:
    """Test data only: a digest-shaped value per image (sha256 of its name), never a real image's."""
    return "".join(f"{image}@sha256:{hashlib.sha256(image.encode()).hexdigest()}\n" for image in images)


def gpu_images(rendered) -> list[str]:
    return sorted({i for m in rendered["gpu"] for i in k8s.container_images(m.doc)})


def test_gpu_release_pins_every_image_by_digest(rendered, kubectl, schemas, tmp_path):
    images = gpu_images(rendered)
    assert images == [
        "qdrant/qdrant:v1.20.0",
        "registry.example.com/workembed-mlflow:3.17.2",
        "registry.example.com/workembed:0.1.0-gpu",
    ]
    digests = tmp_path / "digests.txt"
    # an image as rendered (NAME:TAG) or by its bare NAME (docker inspect's RepoDigests form)
    named = [images[0], k8s.split_image(images[1])[0], images[2]]
    digests.write_text("# pushed images\n\n" + fake_digests(named))
    output = k8s.release(
        ROOT / k8s.GPU_OVERLAY, digests, tmp_path / "out" / "gpu.yaml", kubectl=kubectl, schemas=schemas
    )
    docs = [d for d in yaml.safe_load_all(output.read_text()) if d]
    assert len(docs) == len(rendered["gpu"])
    pinned = sorted({i for doc in docs for i in k8s.container_images(doc)})
    assert pinned and all(PINNED.match(i) for i in pinned), pinned
    expected = {k8s.split_image(i)[0]: hashlib.sha256(i.encode()).hexdigest() for i in named}
    assert {i.split("@")[0]: i.split(":")[-1] for i in pinned} == expected
    # every container of every pod, Ray heads, workers and submitters included, runs a pinned image (the
    # autoscaler sets none: KubeRay gives it the head's)
    containers = [c for doc in docs for _, c in k8s.containers(doc) if "image" in c]
    assert all(PINNED.match(c["image"]) for c in containers)
    assert len(containers) >= 3 * len(k8s.PIPELINE_STAGES)


def test_gpu_release_refuses_without_a_digest_for_every_image(rendered, kubectl, tmp_path, capsys):
    images = gpu_images(rendered)
    with pytest.raises(k8s.ManifestError, match="a release needs a digest file"):
        k8s.render_release(ROOT / k8s.GPU_OVERLAY, None, kubectl)
    with pytest.raises(k8s.ManifestError, match="digest file not found"):
        k8s.render_release(ROOT / k8s.GPU_OVERLAY, tmp_path / "missing.txt", kubectl)
    digests = tmp_path / "digests.txt"
    digests.write_text(fake_digests(images[1:]))
    with pytest.raises(
        k8s.ManifestError, match=r"refusing to render a release:\nqdrant/qdrant:v1.20.0: no digest"
    ):
        k8s.render_release(ROOT / k8s.GPU_OVERLAY, digests, kubectl)
    digests.write_text(fake_digests([*images, "registry.example.com/old:1"]))
    with pytest.raises(k8s.ManifestError, match="registry.example.com/old:1 is not an image of"):
        k8s.render_release(ROOT / k8s.GPU_OVERLAY, digests, kubectl)
    for line in (
        "qdrant/qdrant:v1.20.0@sha256:REPLACE-AT-RELEASE",
        "qdrant/qdrant:v1.20.0",
        "@sha256:" + "0" * 64,
    ):
        digests.write_text(line + "\n")
        with pytest.raises(k8s.ManifestError, match=r"digests.txt:1: expected IMAGE@sha256:<64 hex digits>"):
            k8s.render_release(ROOT / k8s.GPU_OVERLAY, digests, kubectl)
    # the command and the make target refuse too, before writing anything
    assert k8s.main(["release", "--output", str(tmp_path / "gpu.yaml")]) == 2
    assert "a release needs a digest file" in capsys.readouterr().err
    assert not (tmp_path / "gpu.yaml").exists()
    make = subprocess.run(["make", "-s", "-C", str(ROOT), "k8s-pin"], capture_output=True, text=True)
    assert make.returncode != 0 and "set IMAGE_DIGESTS=FILE" in make.stderr


# ----------------------------------------------------------------------------------- (c) credentials


SECRET_KEY = re.compile(r"PASSWORD|SECRET|_KEY$|_URI$")


def k8s_yaml_files() -> list[Path]:
    return [p for p in sorted((ROOT / "k8s").rglob("*.yaml")) if "schemas" not in p.parts]


def test_no_credential_is_committed():
    """No Secret is written in k8s/: every one comes from a secretGenerator reading gitignored files, and
    the committed examples hold placeholders where a secret goes."""
    generators = 0
    for path in k8s_yaml_files():
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        assert not [d for d in docs if d.get("kind") == "Secret"], f"{path}: a committed Secret"
        for doc in docs:
            for generator in doc.get("secretGenerator") or []:
                generators += 1
                assert not generator.get("literals"), f"{path}: {generator['name']} has literal values"
                sources = [*(generator.get("envs") or []), *(generator.get("files") or [])]
                assert sources, f"{path}: {generator['name']}"
                for source in sources:
                    file = path.parent / source.split("=")[-1]
                    assert file.parent.joinpath(file.name + ".example").is_file(), file
                    if (ROOT / ".git").exists():
                        ignored = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(file)])
                        assert ignored.returncode == 0, f"{file} is not gitignored"
    assert generators == 7
    if (ROOT / ".git").exists():
        tracked = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "k8s"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert not [f for f in tracked if f.endswith(".env")], tracked
    examples = sorted((ROOT / "k8s" / "overlays" / "local" / "credentials").glob("*.env.example"))
    assert [e.name for e in examples] == [
        "api.env.example",
        "mlflow-admin.env.example",
        "mlflow-db.env.example",
        "mlflow-pipeline.env.example",
        "mlflow-serving.env.example",
        "postgres.env.example",
        "s3.env.example",
    ]
    for example in examples:
        for line in example.read_text().splitlines():
            if line and not line.startswith("#"):
                key, value = line.split("=", 1)
                assert not SECRET_KEY.search(key) or "{random:" in value, f"{example}: {line}"


def copy_k8s(destination: Path) -> Path:
    """k8s/ as a fresh clone has it: no credentials/*.env (gitignored), no schema bundle (not needed)."""
    shutil.copytree(ROOT / "k8s", destination / "k8s", ignore=shutil.ignore_patterns("schemas", "*.env"))
    return destination / "k8s" / "overlays" / "local"


def secrets_of(manifests: list[k8s.Manifest]) -> dict[str, dict[str, str]]:
    return {
        name: {key: base64.b64decode(value).decode() for key, value in doc["data"].items()}
        for name, doc in by_kind(manifests, "Secret").items()
    }


def test_local_overlay_renders_from_a_fresh_clone_with_generated_credentials(kubectl, tmp_path):
    overlay = copy_k8s(tmp_path / "a")
    folder = overlay / k8s.CREDENTIALS_DIR
    assert not list(folder.glob("*.env"))
    secrets = secrets_of(k8s.render_overlay(overlay, kubectl))
    written = sorted(folder.glob("*.env"))
    assert [p.name for p in written] == [
        "api.env",
        "mlflow-admin.env",
        "mlflow-db.env",
        "mlflow-pipeline.env",
        "mlflow-serving.env",
        "postgres.env",
        "s3.env",
    ]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in written)
    assert set(secrets) == {
        "workembed-s3",
        "workembed-postgres",
        "workembed-mlflow-db",
        "workembed-api",
        "workembed-mlflow-admin",
        "workembed-mlflow-pipeline",
        "workembed-mlflow-serving",
    }
    password = secrets["workembed-postgres"]["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"[0-9a-f]{48}", password)
    assert secrets["workembed-mlflow-db"] == {
        "MLFLOW_BACKEND_STORE_URI": f"postgresql://mlflow:{password}@postgres:5432/mlflow"
    }
    assert secrets["workembed-s3"]["AWS_ACCESS_KEY_ID"] == "workembed"
    assert secrets["workembed-mlflow-admin"]["MLFLOW_AUTH_ADMIN_USERNAME"] == "admin"
    assert secrets["workembed-mlflow-pipeline"]["MLFLOW_TRACKING_USERNAME"] == "workembed-pipeline"
    assert secrets["workembed-mlflow-serving"]["MLFLOW_TRACKING_USERNAME"] == "workembed-serving"
    generated = [
        secrets["workembed-s3"]["AWS_SECRET_ACCESS_KEY"],
        secrets["workembed-api"]["WORKEMBED_API_KEY"],
        secrets["workembed-mlflow-admin"]["MLFLOW_AUTH_ADMIN_PASSWORD"],
        secrets["workembed-mlflow-admin"]["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        secrets["workembed-mlflow-pipeline"]["MLFLOW_TRACKING_PASSWORD"],
        secrets["workembed-mlflow-serving"]["MLFLOW_TRACKING_PASSWORD"],
    ]
    assert all(re.fullmatch(r"[0-9a-f]{48}", value) for value in generated)
    assert len({password, *generated}) == 7
    # rendering again keeps them; another clone gets its own
    assert secrets_of(k8s.render_overlay(overlay, kubectl)) == secrets
    other = secrets_of(k8s.render_overlay(copy_k8s(tmp_path / "b"), kubectl))
    assert other["workembed-postgres"]["POSTGRES_PASSWORD"] != password


def test_credentials_are_rotated_as_a_set_and_a_partial_set_is_refused(tmp_path, capsys):
    overlay = copy_k8s(tmp_path)
    folder = overlay / k8s.CREDENTIALS_DIR
    assert k8s.main(["credentials", "--overlay", str(overlay)]) == 0
    assert len(yaml.safe_load(capsys.readouterr().out)["written"]) == 7
    before = {p.name: p.read_text() for p in folder.glob("*.env")}
    assert k8s.ensure_credentials(folder) == []  # present: untouched
    (folder / "postgres.env").unlink()
    with pytest.raises(k8s.ManifestError, match=r"postgres.env missing beside .*credentials --rotate"):
        k8s.ensure_credentials(folder)
    assert len(k8s.ensure_credentials(folder, rotate=True)) == 7
    after = {p.name: p.read_text() for p in folder.glob("*.env")}
    assert after.keys() == before.keys() and all(after[name] != before[name] for name in before)
    password = re.search(r"POSTGRES_PASSWORD=(\w+)", after["postgres.env"])[1]
    assert f"mlflow:{password}@" in after["mlflow-db.env"]


def test_a_credential_added_later_is_written_beside_the_present_ones(tmp_path):
    """A clone made before an example existed gets it on its next render; the files it has stay as they
    are, since the new one shares no generated value with them."""
    overlay = copy_k8s(tmp_path)
    folder = overlay / k8s.CREDENTIALS_DIR
    k8s.ensure_credentials(folder)
    (folder / "mlflow-serving.env").unlink()
    (folder / "mlflow-admin.env").unlink()
    before = {p.name: p.read_text() for p in folder.glob("*.env")}
    written = k8s.ensure_credentials(folder)
    assert [p.name for p in written] == ["mlflow-admin.env", "mlflow-serving.env"]
    assert {p.name: p.read_text() for p in folder.glob("*.env") if p.name in before} == before
    assert stat.S_IMODE((folder / "mlflow-admin.env").stat().st_mode) == 0o600
    # a new example that shares a value with a present file is not written on its own
    (folder / "extra.env.example").write_text("URI=postgresql://mlflow:{random:postgres_password}@db/x\n")
    with pytest.raises(k8s.ManifestError, match=r"extra.env missing beside mlflow-db.env, postgres.env"):
        k8s.ensure_credentials(folder)


# ------------------------------------------------------------------------------- (d) NetworkPolicies


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector: matchLabels and matchExpressions, all of them ({} selects all)."""
    if selector is None:
        return False
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        passes = {
            "In": labels.get(key) in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not passes:
            return False
    return True


def pods(manifests: list[k8s.Manifest]) -> dict[str, dict[str, str]]:
    """Every pod template of the namespace: ``Kind/name path`` → its labels."""
    return {
        f"{m.kind}/{m.name} {path}": (template.get("metadata") or {}).get("labels") or {}
        for m in manifests
        for path, template in k8s.pod_templates(m.doc)
    }


def selected(selector: dict, manifests: list[k8s.Manifest]) -> set[str]:
    return {pod for pod, labels in pods(manifests).items() if selects(selector, labels)}


def ray_pods(manifests: list[k8s.Manifest], *kinds: str) -> set[str]:
    return {f"{m.kind}/{m.name} {path}" for m, path, _ in ray_templates(manifests) if m.kind in kinds}


def container_port(manifests, kind: str, name: str, port_name: str) -> int:
    (pod_template,) = [
        t for m in manifests if (m.kind, m.name) == (kind, name) for _, t in k8s.pod_templates(m.doc)
    ]
    return {p["name"]: p["containerPort"] for p in pod_template["spec"]["containers"][0]["ports"]}[port_name]


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_network_policies_admit_only_the_pods_that_need_each_service(rendered, overlay):
    manifests = rendered[overlay]
    policies = by_kind(manifests, "NetworkPolicy")
    assert set(policies) == {"mlflow", "qdrant", "serving"}
    for policy in policies.values():
        assert policy["metadata"]["namespace"] == "workembed"
        assert policy["spec"]["policyTypes"] == ["Ingress"]
    jobs_and_service = ray_pods(manifests, "RayJob", "RayService")
    service = ray_pods(manifests, "RayService")
    assert len(jobs_and_service) == 2 * len(k8s.PIPELINE_STAGES) + 2 + (5 if overlay == "gpu" else 0)
    assert len(service) == 2

    # MLflow: from the pipeline's and the serving Ray pods and the Job that creates its users only (not the
    # interactive cluster, not the RayJob submitters, not the backing services), on its HTTP port
    mlflow = policies["mlflow"]["spec"]
    assert selected(mlflow["podSelector"], manifests) == {"Deployment/mlflow spec.template"}
    (rule,) = mlflow["ingress"]
    (peer,) = rule["from"]
    users_job = "Job/mlflow-users spec.template"
    assert peer.keys() == {"podSelector"}
    assert selected(peer["podSelector"], manifests) == jobs_and_service | {users_job}
    assert rule["ports"] == [
        {"protocol": "TCP", "port": container_port(manifests, "Deployment", "mlflow", "http")}
    ]

    # Qdrant: from the serving Ray pods only, on the port of profiles.qdrant_url
    qdrant = policies["qdrant"]["spec"]
    assert selected(qdrant["podSelector"], manifests) == {"StatefulSet/qdrant spec.template"}
    (rule,) = qdrant["ingress"]
    (peer,) = rule["from"]
    assert peer.keys() == {"podSelector"} and selected(peer["podSelector"], manifests) == service
    url_port = int(serving_args(manifests)["profiles"]["qdrant_url"].rsplit(":", 1)[1])
    assert rule["ports"] == [{"protocol": "TCP", "port": url_port}]
    assert container_port(manifests, "StatefulSet", "qdrant", "http") == url_port

    # the serving pods: each other on every port; the serve port from the ingress controller's namespace;
    # the KubeRay operator on the dashboard, its agent and the proxy
    serving = policies["serving"]["spec"]
    assert selected(serving["podSelector"], manifests) == service
    intra, ingress, operator = serving["ingress"]
    (peer,) = intra["from"]
    assert "ports" not in intra and peer.keys() == {"podSelector"}
    assert selected(peer["podSelector"], manifests) == service
    (peer,) = ingress["from"]
    assert peer == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    rayservice = by_kind(manifests, "RayService")["workembed"]["spec"]["rayClusterConfig"]
    for group in [rayservice["headGroupSpec"], *rayservice["workerGroupSpecs"]]:
        ports = {p["name"]: p["containerPort"] for p in group["template"]["spec"]["containers"][0]["ports"]}
        assert ports["serve"] == k8s.SERVE_HTTP["port"]
    assert ingress["ports"] == [{"protocol": "TCP", "port": k8s.SERVE_HTTP["port"]}]
    (peer,) = operator["from"]
    assert peer == {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}},
    }
    assert not selected(peer["podSelector"], manifests)  # no pod of ours passes for the operator
    assert sorted(p["port"] for p in operator["ports"]) == [8000, 8265, 52365]
