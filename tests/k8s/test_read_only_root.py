"""Ray runs with a read-only root filesystem when /tmp, $HOME and /dev/shm are writable: what the manifests
give every Ray container (emptyDirs; tests/k8s/test_hardening.py checks the mounts).

No container runtime runs here, so the pod is emulated: a user, mount, PID and network namespace
(``unshare``) remounts / read-only and puts tmpfs on /tmp, $HOME (/tmp/home, a mount of its own) and
/dev/shm, then a Ray head is started as KubeRay starts it (``ray start --head`` with token authentication),
checked as KubeRay's wait-gcs-ready init container checks it (``ray health-check``), given a job as the
RayJob submitter gives it (``ray job submit``), and made to run tasks, spill objects, run a Ray Data
pipeline and serve HTTP with Ray Serve. Everything it starts dies with the PID namespace; its network
namespace holds only a loopback interface. Skipped where unprivileged user namespaces are not allowed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

POD = r"""
set -e
ip link set lo up
mount -o remount,bind,ro /
mount -t tmpfs tmpfs /tmp
mkdir /tmp/home
mount -t tmpfs tmpfs /tmp/home
mount -t tmpfs tmpfs /dev/shm
export HOME=/tmp/home RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_USAGE_STATS_ENABLED=0 PYTHONDONTWRITEBYTECODE=1
exec "$@"
"""

PROBE = r"""
import os, secrets, subprocess, sys, urllib.request

if os.access(sys.prefix, os.W_OK) or os.access("/", os.W_OK):
    sys.exit("the root filesystem is writable")
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")

def run(*argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-2000:])
    return done.stdout

run(ray_cli, "start", "--head", "--num-cpus=2", "--port=6379", "--dashboard-host=127.0.0.1",
    "--object-store-memory=80000000", "--disable-usage-stats")
run(ray_cli, "health-check", "--address", "127.0.0.1:6379")
out = run(ray_cli, "job", "submit", "--address", "http://127.0.0.1:8265", "--", sys.executable, "-c",
          "import ray; ray.init(); print('job', ray.get(ray.remote(lambda: 7).remote()))")
assert "job 7" in out, out

import numpy as np
import ray
from ray import serve

ray.init(address="127.0.0.1:6379")
assert ray.get([ray.remote(lambda x: 2 * x).remote(i) for i in range(8)]) == [2 * i for i in range(8)]
refs = [ray.put(np.zeros(2_500_000)) for _ in range(8)]  # 160 MB into an 80 MB store: spilled to /tmp/ray
assert sum(ray.get(ref).size for ref in refs) == 20_000_000
assert ray.data.range(1000).map_batches(lambda b: {"id": 2 * b["id"]}).sum("id") == 999_000

@serve.deployment
class Hello:
    def __call__(self, request):
        return "hello"

serve.start(http_options={"host": "127.0.0.1", "port": 8000})
serve.run(Hello.bind(), route_prefix="/")
assert urllib.request.urlopen("http://127.0.0.1:8000/", timeout=30).read() == b"hello"
serve.shutdown()
ray.shutdown()
assert os.path.isdir("/tmp/ray/session_latest/logs")
print("POD OK")
"""


def namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = [
        "unshare",
        "-rmpfn",
        "--mount-proc",
        "sh",
        "-c",
        "mount -o remount,bind,ro / && ip link set lo up",
    ]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.mark.skipif(not namespaces_work(), reason="unprivileged user namespaces (unshare) are not available")
def test_ray_runs_with_only_tmp_home_and_shm_writable():
    done = subprocess.run(
        ["unshare", "-rmpfn", "--mount-proc", "bash", "-c", POD, "pod", sys.executable, "-"],
        input=PROBE,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert done.returncode == 0 and "POD OK" in done.stdout, (done.stdout[-3000:], done.stderr[-5000:])
