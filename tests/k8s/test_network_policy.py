"""The "gateway only" pod on a real kube-apiserver: the NetworkPolicy and pod spec are what docs/network.md says.

The harness has no CNI, so nothing here enforces the policy: these tests prove the objects, not dropped packets.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from support.k8s_cluster import BUSYBOX, Cluster

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.egress import GATEWAY_HOSTNAME, GATEWAY_URL_ENV
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.errors import ConfigError

pytestmark = [pytest.mark.k8s, pytest.mark.docker]

GATEWAY = "10.11.12.13:8123"


@pytest.fixture(scope="module")
def backend(k8s_cluster: Cluster) -> Iterator[KubernetesBackend]:
    b = KubernetesBackend(k8s_cluster.config())
    yield b
    b.close()


@pytest.fixture
def policies(backend: KubernetesBackend, run_label: str) -> Iterator[client.NetworkingV1Api]:
    """The networking API; at teardown no policy labeled with the test's run may remain."""
    net = client.NetworkingV1Api(backend.api_client)
    yield net
    left = net.list_namespaced_network_policy(backend.namespace, label_selector=f"{L.RUN}={run_label}").items
    assert not left, f"policies left: {[p.metadata.name for p in left]}"


def _spec(run_label: str, **kw: object) -> SandboxSpec:
    return SandboxSpec(run_label=run_label, image=BUSYBOX, cpus=0.1, memory_mb=64, ttl_s=600, **kw)  # type: ignore[arg-type]


def test_gateway_only_pod_gets_its_policy_and_loses_it_with_the_pod(
    backend: KubernetesBackend, run_label: str, policies: client.NetworkingV1Api
) -> None:
    handle = backend.create(_spec(run_label, gateway=GATEWAY), BUSYBOX)
    try:
        policy = backend.api_client.sanitize_for_serialization(
            policies.read_namespaced_network_policy(handle.name, backend.namespace)
        )
        assert policy["metadata"]["labels"][L.RUN] == run_label
        assert policy["metadata"]["labels"][L.SANDBOX] == handle.name
        assert policy["spec"] == {
            "podSelector": {"matchLabels": {L.SANDBOX: handle.name}},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.11.12.13/32"}}], "ports": [{"protocol": "TCP", "port": 8123}]}],
        }  # `ingress: []` is stored as absent: no rule, so no ingress at all
        pod = backend._core.read_namespaced_pod(handle.name, backend.namespace)
        assert pod.metadata.labels[L.SANDBOX] == handle.name  # what the policy selects
        assert [(a.ip, a.hostnames) for a in pod.spec.host_aliases] == [("10.11.12.13", [GATEWAY_HOSTNAME])]
        env = {e.name: e.value for e in pod.spec.containers[0].env}
        assert env[GATEWAY_URL_ENV] == f"http://{GATEWAY_HOSTNAME}:8123"
    finally:
        backend.destroy(handle)
    with pytest.raises(ApiException) as gone:
        policies.read_namespaced_network_policy(handle.name, backend.namespace)
    assert gone.value.status == 404


def test_default_and_full_network_pods_get_no_policy(
    backend: KubernetesBackend, run_label: str, policies: client.NetworkingV1Api
) -> None:
    for spec in (_spec(run_label), _spec(run_label, network=True, gateway=GATEWAY)):
        handle = backend.create(spec, BUSYBOX)
        try:
            assert not policies.list_namespaced_network_policy(
                backend.namespace, label_selector=f"{L.SANDBOX}={handle.name}"
            ).items
            pod = backend._core.read_namespaced_pod(handle.name, backend.namespace)
            assert L.SANDBOX not in pod.metadata.labels
            aliases = [(a.ip, a.hostnames) for a in pod.spec.host_aliases or []]
            assert aliases == ([("10.11.12.13", [GATEWAY_HOSTNAME])] if spec.gateway else [])
        finally:
            backend.destroy(handle)


def test_hostname_gateway_is_refused_before_anything_exists(
    backend: KubernetesBackend, run_label: str, policies: client.NetworkingV1Api
) -> None:
    with pytest.raises(ConfigError, match=r"^sandbox\.gateway=gw\.example:80: the k8s backend needs an IP"):
        backend.create(_spec(run_label, gateway="gw.example:80"), BUSYBOX)
    assert not backend.list(L.selector(run_label))
