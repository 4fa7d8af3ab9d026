"""How the backend talks to the API: retries of injected 409/429/5xx, request counts per lifecycle, placement."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from support.k8s_cluster import BUSYBOX, Cluster, faulty_proxy, write_kubeconfig

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.errors import SandboxStartError

pytestmark = [pytest.mark.k8s, pytest.mark.docker]


def small(run_label: str) -> SandboxSpec:
    return SandboxSpec(image=BUSYBOX, run_label=run_label, cpus=0.1, memory_mb=64, ttl_s=300)


def test_429_and_5xx_are_retried_and_a_lost_create_is_adopted(k8s_cluster: Cluster, run_label: str) -> None:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def fault(method: str, path: str) -> tuple[str, int] | None:
        with lock:
            if method == "POST" and path.endswith("/pods"):
                seen["create"] += 1
                # 1st: throttled; 2nd: reaches etcd but the answer is lost; 3rd: 409 AlreadyExists -> adopted.
                return {1: ("instead", 429), 2: ("after", 503)}.get(seen["create"])
            if method == "DELETE" and "/pods/" in path:
                seen["delete"] += 1
                return ("instead", 500) if seen["delete"] == 1 else None
        return None

    with faulty_proxy(k8s_cluster, fault) as url:
        kubeconfig = write_kubeconfig(
            k8s_cluster.workdir / f"{run_label}.kubeconfig",
            url,
            k8s_cluster.ca_file,
            k8s_cluster.admin_token,
            k8s_cluster.namespace,
        )
        backend = KubernetesBackend(k8s_cluster.config(kubeconfig=str(kubeconfig)))
        handle = backend.create(small(run_label), BUSYBOX)
        assert [p["metadata"]["name"] for p in k8s_cluster.pods(f"{L.RUN}={run_label}")] == [handle.name]
        backend.destroy(handle)
    assert seen == {"create": 3, "delete": 2}
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def test_api_requests_per_sandbox_lifecycle(k8s_cluster: Cluster, run_label: str, tmp_path: Path) -> None:
    """create = POST + one watch; one request per exec, upload and download; destroy = DELETE + one GET."""
    backend = KubernetesBackend(k8s_cluster.config())
    (tmp_path / "f").write_text("x")

    def ours(before: dict, after: dict) -> dict[str, int]:
        out: dict[str, int] = {}
        for (verb, resource, sub, scope), value in after.items():
            n = round(value - before.get((verb, resource, sub, scope), 0.0))
            # pods in our namespace, minus the test kubelet's binding/status writes
            if n > 0 and resource == "pods" and scope != "cluster" and sub not in ("binding", "status"):
                out[f"{verb} pods{'/' + sub if sub else ''}"] = n
        return out

    # Start from a quiet apiserver: earlier tests' watches and execs are counted when they end.
    before, settle_by = k8s_cluster.request_counts(), time.monotonic() + 10
    while time.monotonic() < settle_by:
        time.sleep(0.5)
        if not ours(before, now := k8s_cluster.request_counts()):
            break
        before = now
    handle = backend.create(small(run_label), BUSYBOX)
    for cmd in (["true"], ["echo", "hi"], "exit 3"):
        backend.exec(handle, cmd)
    backend.upload(handle, str(tmp_path / "f"), "/tmp/f")
    backend.download(handle, "/tmp/f", str(tmp_path / "g"))
    backend.destroy(handle)
    expected = {"POST pods": 1, "WATCH pods": 1, "GET pods/exec": 5, "DELETE pods": 1, "GET pods": 1}
    deadline = time.monotonic() + 10
    # Long-running requests (watch, exec) are counted when the apiserver sees them end, a moment later.
    while (counts := ours(before, k8s_cluster.request_counts())) != expected and time.monotonic() < deadline:
        time.sleep(0.2)
    assert counts == expected


def test_placement_settings_reach_the_pod(k8s_cluster: Cluster, run_label: str) -> None:
    code, body = k8s_cluster.request(
        "POST",
        "/apis/node.k8s.io/v1/runtimeclasses",
        {
            "apiVersion": "node.k8s.io/v1",
            "kind": "RuntimeClass",
            "metadata": {"name": f"rc-{run_label}"},
            "handler": "docker",  # the only handler a dockershim (real) kubelet runs
        },
    )
    assert code == 201, body
    try:
        backend = KubernetesBackend(
            k8s_cluster.config(
                node_selector={"harbor-ray-test/node": "1"},
                tolerations=[{"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"}],
                runtime_class_name=f"rc-{run_label}",
                image_pull_secrets=["regcred"],
            )
        )
        handle = backend.create(small(run_label), BUSYBOX)
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        spec = pod["spec"]
        assert spec["nodeSelector"] == {"harbor-ray-test/node": "1"}
        assert {"key": "sandbox", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert spec["runtimeClassName"] == f"rc-{run_label}"
        assert spec["imagePullSecrets"] == [{"name": "regcred"}]
        assert spec["nodeName"] == k8s_cluster.node
        backend.destroy(handle)
    finally:
        k8s_cluster.request("DELETE", f"/apis/node.k8s.io/v1/runtimeclasses/rc-{run_label}")


def test_run_as_non_root_is_enforced(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config(run_as_non_root=True))
    with pytest.raises(SandboxStartError, match="CreateContainerConfigError .*runAsNonRoot"):
        backend.create(small(run_label), BUSYBOX)  # busybox runs as root
    assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []


def test_kubeconfig_context_is_honoured(k8s_cluster: Cluster, tmp_path: Path) -> None:
    import json

    cfg = json.loads(k8s_cluster.kubeconfig.read_text())
    cfg["clusters"].append(
        {
            "name": "dead",
            "cluster": {"server": "https://127.0.0.1:1", "certificate-authority": str(k8s_cluster.ca_file)},
        }
    )
    cfg["contexts"].append({"name": "dead", "context": {"cluster": "dead", "user": "u"}})
    cfg["current-context"] = "dead"
    path = tmp_path / "two-contexts.kubeconfig"
    path.write_text(json.dumps(cfg))
    backend = KubernetesBackend(k8s_cluster.config(kubeconfig=str(path), context="harbor-ray-test"))
    assert backend.host == k8s_cluster.server
    assert backend.ping().startswith("v1.20")
