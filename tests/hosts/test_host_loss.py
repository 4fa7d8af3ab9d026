"""A host lost in the middle of a Harbor batch, and a host whose daemon is cut off while Ray still reaches it.

Loss: h1 drops off the network (its veth goes down: its Ray node and its daemon are gone for everyone) while
six trials nap (20 s), two on each host. Its two trials are recorded `sandbox_lost` and retried on the other hosts, the
batch ends with reward 1 everywhere, the pool stops placing on h1 (its node is gone), nothing of the run is left
on the surviving daemons, and once h1 is back (network restored, a new Ray node) the pool's reaper removes what
the lost trials left on its daemon and leases go there again.

Partition: h2's daemon drops every packet on :2376 while its Ray node lives: starts there fail over within
`pool.start_timeout_s`, its circuit opens, and no lease waits longer than that.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest
from support.waiting import eventually

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig, TLSFiles
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig, load_config
from harbor_ray.harbor.runner import run_trials
from harbor_ray.pool import SandboxPool

pytestmark = [pytest.mark.hosts, pytest.mark.docker, pytest.mark.ray, pytest.mark.chaos, pytest.mark.slow]

NAPPER = Path(__file__).resolve().parent / "tasks" / "napper"


def running(host, label: str) -> list[str]:
    return [c.name for c in host.client(timeout=10).containers.list(filters={"label": f"{L.RUN}={label}"})]


def on_daemon(host, label: str) -> list[str]:
    return [c.name for c in host.client(timeout=10).containers.list(all=True, filters={"label": f"{L.RUN}={label}"})]


async def reaped_at_least(pool: SandboxPool, n: int) -> bool:
    return (await pool.stats())["reaped"] >= n


def busybox(label: str) -> SandboxSpec:
    return SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=600)


async def test_a_host_lost_mid_batch_costs_only_its_trials(hosts, hosts_label, tmp_path) -> None:
    cfg = load_config(
        [
            f"run_label={hosts_label}", f"jobs_dir={tmp_path}", "job_name=job", "agent=oracle", f"tasks=[{NAPPER}]",
            "n_attempts=6", "n_concurrent=6", "max_retries=1", "pool.shared=false", f"pool.name=loss-{hosts_label}",
            "pool.sandbox_resource=sandbox_slot", "pool.max_sandboxes=6", "pool.reap_interval_s=3",
            "pool.start_timeout_s=60", "pool.keep_actors_s=0",
        ]
    )  # fmt: skip
    cfg.backend = DockerBackendConfig(timeout_s=30)  # each Ray node's own daemon (DOCKER_HOST of its node)
    cfg.pool.hosts = [h.node_entry() for h in hosts.hosts.values()]
    pool = SandboxPool.from_config(cfg)
    h1 = hosts["h1"]
    # the image on every daemon first, so that the six trials nap together (a daemon still building would
    # start its two after the others woke up)
    build = SandboxSpec(run_label=hosts_label, build_context=str(NAPPER / "environment"))
    for host in hosts.hosts.values():
        await asyncio.to_thread(DockerBackend(DockerBackendConfig(host=host.docker_url)).ensure_image, build)
    try:
        batch = asyncio.create_task(run_trials(cfg, pool=pool))
        await eventually(lambda: all(len(running(h, hosts_label)) == 2 for h in hosts.hosts.values()), "6 napping", 240)
        lost = set(running(h1, hosts_label))
        h1.cut()
        try:
            records = await asyncio.wait_for(batch, 300)
            stats = await pool.stats()
            # nothing of the run is left on the surviving hosts; h1's are still there, cut off
            assert on_daemon(hosts.local, hosts_label) == []
            assert on_daemon(hosts["h2"], hosts_label) == []
        finally:
            h1.restore()

        firsts = {r.trial: r for r in records if r.try_number == 1}
        retries = {r.trial.removesuffix("__try2"): r for r in records if r.try_number == 2}
        assert {r.sandbox for r in firsts.values() if r.reason == "sandbox_lost"} == lost
        assert len(lost) == 2
        assert sorted(retries) == sorted(t for t, r in firsts.items() if r.sandbox in lost)
        finals = {**{t: r for t, r in firsts.items() if t not in retries}, **retries}
        assert [(r.reward, r.reason) for r in finals.values()] == [(1.0, "completed")] * 6
        assert not {r.sandbox for r in retries.values()} & set(on_daemon(h1, hosts_label))
        assert stats["hosts"]["h1"]["alive"] is False  # the pool stopped placing there
        assert stats["hosts"]["h1"]["used"] == 0

        # h1 comes back: a new Ray node (the GCS declared the old one dead); the reaper removes what the lost
        # trials left on its daemon (their actors are dead), and the pool places there again
        assert set(on_daemon(h1, hosts_label)) == lost
        h1.start_ray()
        await eventually(lambda: not on_daemon(h1, hosts_label), "h1's leftovers removed", 90)
        # by the reaper: a pass counts what it removed once every host's reaper task has answered, a moment
        # after h1's removals show on its daemon
        await eventually(lambda: reaped_at_least(pool, 2), "the pool's reaper counted h1's leftovers", 30)
        leases = [pool.lease(busybox(hosts_label)) for _ in range(6)]
        got = await asyncio.wait_for(asyncio.gather(*(lease.acquire() for lease in leases)), 180)
        assert Counter(s.handle.labels[L.HOST] for s in got) == {"local": 2, "h1": 2, "h2": 2}
        await asyncio.gather(*(lease.release() for lease in leases))
    finally:
        await pool.shutdown()


async def test_a_daemon_cut_off_from_ray_fails_over_within_start_timeout(hosts, hosts_label) -> None:
    backend = DockerBackendConfig(tls=TLSFiles(cert_path=str(hosts.client_certs)), timeout_s=60)
    config = PoolConfig(
        name=f"cut-{hosts_label}", hosts=[h.pool_entry() for h in hosts.remote], sandbox_resource="sandbox_slot",
        max_sandboxes=4, start_timeout_s=10, circuit_failures=1, circuit_reset_s=600, reap_interval_s=0,
        keep_actors_s=0, health_interval_s=0,
    )  # fmt: skip
    pool = SandboxPool(backend, config, run_label=hosts_label)
    h2 = hosts["h2"]
    await pool.start()
    h2.block_daemon()  # Ray still reaches h2's node; its daemon's TLS port drops every packet
    try:
        began = time.monotonic()
        leases = [pool.lease(busybox(hosts_label)) for _ in range(2)]
        got = await asyncio.wait_for(asyncio.gather(*(lease.acquire() for lease in leases)), 60)
        waited = time.monotonic() - began
        assert [s.handle.labels[L.HOST] for s in got] == ["h1", "h1"]
        assert waited < config.start_timeout_s + 20, waited  # one timed-out start, then h1: no lease hangs
        stats = await pool.stats()
        assert stats["hosts"]["h2"]["circuit"]["state"] == "open"
        assert "no sandbox within 10s" in stats["hosts"]["h2"]["circuit"]["last_error"]
        assert stats["hosts"]["h2"]["alive"] is True  # its Ray node is fine: it is the daemon that is cut off
        await asyncio.gather(*(lease.release() for lease in leases))
        began = time.monotonic()
        async with pool.lease(busybox(hosts_label)) as sandbox:  # straight to h1 while h2's circuit is open
            assert sandbox.handle.labels[L.HOST] == "h1"
        assert time.monotonic() - began < config.start_timeout_s
    finally:
        h2.unblock_daemon()
        await pool.shutdown()
