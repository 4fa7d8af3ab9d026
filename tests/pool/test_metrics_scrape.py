"""The pool's Ray metrics as an operator reads them: scraped over HTTP from every Ray node's metrics endpoint
(Prometheus text, parsed with prometheus_client's parser by `harbor_ray.ops.metrics`), per host, before, during
and after a host's Ray node is lost, on a `ray.cluster_utils.Cluster` sharing the real engine.

Ray exports an application metric every `metrics_report_interval_ms` (10 s by default); the cluster here sets
500 ms through its system config, and the checks poll (support.waiting) instead of sleeping.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from support.procs import free_port

from harbor_ray.ops.metrics import Endpoint, Sample, endpoints, scrape_all

from .conftest import all_gone, busybox, eventually, ours

pytestmark = [pytest.mark.docker, pytest.mark.ray, pytest.mark.slow]

HOST_KEY = "harbor-ray/host"
REPORT_MS = 500


def sandbox_node(c: Cluster, name: str) -> Any:
    return c.add_node(
        num_cpus=1, resources={"sandbox_slot": 2}, labels={HOST_KEY: name}, metrics_export_port=free_port()
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    if ray.is_initialized():
        ray.shutdown()
    head = {
        "num_cpus": 0,
        "include_dashboard": False,
        "metrics_export_port": free_port(),
        "_system_config": {"metrics_report_interval_ms": REPORT_MS},
    }
    c = Cluster(initialize_head=True, head_node_args=head)
    nodes = {"w1": sandbox_node(c, "w1"), "w2": sandbox_node(c, "w2")}
    ray.init(address=c.address, log_to_driver=False)
    yield {"cluster": c, "nodes": nodes, "head": c.head_node.node_id}
    ray.shutdown()
    c.shutdown()


def scrape() -> dict[Endpoint, list[Sample] | str]:
    return scrape_all(endpoints(ray.nodes()))


def pool_series(pool: str) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] | None:
    """(node id, {(sample name, labels without pool): value}) of the one node exporting this pool's series."""
    found = []
    for endpoint, samples in scrape().items():
        if isinstance(samples, str):
            continue
        mine = {
            (s.name, tuple(kv for kv in s.labels if kv[0] != "pool")): s.value
            for s in samples
            if s.label("pool") == pool
        }
        if mine:
            found.append((endpoint.node_id, mine))
    assert len(found) <= 1, f"the pool's series on several nodes: {[n for n, _ in found]}"
    return found[0] if found else None


def value(series: dict, name: str, **labels: str) -> float | None:
    return series.get((name, tuple(sorted(labels.items()))))


async def lease_on(pool: Any, run_label: str, i: int) -> str:
    async with pool.lease(busybox(run_label)) as sandbox:
        assert (await sandbox.exec(f"echo {i}")).stdout.strip() == str(i)
        return sandbox.handle.labels["harbor-ray/host"]


