"""Cleanup by prefix and preflight checks for Kubernetes, against the real apiserver and the test kubelet."""

from __future__ import annotations

import secrets
from pathlib import Path

import docker
import pytest
from support.k8s_cluster import BUSYBOX, Cluster, assert_nothing_left

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.errors import ConfigError
from harbor_ray.ops.clean import clean_sandboxes
from harbor_ray.ops.dryrun.kubernetes import K8sCheck, k8s_checks

pytestmark = [pytest.mark.k8s, pytest.mark.docker]


def spec(label: str) -> SandboxSpec:
    return SandboxSpec(image=BUSYBOX, run_label=label, cpus=0.05, memory_mb=32, ttl_s=300)


def test_clean_by_prefix_removes_ours_and_only_ours(
    k8s_cluster: Cluster, run_label: str, docker_client: docker.DockerClient
) -> None:
    backend = KubernetesBackend(k8s_cluster.config())
    other = f"{run_label}x"  # a longer prefix: an equality selector must not match it
    ours = [backend.create(spec(run_label), BUSYBOX) for _ in range(2)]
    decoy = backend.create(spec(other), BUSYBOX)
    unlabeled = f"decoy-{secrets.token_hex(4)}"
    k8s_cluster.create_pod(unlabeled, {"app": "not-harbor"}, BUSYBOX)
    try:
        assert clean_sandboxes(backend, run_label, dry_run=True) == sorted(h.name for h in ours)
        assert len(k8s_cluster.pods(f"{L.RUN}={run_label}")) == 2  # dry run deleted nothing

        assert clean_sandboxes(k8s_cluster.config(), run_label) == sorted(h.name for h in ours)  # from a config too
        assert k8s_cluster.pods(f"{L.RUN}={run_label}") == []
        assert [p["metadata"]["name"] for p in k8s_cluster.pods(f"{L.RUN}={other}")] == [decoy.name]
        code, _ = k8s_cluster.request("GET", f"/api/v1/namespaces/{k8s_cluster.namespace}/pods/{unlabeled}")
        assert code == 200
        assert clean_sandboxes(backend, run_label) == []  # nothing left, nothing else touched

        for bad in ("", "*", " * ", "."):
            with pytest.raises(ConfigError, match="empty or wildcard"):
                clean_sandboxes(backend, bad)
        with pytest.raises(ConfigError, match="prefix="):
            clean_sandboxes(backend, "Bad_Prefix!")
    finally:
        backend.destroy(decoy)
        k8s_cluster.delete_pod(unlabeled)
    assert_nothing_left(k8s_cluster, docker_client, other, "decoy")
    assert k8s_cluster.pods("app=not-harbor") == []


def _by_name(checks: list[K8sCheck]) -> dict[str, K8sCheck]:
    for c in checks:
        assert isinstance(c, tuple)
        assert len(c) == 5
    return {c.name: c for c in checks}


def test_preflight_passes_on_the_healthy_cluster(k8s_cluster: Cluster, run_label: str) -> None:
    checks = _by_name(k8s_checks(k8s_cluster.config(), probe_image=BUSYBOX))
    assert list(checks) == ["k8s config", "k8s API", "k8s namespace", "k8s permissions", "k8s probe pod"]
    assert all(c.ok for c in checks.values()), checks
    assert "v1.20" in checks["k8s API"].detail
    assert k8s_cluster.pods(f"{L.RUN}=harbor-ray-probe") == []  # the probe pod is gone again


def test_preflight_bad_kubeconfig_fails_on_its_own_line(k8s_cluster: Cluster, tmp_path: Path) -> None:
    checks = k8s_checks(k8s_cluster.config(kubeconfig=str(tmp_path / "missing.yaml")))
    assert len(checks) == 1
    [c] = checks
    assert (c.name, c.ok) == ("k8s config", False)
    assert "missing.yaml: no such readable file" in c.detail
    assert "kubeconfig" in c.fix


def test_preflight_unreachable_api_fails_on_its_own_line(k8s_cluster: Cluster) -> None:
    from support.k8s_cluster import write_kubeconfig

    dead = write_kubeconfig(
        k8s_cluster.workdir / "dead2.kubeconfig", "https://127.0.0.1:1", k8s_cluster.ca_file, "x", "default"
    )
    checks = _by_name(k8s_checks(k8s_cluster.config(kubeconfig=str(dead))))
    assert checks["k8s config"].ok
    assert not checks["k8s API"].ok
    assert "unreachable" in checks["k8s API"].detail
    assert "k8s namespace" not in checks


def test_preflight_missing_namespace_fails_on_its_own_line(k8s_cluster: Cluster) -> None:
    checks = _by_name(k8s_checks(k8s_cluster.config(namespace="no-such-ns")))
    assert checks["k8s config"].ok
    assert checks["k8s API"].ok
    ns = checks["k8s namespace"]
    assert not ns.ok
    assert ns.detail == "namespace no-such-ns does not exist"
    assert "kubectl create namespace no-such-ns" in ns.fix
    assert "k8s permissions" not in checks


def test_preflight_rbac_denied_fails_on_its_own_line(k8s_cluster: Cluster) -> None:
    """The limited token has no bindings: SelfSubjectAccessReview says no to everything we need."""
    checks = _by_name(
        k8s_checks(k8s_cluster.config(kubeconfig=str(k8s_cluster.limited_kubeconfig)), probe_image=BUSYBOX)
    )
    assert checks["k8s API"].ok
    assert checks["k8s namespace"].ok  # cannot read namespaces: assumed, not failed
    assert "cannot read" in checks["k8s namespace"].detail
    perm = checks["k8s permissions"]
    assert not perm.ok
    for needed in ("create pods", "delete pods", "watch pods", "create pods/exec", "get pods/exec"):
        assert needed in perm.detail
    assert "RoleBinding" in perm.fix
    assert "k8s probe pod" not in checks  # not attempted without the permissions
