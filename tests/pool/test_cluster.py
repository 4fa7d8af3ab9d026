"""The pool on a multi-node Ray cluster (`ray.cluster_utils.Cluster`) sharing the real engine.

Nodes: a head with 0 CPUs; a "GPU" node whose GPU and CPU a trainer placement group holds; two sandbox
nodes (w1, w2) with `sandbox_slot` and a host label; a plain CPU node without either. Sandbox actors
must land only on w1/w2, never exceed a host's slots, spread load over both, and survive a node leaving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group, placement_group_table
from support import tls_proxy
from support.procs import Listener

from harbor_ray import labels as L
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.errors import HarborRayError
from harbor_ray.pool.hosts import HOST_LABEL

from .conftest import all_gone, busybox, eventually

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

HOST_KEY = "harbor-ray/host"
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = {
        "gpu": c.add_node(num_cpus=1, num_gpus=1, labels={"node-kind": "gpu"}),
        "w1": c.add_node(num_cpus=1, resources={"sandbox_slot": 2}, labels={HOST_KEY: "w1", "node-kind": "cpu"}),
        "w2": c.add_node(num_cpus=1, resources={"sandbox_slot": 2}, labels={HOST_KEY: "w2", "node-kind": "cpu"}),
        "plain": c.add_node(num_cpus=1, labels={"node-kind": "cpu"}),
    }
    ray.init(address=c.address, log_to_driver=False)
    trainer = placement_group([{"GPU": 1, "CPU": 1}], strategy="STRICT_PACK")  # the trainer's GPU bundle
    ray.get(trainer.ready(), timeout=120)
    yield {"cluster": c, "nodes": nodes, "ids": {k: n.node_id for k, n in nodes.items()}, "trainer": trainer}
    ray.shutdown()
    c.shutdown()


def two_hosts(*names: str, slots: int = 2) -> list[dict[str, Any]]:
    return [{"name": n, "node_labels": {HOST_KEY: n}, "slots": slots} for n in names]


class Peak:
    """Samples our containers per host label in a thread (no inspect calls: containers come and go)."""

    def __init__(self, docker_client: Any, run_label: str) -> None:
        self.client, self.run_label = docker_client, run_label
        self.peak: Counter[str] = Counter()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._done.is_set():
            found = self.client.api.containers(all=True, filters={"label": f"{L.RUN}={self.run_label}"})
            for host, n in Counter(c["Labels"].get(HOST_LABEL, "?") for c in found).items():
                self.peak[host] = max(self.peak[host], n)

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()


async def lease_and_report(pool: Any, run_label: str, i: int, hold: str = "sleep 0.3") -> tuple[str, str, str]:
    async with pool.lease(busybox(run_label)) as sandbox:
        info = await sandbox.actor.info.remote()
        out = (await sandbox.exec(f"{hold}; echo {i}")).stdout.strip()
        return info["node_id"], sandbox.handle.labels[HOST_LABEL], out


async def test_burst_lands_only_on_sandbox_nodes_within_slots(cluster, run_label, docker_client, make_pool) -> None:
    ids = cluster["ids"]
    pool = make_pool(hosts=two_hosts("w1", "w2"), sandbox_resource="sandbox_slot", max_sandboxes=16)
    with Peak(docker_client, run_label) as peak:
        results = await asyncio.gather(*(lease_and_report(pool, run_label, i) for i in range(12)))  # 3x capacity
    assert [r[2] for r in results] == [str(i) for i in range(12)]
    assert {r[0] for r in results} == {ids["w1"], ids["w2"]}  # only sandbox nodes, and both of them
    by_host = Counter(r[1] for r in results)
    assert set(by_host) == {"w1", "w2"}
    assert min(by_host.values()) >= 2, by_host  # load spread over both hosts
    assert all(r[0] == ids[r[1]] for r in results)  # each sandbox on its host's node
    assert set(peak.peak) <= {"w1", "w2"}
    assert max(peak.peak.values()) <= 2, peak.peak  # never more containers on a host than its slots
    stats = await pool.stats()
    assert stats["leases"] == 12
    assert stats["alive"] == 0
    assert all(h["used"] == h["idle_actors"] for h in stats["hosts"].values())  # only recycled actors kept
    [trainer] = [g for g in placement_group_table().values() if g["placement_group_id"] == cluster["trainer"].id.hex()]
    assert trainer["state"] == "CREATED"  # the trainer's bundle was never touched


async def test_hosts_discovered_per_node_from_the_resource(cluster, run_label, make_pool) -> None:
    ids = cluster["ids"]
    pool = make_pool(sandbox_resource="sandbox_slot", prestart_actors=1)
    results = await asyncio.gather(*(lease_and_report(pool, run_label, i) for i in range(5)))
    assert {r[0] for r in results} <= {ids["w1"], ids["w2"]}
    hosts = (await pool.stats())["hosts"]
    assert set(hosts) == {f"node-{ids['w1'][:12]}", f"node-{ids['w2'][:12]}"}
    assert all(h["slots"] == 2 for h in hosts.values())


@pytest.fixture
def remote_daemon() -> Iterator[str]:
    """The engine behind a plain TCP listener (tests/support/tls_proxy.py): a "remote" daemon."""
    listener = Listener(tls_proxy.command("--plain"))
    try:
        yield listener.url
    finally:
        listener.stop()


async def test_remote_daemon_actors_spread_over_sandbox_nodes(cluster, run_label, make_pool, remote_daemon) -> None:
    ids = cluster["ids"]
    backend = DockerBackendConfig(kind="docker_remote", host=remote_daemon, allow_insecure=True, slots=4)
    pool = make_pool(backend=backend, sandbox_resource="sandbox_slot")
    results = await asyncio.gather(*(lease_and_report(pool, run_label, i, hold="sleep 1") for i in range(4)))
    assert {r[0] for r in results} == {ids["w1"], ids["w2"]}  # SPREAD, and only where sandbox_slot is
    assert {r[1] for r in results} == {remote_daemon}  # one host: the daemon, with backend.slots


async def test_gang_spreads_over_hosts(cluster, run_label, make_pool) -> None:
    ids = cluster["ids"]
    pool = make_pool(hosts=two_hosts("w1", "w2"), sandbox_resource="sandbox_slot")
    async with pool.lease_group(busybox(run_label), 2, strategy="STRICT_SPREAD") as sandboxes:
        nodes = [(await s.actor.info.remote())["node_id"] for s in sandboxes]
        assert sorted(nodes) == sorted([ids["w1"], ids["w2"]])


async def test_node_leaving_mid_run_loses_no_result(cluster, run_label, docker_client, make_pool) -> None:
    c: Cluster = cluster["cluster"]
    w3 = c.add_node(num_cpus=1, resources={"sandbox_slot": 2}, labels={HOST_KEY: "w3", "node-kind": "cpu"})
    pool = make_pool(hosts=two_hosts("w2", "w3"), sandbox_resource="sandbox_slot", warm_per_image=1, start_timeout_s=60)
    outcomes: list[str] = []

    async def trial(i: int) -> None:
        try:
            _, _, out = await lease_and_report(pool, run_label, i, hold="sleep 1")
            outcomes.append("ok" if out == str(i) else f"wrong output {out!r}")
        except HarborRayError as e:
            outcomes.append(type(e).__name__)  # a recorded error the caller can retry on a fresh sandbox

    trials = [asyncio.create_task(trial(i)) for i in range(10)]
    await eventually(lambda: pool.stats_sync()["hosts"].get("w3", {}).get("used", 0) >= 1, "a sandbox on w3")
    await asyncio.to_thread(c.remove_node, w3)
    await asyncio.wait_for(asyncio.gather(*trials), 600)  # never wedged
    log.info("outcomes: %s", outcomes)
    assert len(outcomes) == 10
    assert outcomes.count("ok") >= 1, outcomes
    assert set(outcomes) <= {"ok", "SandboxGone", "SandboxStartError", "CircuitOpen"}, outcomes
    await eventually(lambda: not pool.stats_sync()["hosts"]["w3"]["alive"], "w3 seen gone")
    _, host, out = await lease_and_report(pool, run_label, 99)
    assert (host, out) == ("w2", "99")  # the pool still serves
    await pool.shutdown()
    await all_gone(docker_client, run_label)
