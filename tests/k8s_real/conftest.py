"""Session fixtures for the k8s_real tier: the real single-node cluster (support/real_node.py), started once.

The fixtures have the test-kubelet tier's names (`k8s_cluster`, `run_label`, `docker_client`), so its
behaviour tests run here unchanged against a real kubelet, scheduler and controller-manager. If the
binaries cannot be built or the node does not come up, the tests fail, never skip.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import docker
import pytest
from support.k8s_cluster import BUSYBOX, Cluster, assert_nothing_left, prepare_binaries
from support.procs import HarnessError
from support.real_node import running_real_node


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
def k8s_binaries() -> dict[str, str]:
    try:
        return prepare_binaries("all")
    except HarnessError as e:
        pytest.fail(f"the real-node binaries could not be prepared: {e}")


@pytest.fixture(scope="session")
def k8s_cluster(
    docker_client: docker.DockerClient, k8s_binaries: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    try:
        with running_real_node(tmp_path_factory.mktemp("k8s_real"), k8s_binaries) as cluster:
            yield cluster
    except HarnessError as e:
        pytest.fail(f"the real single-node cluster did not start: {e}")


@pytest.fixture
def run_label(
    request: pytest.FixtureRequest, k8s_cluster: Cluster, docker_client: docker.DockerClient
) -> Iterator[str]:
    """A run prefix unique to this test; at teardown no pod, and no live container of one, may remain."""
    label = f"t{secrets.token_hex(5)}"
    yield label
    assert_nothing_left(k8s_cluster, docker_client, label, request.node.name)
