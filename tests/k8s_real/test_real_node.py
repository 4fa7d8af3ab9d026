"""What only a real kubelet shows: the node's pids limit on pods, scheduling by node labels, a pod killed
under a lease, the reaper on pods, and how fast a deleted pod's containers stop."""

from __future__ import annotations

import time
from pathlib import Path

import docker
import pytest
from support.k8s_cluster import BUSYBOX, Cluster, leftovers, sandbox_container
from support.real_node import NODE_LABELS, POD_PIDS_LIMIT

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.config import PoolConfig
from harbor_ray.errors import SandboxGone, SandboxStartError
from harbor_ray.ops.dryrun.kubernetes import k8s_checks
from harbor_ray.pool import SandboxPool
from harbor_ray.reaper import reap

pytestmark = [pytest.mark.k8s_real, pytest.mark.docker]


def small(run_label: str, **kw: object) -> SandboxSpec:
    base: dict[str, object] = {"image": BUSYBOX, "run_label": run_label, "cpus": 0.1, "memory_mb": 64, "ttl_s": 600}
    base.update(kw)
    return SandboxSpec(**base)  # type: ignore[arg-type]


def test_the_nodes_pids_limit_bounds_a_pod(k8s_cluster: Cluster, run_label: str, docker_client) -> None:
    backend = KubernetesBackend(k8s_cluster.config())
    handle = backend.create(small(run_label), BUSYBOX)
    try:
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        uid = pod["metadata"]["uid"]
        [pids_max] = Path("/sys/fs/cgroup/pids").glob(f"kubepods*/**/pod{uid}/pids.max")
        assert pids_max.read_text().strip() == str(POD_PIDS_LIMIT)
        # More background processes than the limit: a fork past it fails inside the pod.
        script = f"for i in $(seq {POD_PIDS_LIMIT + 100}); do sleep 3 >/dev/null 2>&1 & done; echo all forked"
        r = backend.exec(handle, ["sh", "-c", script], timeout_s=60)
        assert r.return_code != 0, r
        assert "all forked" not in r.stdout
        assert "can't fork" in r.stderr or "Resource temporarily unavailable" in r.stderr, r.stderr[-300:]
        time.sleep(4)  # the sleeps end; the pod forks again
        assert backend.exec(handle, ["echo", "alive"], timeout_s=30).stdout == "alive\n"
        # dryrun says which limit holds, read from the node's kubelet
        [line] = [c for c in k8s_checks(k8s_cluster.config(), pids_limit=POD_PIDS_LIMIT) if c.name == "k8s pids limit"]
        assert line.ok, line
        assert f"{k8s_cluster.node}: {POD_PIDS_LIMIT}" in line.detail
        [looser] = [c for c in k8s_checks(k8s_cluster.config(), pids_limit=100) if c.name == "k8s pids limit"]
        assert (looser.ok, looser.warning) == (False, True)
        assert "looser than asked" in looser.detail
    finally:
        backend.destroy(handle)


def test_placement_by_node_labels(k8s_cluster: Cluster, run_label: str) -> None:
    """The real scheduler binds by the node's labels; a selector no node has leaves the pod unschedulable."""
    code, node = k8s_cluster.request("GET", f"/api/v1/nodes/{k8s_cluster.node}")
    assert code == 200
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.20.2"  # a real kubelet, not the test one
    assert NODE_LABELS.items() <= node["metadata"]["labels"].items()
    placed = KubernetesBackend(k8s_cluster.config(node_selector={"harbor-ray-test/real": "1"}))
    handle = placed.create(small(run_label), BUSYBOX)
    try:
        [pod] = k8s_cluster.pods(f"{L.RUN}={run_label}")
        assert pod["spec"]["nodeName"] == k8s_cluster.node
        scheduled = next(c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled")
        assert scheduled["status"] == "True"
    finally:
        placed.destroy(handle)
    nowhere = KubernetesBackend(k8s_cluster.config(node_selector={"harbor-ray-test/real": "0"}, start_timeout_s=3))
    with pytest.raises(SandboxStartError, match="Unschedulable"):
        nowhere.create(small(run_label), BUSYBOX)


def test_deleted_pods_containers_stop_and_pause_waits_for_gc(
    k8s_cluster: Cluster, run_label: str, docker_client: docker.DockerClient
) -> None:
    """destroy returns when the API has no pod; the kubelet then stops its containers (about a second here).
    The exited pause container, the one carrying our labels, stays until the kubelet's container GC."""
    backend = KubernetesBackend(k8s_cluster.config())
    handle = backend.create(small(run_label), BUSYBOX)
    sandbox_container(docker_client, handle.name)  # running
    backend.destroy(handle)
    deadline = time.monotonic() + 20
    while leftovers(k8s_cluster, docker_client, run_label) != ([], []):
        assert time.monotonic() < deadline, leftovers(k8s_cluster, docker_client, run_label)
        time.sleep(0.2)
    exited = docker_client.api.containers(all=True, filters={"label": f"{L.RUN}={run_label}"})
    assert all(c["State"] != "running" for c in exited)
    assert all(c["Labels"]["io.kubernetes.docker.type"] == "podsandbox" for c in exited)


async def test_a_pod_killed_under_a_lease(ray_local, k8s_cluster: Cluster, run_label: str) -> None:
    pool = SandboxPool(
        k8s_cluster.config(), PoolConfig(name=f"pool-{run_label}", reap_interval_s=0), run_label=run_label
    )
    try:
        lease = pool.lease(small(run_label))
        sandbox = await lease.acquire()
        assert (await sandbox.exec("echo up")).stdout == "up\n"
        k8s_cluster.delete_pod(sandbox.handle.name)  # from outside: an eviction, a node drain, an admin
        for _ in range(100):  # the pod's container stops a moment after the API forgets it
            try:
                await sandbox.exec("true")
            except SandboxGone:
                break
            time.sleep(0.1)
        with pytest.raises(SandboxGone):
            await sandbox.exec("true")
        await lease.release()
        async with pool.lease(small(run_label)) as fresh:
            assert (await fresh.exec("echo again")).stdout == "again\n"
    finally:
        await pool.shutdown()


def test_reaper_takes_expired_pods_only(k8s_cluster: Cluster, run_label: str) -> None:
    backend = KubernetesBackend(k8s_cluster.config())
    expiring = backend.create(small(run_label, ttl_s=120), BUSYBOX)
    lasting = backend.create(small(run_label, ttl_s=3600), BUSYBOX)
    other = backend.create(small(f"{run_label}x", ttl_s=120), BUSYBOX)
    try:
        assert reap(backend, run_label) == []  # the owner (this process) lives, nothing expired
        assert reap(backend, run_label, now=time.time() + 600) == [expiring.name]
        assert [h.name for h in backend.list(L.selector(run_label))] == [lasting.name]
        assert [h.name for h in backend.list(L.selector(f"{run_label}x"))] == [other.name]
    finally:
        for h in (expiring, lasting, other):
            backend.destroy(h)
