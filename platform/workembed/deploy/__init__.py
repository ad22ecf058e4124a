"""Deployment: the KubeRay manifests under ``k8s/`` (:mod:`~workembed.deploy.k8s`)."""