async def test_every_node_serves_prometheus_text_and_the_pool_node_has_the_pools_series(
    cluster, run_label, docker_client, make_pool
) -> None:
    c: Cluster = cluster["cluster"]
    found = endpoints(ray.nodes())
    assert {e.node_id for e in found} == {cluster["head"], *(n.node_id for n in cluster["nodes"].values())}
    name = f"pool-{run_label}"
    pool = make_pool(
        hosts=[{"name": n, "node_labels": {HOST_KEY: n}, "slots": 2} for n in ("w1", "w2")],
        sandbox_resource="sandbox_slot",
        circuit_reset_s=2,  # w2's circuit, opened by its loss, half-opens soon after it returns
        start_timeout_s=60,
    )

    # before: a batch over w1 and w2
    hosts = await asyncio.gather(*(lease_on(pool, run_label, i) for i in range(6)))
    assert set(hosts) == {"w1", "w2"}
    stats = await pool.stats()

    def settled() -> Any:
        got = pool_series(name)
        if got is None:
            return None
        node, s = got
        starts = sum(value(s, "ray_harbor_ray_sandbox_starts_total", host=h) or 0 for h in ("w1", "w2"))
        waits = value(s, "ray_harbor_ray_lease_wait_seconds_count")
        return (node, s) if starts == stats["started"] and waits == 6 else None

    node, s = await eventually(settled, "the batch's starts and lease waits on the pool node's endpoint", 60)
    assert node == cluster["head"]  # the in-process pool runs in this driver, on the head node
    for h in ("w1", "w2"):
        started = value(s, "ray_harbor_ray_sandbox_starts_total", host=h)
        assert (started or 0) >= 1
        assert value(s, "ray_harbor_ray_sandbox_start_seconds_count", host=h) == started
        assert value(s, "ray_harbor_ray_sandbox_start_seconds_bucket", host=h, le="+Inf") == started
        assert value(s, "ray_harbor_ray_host_sandboxes", host=h, state="slots") == 2
        assert value(s, "ray_harbor_ray_host_available", host=h) == 1

    # during: w2's Ray node is lost mid-batch; the pool's node reports it unavailable, w1 keeps serving
    batch = [asyncio.create_task(lease_on(pool, run_label, 10 + i)) for i in range(4)]
    await eventually(lambda: pool.stats_sync()["hosts"]["w2"]["used"] >= 1, "a sandbox on w2")
    w2 = cluster["nodes"]["w2"]
    await asyncio.to_thread(c.remove_node, w2)
    await asyncio.gather(*batch, return_exceptions=True)
    await eventually(
        lambda: (got := pool_series(name)) and value(got[1], "ray_harbor_ray_host_available", host="w2") == 0,
        "w2 exported as unavailable",
        60,
    )
    lost = next(e for e in endpoints(ray.nodes()) if e.node_id == w2.node_id)
    assert scrape()[lost] == "node not alive"  # its endpoint is gone with it; the others still answer
    assert all(isinstance(r, list) for e, r in scrape().items() if e.node_id != w2.node_id)
    assert await lease_on(pool, run_label, 20) == "w1"

    # after: a node with w2's label comes back; the pool takes the host back and exports it so
    cluster["nodes"]["w2"] = sandbox_node(c, "w2")
    await eventually(
        lambda: (got := pool_series(name)) and value(got[1], "ray_harbor_ray_host_available", host="w2") == 1,
        "w2 exported as available again",
        90,
    )
    before = value(pool_series(name)[1], "ray_harbor_ray_sandbox_starts_total", host="w2") or 0
    results = await asyncio.gather(*(lease_on(pool, run_label, 30 + i) for i in range(4)))
    if "w2" in results:
        await eventually(
            lambda: (value(pool_series(name)[1], "ray_harbor_ray_sandbox_starts_total", host="w2") or 0) > before,
            "w2's starts counted after its return",
            60,
        )
    await pool.shutdown()
    # the lost node's sandbox outlived its actor: the pool's shutdown sweep removes it (slowly on a loaded machine)
    await eventually(lambda: not ours(docker_client, run_label), "no container of the run left", 120)


async def test_a_host_whose_daemon_is_gone_is_counted_and_exported_unavailable(
    cluster, run_label, docker_client, make_pool
) -> None:
    name = f"pool-{run_label}"
    bad = {"name": "bad", "url": "unix:///nonexistent/docker.sock", "node_labels": {HOST_KEY: "w1"}, "slots": 1}
    pool = make_pool(
        hosts=[bad, {"name": "w1", "node_labels": {HOST_KEY: "w1"}, "slots": 2}],
        sandbox_resource="sandbox_slot",
        circuit_failures=1,
        circuit_reset_s=600,
    )
    hosts = await asyncio.gather(*(lease_on(pool, run_label, i) for i in range(3)))
    assert set(hosts) == {"w1"}  # every start on the daemon-less host failed over
    failed = (await pool.stats())["failures"].get("BackendUnavailable", 0)
    assert failed >= 1

    def exported() -> Any:
        got = pool_series(name)
        return got and value(got[1], "ray_harbor_ray_sandbox_failures_total", host="bad", kind="BackendUnavailable")

    assert await eventually(exported, "the daemon-less host's failures on the endpoint", 60) == failed
    s = pool_series(name)[1]
    assert value(s, "ray_harbor_ray_host_available", host="bad") == 0  # its circuit is open
    assert value(s, "ray_harbor_ray_host_available", host="w1") == 1
    assert value(s, "ray_harbor_ray_sandbox_starts_total", host="bad") is None  # nothing ever started there
    await pool.shutdown()
    await all_gone(docker_client, run_label)


async def test_the_metrics_command_reads_every_node(cluster, run_label, make_pool) -> None:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    pool = make_pool(
        hosts=[{"name": "w1", "node_labels": {HOST_KEY: "w1"}, "slots": 2}], sandbox_resource="sandbox_slot"
    )
    await lease_on(pool, run_label, 1)
    name = f"pool-{run_label}"
    await eventually(lambda: pool_series(name), "the pool's series exported", 60)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(root)}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "harbor_ray", "metrics", "--address", cluster["cluster"].address, "--json"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert alive <= set(data)
    assert all("samples" in data[n] for n in alive), data
    mine = [s for s in data[cluster["head"]]["samples"] if s["labels"].get("pool") == name]
    assert {"name": "ray_harbor_ray_sandbox_starts_total", "labels": {"pool": name, "host": "w1"}, "value": 1.0} in mine
