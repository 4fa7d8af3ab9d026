"""A Ray node removed (`ray.cluster_utils.Cluster`) while it holds leased sandboxes: their callers get one
SandboxGone line, the pool releases them from the driver (whose node shares the daemon), none is left, and
another run's sandbox on the same label lives."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import ray
from ray.cluster_utils import Cluster
from support.waiting import eventually

from harbor_ray import labels as L
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig
from harbor_ray.errors import SandboxGone
from harbor_ray.pool import SandboxPool

from .conftest import busybox, names

pytestmark = [pytest.mark.chaos, pytest.mark.docker, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


async def test_node_removed_while_holding_sandboxes(cluster, run_label, docker_client) -> None:
    backend = DockerBackend()
    other = backend.create(busybox(run_label, labels=((L.PROCESS, L.process_id()),)), BUSYBOX_IMAGE)
    node = cluster.add_node(num_cpus=1, resources={"sandbox_slot": 2})
    pool = SandboxPool(
        DockerBackendConfig(),
        PoolConfig(name=f"chaos-{run_label}", sandbox_resource="sandbox_slot", reap_interval_s=0, start_timeout_s=60),
        run_label=run_label,
    )
    try:
        leases = [pool.lease(busybox(run_label)) for _ in range(2)]
        sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
        assert {(await s.actor.info.remote())["node_id"] for s in sandboxes} == {node.node_id}
        held = {s.handle.name for s in sandboxes}
        await asyncio.to_thread(cluster.remove_node, node)
        for sandbox in sandboxes:
            with pytest.raises(SandboxGone) as gone:
                await asyncio.wait_for(sandbox.exec("true"), 60)
            [line] = str(gone.value).splitlines()
            assert line.startswith(f"{sandbox.handle.name}: its actor died during exec"), line
        assert held <= names(docker_client, run_label)  # the node's actors ran no hook
        await asyncio.gather(*(lease.release() for lease in leases))
        await eventually(lambda: names(docker_client, run_label) == {other.name}, "only the other run's sandbox", 30)
    finally:
        await pool.shutdown()
        assert backend.exec(other, ["echo", "alive"]).stdout == "alive\n"
        backend.destroy(other)
