"""The test hosts themselves: each host's daemon is its own (data root, TLS listener at its address), each Ray
node joined with its labels and slots, and a sandbox actor placed on a host's node creates its sandbox on
that host's daemon, not on any other."""

from __future__ import annotations

import pytest
import ray

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig, TLSFiles
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.sandbox import Sandbox, actor_class

pytestmark = [pytest.mark.hosts, pytest.mark.docker, pytest.mark.ray]


def test_each_host_has_its_own_daemon_and_node(hosts) -> None:
    roots = {}
    for host in hosts.hosts.values():
        info = host.client().info()
        roots[host.name] = info["DockerRootDir"]
        [node] = [n for n in ray.nodes() if n["NodeID"] == host.node_id]
        assert node["Alive"]
        assert node["NodeManagerAddress"] == host.address
        assert node["Labels"]["harbor-ray/host"] == host.name
        assert node["Resources"]["sandbox_slot"] == hosts.slots_of(host)
    assert len(set(roots.values())) == len(roots), roots  # three daemons, not one
    for host in hosts.remote:
        tls = DockerBackendConfig(
            kind="docker_remote", host=host.tls_url, tls=TLSFiles(cert_path=str(hosts.client_certs))
        )
        assert DockerBackend(tls).client.info()["DockerRootDir"] == roots[host.name]
        assert host.tls_url == f"tcp://{host.address}:2376"


async def test_a_sandbox_actor_uses_the_daemon_of_its_node(hosts, hosts_label) -> None:
    spec = SandboxSpec(run_label=hosts_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=300)
    sandboxes = {}
    try:
        for host in hosts.hosts.values():
            actor = actor_class(label_selector={"harbor-ray/host": host.name}).remote(DockerBackendConfig())
            sandboxes[host.name] = await Sandbox.create(DockerBackendConfig(), spec, actor=actor)
        for name, sandbox in sandboxes.items():
            host = hosts[name]
            assert (await sandbox.actor.info.remote())["node_id"] == host.node_id
            assert sandbox.handle.host == host.docker_url
            on_daemon = host.client().containers.list(filters={"label": f"{L.RUN}={hosts_label}"})
            assert [c.name for c in on_daemon] == [sandbox.handle.name]
            assert (await sandbox.exec("hostname")).stdout.strip() == sandbox.handle.name[:63]
    finally:
        for sandbox in sandboxes.values():
            await sandbox.stop()
