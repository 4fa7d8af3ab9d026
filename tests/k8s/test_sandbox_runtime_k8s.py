"""`sandbox.runtime` on Kubernetes, against the real kube-apiserver: the pod's runtimeClassName, and a RuntimeClass
that does not exist refused in one line naming the key — by a start, by `run` (before Ray) and by `dryrun` — with
no pod left.

The RuntimeClass made here has the handler `docker`, the only one a dockershim kubelet (1.20, the real node here)
runs: a gVisor pod (handler runsc under containerd or CRI-O) was not run on this machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.k8s_cluster import BUSYBOX, Cluster

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.errors import ConfigError

pytestmark = [pytest.mark.k8s, pytest.mark.docker]
ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "tasks" / "hello-file"


def spec(run_label: str, runtime: str) -> SandboxSpec:
    return SandboxSpec(image=BUSYBOX, run_label=run_label, cpus=0.1, memory_mb=64, ttl_s=300, runtime=runtime)


@pytest.fixture
def runtime_class(k8s_cluster: Cluster, run_label: str) -> Iterator[str]:
    name = f"rc-{run_label}"
    body = {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name}, "handler": "docker"}
    code, answer = k8s_cluster.request("POST", "/apis/node.k8s.io/v1/runtimeclasses", body)
    assert code == 201, answer
    yield name
    k8s_cluster.request("DELETE", f"/apis/node.k8s.io/v1/runtimeclasses/{name}")


def cli(k8s_cluster: Cluster, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "KUBECONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "harbor_ray", command, "backend=k8s", f"backend.kubeconfig={k8s_cluster.kubeconfig}",
         f"backend.namespace={k8s_cluster.namespace}", *args],
        cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def test_the_pod_gets_the_runtime_class(k8s_cluster: Cluster, run_label: str, runtime_class: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config())
    handle = backend.create(spec(run_label, runtime_class), BUSYBOX)
    try:
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        assert pod["spec"]["runtimeClassName"] == runtime_class
        assert pod["status"]["phase"] == "Running"
    finally:
        backend.destroy(handle)


def test_a_missing_runtime_class_is_one_line_and_no_pod(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config())
    missing = f"gvisor-{run_label}"
    with pytest.raises(ConfigError) as err:
        backend.create(spec(run_label, missing), BUSYBOX)
    msg = str(err.value)
    assert msg.startswith(
        f"sandbox.runtime={missing}: no RuntimeClass {missing} at {k8s_cluster.server}; create one"
    ), msg
    assert "or set sandbox.runtime=''" in msg
    assert "\n" not in msg
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def test_run_refuses_a_missing_runtime_class_before_ray(k8s_cluster: Cluster, run_label: str) -> None:
    done = cli(k8s_cluster, "run", f"run_label={run_label}", f"tasks=[{HELLO}]", "sandbox.runtime=gvisor-missing")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: sandbox.runtime=gvisor-missing: no RuntimeClass gvisor-missing at {k8s_cluster.server}; create one "
        "whose handler the nodes' container runtime knows (docs/kubernetes.md) or set sandbox.runtime=''"
    ], out
    assert "Traceback" not in out
    assert "Ray" not in out


def test_dryrun_checks_the_runtime_class(k8s_cluster: Cluster, run_label: str, runtime_class: str) -> None:
    done = cli(k8s_cluster, "dryrun", f"run_label={run_label}", "sandbox.runtime=gvisor-missing", "--pod")
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = [x.strip() for x in done.stdout.splitlines() if "k8s runtime class:" in x]
    assert line.startswith("✗ k8s runtime class: sandbox.runtime=gvisor-missing: no RuntimeClass gvisor-missing")
    assert "k8s probe pod" not in done.stdout  # it would be refused for the same reason
    done = cli(k8s_cluster, "dryrun", f"run_label={run_label}", f"sandbox.runtime={runtime_class}", "--pod")
    assert f"✓ k8s runtime class: RuntimeClass {runtime_class} (handler docker) at " in done.stdout, done.stdout
    assert "✓ k8s probe pod:" in done.stdout, done.stdout
