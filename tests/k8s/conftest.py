"""Session fixtures for the Kubernetes tier: a real kube-apiserver + etcd, the test kubelet, a kubeconfig.

See `support/k8s_cluster.py`. If the harness cannot be built or started the tests fail, never skip. Each test that
makes sandboxes takes a `run_label` of its own; at its teardown no pod or container with that label
may remain.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import docker
import pytest
from support.k8s_cluster import BUSYBOX, Cluster, assert_nothing_left, prepare_binaries, running_cluster
from support.procs import HarnessError


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
    try:
        client.images.get(BUSYBOX)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{BUSYBOX} missing: build the project's images first (scripts/images.sh)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def k8s_cluster(docker_client: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        binaries = prepare_binaries()
        with running_cluster(tmp_path_factory.mktemp("k8s"), binaries) as cluster:
            yield cluster
    except HarnessError as e:
        pytest.fail(f"the Kubernetes test harness did not start: {e}")


@pytest.fixture
def run_label(
    request: pytest.FixtureRequest, k8s_cluster: Cluster, docker_client: docker.DockerClient
) -> Iterator[str]:
    """A run prefix unique to this test; at teardown no pod or container with it may remain."""
    label = f"t{secrets.token_hex(5)}"
    yield label
    assert_nothing_left(k8s_cluster, docker_client, label, request.node.name)
