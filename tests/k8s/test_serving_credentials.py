"""S3 credentials on the rendered overlays: the S3 keys that write (Secret workembed-s3) reach the pipeline's
Ray pods (training writes its checkpoints with them), never the serving RayService, whose pods may only get
the optional read-only workembed-s3-read."""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s.conftest import OVERLAYS
from workembed.deploy import k8s

WRITE_SECRET = "workembed-s3"
READ_SECRET = "workembed-s3-read"


def secret_refs(node: Any) -> dict[str, bool]:
    """Every Secret a pod template reads (``envFrom.secretRef``, ``env.valueFrom.secretKeyRef``, a
    ``secret`` volume or projected source): name → whether the reference is optional."""
    found: dict[str, bool] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("secretRef", "secretKeyRef", "secret") and isinstance(value, dict):
                name = value.get("name") or value.get("secretName")
                found[name] = bool(value.get("optional", False))
            found |= secret_refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= secret_refs(item)
    return found


def templates(manifests: list[k8s.Manifest], kind: str, stage: str | None = None):
    for m in manifests:
        labels = (m.doc.get("metadata") or {}).get("labels") or {}
        if m.kind == kind and (stage is None or labels.get("workembed.io/stage") == stage):
            for path, template in k8s.pod_templates(m.doc):
                yield f"{m.kind}/{m.name} {path}", template


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_serving_pods_get_no_s3_write_credentials(rendered, overlay):
    serving = dict(templates(rendered[overlay], "RayService"))
    assert len(serving) == 2  # head and worker group
    for where, template in serving.items():
        refs = secret_refs(template)
        assert WRITE_SECRET not in refs, where
        assert refs.get(READ_SECRET) is True, f"{where}: read-only keys only, and optional"
        env_names = {
            item["name"]
            for c in template["spec"]["containers"]
            for item in c.get("env") or []
            if "name" in item
        }
        assert not env_names & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, where
    # the local overlay generates no read-only Secret (MinIO has its root user only): serving reads no S3
    if overlay == "local":
        secrets = {m.name for m in rendered[overlay] if m.kind == "Secret"}
        assert WRITE_SECRET in secrets and READ_SECRET not in secrets


@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_training_pods_keep_the_checkpoint_credentials(rendered, overlay):
    ray_pods = {
        where: template
        for where, template in templates(rendered[overlay], "RayJob", stage="train")
        if not where.endswith("submitterPodTemplate")
    }
    assert len(ray_pods) >= 2  # head and worker group(s)
    for where, template in ray_pods.items():
        assert secret_refs(template).get(WRITE_SECRET) is False, where  # required, not optional
