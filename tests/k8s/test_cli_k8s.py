"""`python -m harbor_ray dryrun|clean` with the Kubernetes backend, against the test kube-apiserver.

The checks (harbor_ray.ops.dryrun.kubernetes) and the pod cleanup (harbor_ray.ops.clean) are tested in
test_k8s_ops.py; here the commands pick the k8s backend from the config, print their lines, and exit
non-zero when a check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harbor_ray.backends.images import BUSYBOX_IMAGE as BUSYBOX

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.k8s


def harbor_ray(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harbor_ray", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def dryrun(*args: str) -> subprocess.CompletedProcess[str]:
    return harbor_ray("dryrun", *args)


def test_healthy_cluster_passes_with_a_probe_pod(k8s_cluster):
    done = dryrun("--json", "--pod", "backend=k8s", f"backend.kubeconfig={k8s_cluster.kubeconfig}",
                  f"backend.namespace={k8s_cluster.namespace}")  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["backend"] == "k8s"
    names = [c["name"] for c in report["checks"]]
    assert names[:2] == ["k8s config", "k8s API"]
    assert "k8s probe pod" in names
    assert not any(n.startswith("docker") for n in names)  # only the selected backend's checks run
    assert all(c["status"] == "pass" for c in report["checks"]), report["checks"]


def test_missing_namespace_fails_on_its_own_line(k8s_cluster):
    done = dryrun("backend=k8s", f"backend.kubeconfig={k8s_cluster.kubeconfig}", "backend.namespace=no-such-ns")
    assert done.returncode == 1, done.stdout + done.stderr
    [ns_line] = [x.strip() for x in done.stdout.splitlines() if "k8s namespace:" in x]
    assert ns_line.startswith("✗ k8s namespace: namespace no-such-ns does not exist")
    assert "→ fix: kubectl create namespace no-such-ns" in ns_line
    assert "✓ k8s API:" in done.stdout


def test_clean_pods_removes_only_ours(k8s_cluster, run_label):
    target = [
        "backend=k8s",
        f"backend.kubeconfig={k8s_cluster.kubeconfig}",
        f"backend.namespace={k8s_cluster.namespace}",
    ]
    ours, decoy = f"{run_label}-mine", f"{run_label}-decoy"
    k8s_cluster.create_pod(ours, {"harbor-run": run_label}, BUSYBOX)
    k8s_cluster.create_pod(decoy, {"harbor-run": f"{run_label}-other"}, BUSYBOX)
    try:
        listed = harbor_ray("clean", "--dry-run", "--prefix", run_label, *target)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[0] == f"would remove pod {ours}"
        assert [p["metadata"]["name"] for p in k8s_cluster.pods(f"harbor-run={run_label}")] == [ours]
        done = harbor_ray("clean", f"run_label={run_label}", *target)  # --pods is the default for k8s
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"removed pod {ours}",
            f"removed 1 object(s) labeled harbor-run={run_label}",
        ]
        assert [p["metadata"]["name"] for p in k8s_cluster.pods(f"harbor-run={run_label}-other")] == [decoy]
    finally:
        k8s_cluster.delete_pod(decoy)
