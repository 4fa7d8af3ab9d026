"""One pool over three daemons: the local one (the head node's) and two remote ones over mutual TLS, each its own
dockerd in its own network namespace. Harbor's own Trial runs the batch; every claim is read back from the daemons
themselves (their containers, their event streams read live), never from the pool's own account alone."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from support.hosts import TestHosts

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig, TLSFiles
from harbor_ray.backends.images import BUSYBOX_IMAGE, env_image_tag
from harbor_ray.config import PoolConfig, load_config
from harbor_ray.harbor.runner import run_trials
from harbor_ray.pool import SandboxPool

pytestmark = [pytest.mark.hosts, pytest.mark.docker, pytest.mark.ray, pytest.mark.harbor, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "tasks"


class Events:
    """Each daemon's container-create and image-tag events while the block runs, read live (a daemon keeps only
    its last 256 events for later queries, and the machine's own daemon serves other runs too)."""

    def __init__(self, hosts: TestHosts) -> None:
        self.hosts = hosts
        self.seen: dict[str, list[dict[str, Any]]] = {h: [] for h in hosts.hosts}
        self._streams: list[Any] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Events:
        for name, host in self.hosts.hosts.items():
            stream = host.client(timeout=3600).events(
                decode=True, filters={"type": ["container", "image"], "event": ["create", "tag"]}
            )
            self._streams.append(stream)
            thread = threading.Thread(target=self._read, args=(name, stream), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def _read(self, name: str, stream: Any) -> None:
        with contextlib.suppress(Exception):  # ends when the stream is closed
            for event in stream:
                self.seen[name].append(event)

    def __exit__(self, *exc: object) -> None:
        time.sleep(1)  # the last events in flight
        for stream in self._streams:
            stream.close()
        for thread in self._threads:
            thread.join(10)

    def created(self, host: str, label: str) -> dict[str, str]:
        """Containers of `label` the host's daemon created: name -> their harbor-ray/host label (not a build's)."""
        found = {
            e["Actor"]["Attributes"]["name"]: e["Actor"]["Attributes"].get(L.HOST, "")
            for e in self.seen[host]
            if e.get("Type") == "container" and e["Actor"]["Attributes"].get(L.RUN) == label
        }
        return {name: h for name, h in found.items() if name.startswith(f"{label}-")}

    def tags(self, host: str, ref: str) -> int:
        """How many times the host's daemon tagged `ref` (one per build)."""
        return sum(e.get("Type") == "image" and e["Actor"]["Attributes"].get("name") == ref for e in self.seen[host])


def has_image(host: Any, ref: str) -> bool:
    return bool(host.client().images.list(name=ref))


def on_daemon(host: Any, label: str) -> list[str]:
    return [c.name for c in host.client().containers.list(all=True, filters={"label": f"{L.RUN}={label}"})]


def tls_backend(hosts: TestHosts) -> DockerBackendConfig:
    return DockerBackendConfig(tls=TLSFiles(cert_path=str(hosts.client_certs)), timeout_s=30)


async def test_a_batch_spreads_over_local_and_tls_daemons(hosts, hosts_label, tmp_path) -> None:
    tasks = [EXAMPLES / "hello-file", EXAMPLES / "sum-numbers"]
    cfg = load_config(
        [
            f"run_label={hosts_label}",
            f"jobs_dir={tmp_path}",
            "job_name=job",
            "agent=oracle",
            "n_attempts=3",
            "n_concurrent=6",
            f"tasks=[{tasks[0]},{tasks[1]}]",
            "pool.shared=false",
            f"pool.name=batch-{hosts_label}",
            "pool.sandbox_resource=sandbox_slot",
            "pool.max_sandboxes=6",
        ]
    )
    cfg.backend = tls_backend(hosts)
    cfg.pool.hosts = hosts.pool_hosts()  # local (the head node's daemon) + h1, h2 over TLS, 2 slots each
    images = {t.name: env_image_tag(t / "environment") for t in tasks}
    had = {(h.name, task): has_image(h, ref) for h in hosts.hosts.values() for task, ref in images.items()}
    with Events(hosts) as events:
        records = await run_trials(cfg)

    assert [(r.reward, r.error) for r in records] == [(1.0, None)] * 6, [(r.error_message, r.sandbox) for r in records]
    made = {h: events.created(h, hosts_label) for h in hosts.hosts}
    # each sandbox was created on exactly one daemon: the one of the host the pool put it on
    for host, sandboxes in made.items():
        assert set(sandboxes.values()) <= {host}, made
    ran_on = {name: host for host, sandboxes in made.items() for name in sandboxes}
    assert sorted(ran_on) == sorted(r.sandbox for r in records)
    # six at once over three hosts of two slots: two on each
    assert Counter(ran_on.values()) == {"local": 2, "h1": 2, "h2": 2}, made
    # each task image built once on each daemon that ran it (the netns daemons start without it)
    for host in hosts.hosts.values():
        for task, ref in images.items():
            ran = any(ran_on.get(r.sandbox) == host.name for r in records if r.task == task)
            expected = 1 if ran and not had[(host.name, task)] else 0
            assert events.tags(host.name, ref) == expected, (host.name, task)
            assert not ran or has_image(host, ref)
    for host in hosts.hosts.values():
        assert on_daemon(host, hosts_label) == []


async def test_slots_warm_sandboxes_and_circuits_are_per_host(hosts, hosts_label) -> None:
    spec = SandboxSpec(run_label=hosts_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=600)
    config = PoolConfig(
        name=f"slots-{hosts_label}", hosts=hosts.pool_hosts(), sandbox_resource="sandbox_slot", max_sandboxes=6,
        circuit_failures=1, circuit_reset_s=4, start_timeout_s=30, reap_interval_s=0, keep_actors_s=0,
        health_interval_s=0,
    )  # fmt: skip
    pool = SandboxPool(tls_backend(hosts), config, run_label=hosts_label)
    h2 = hosts["h2"]
    try:
        # slots: six leases fill the three hosts, two each, each sandbox on its host's own daemon
        leases = [pool.lease(spec) for _ in range(6)]
        sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
        per_host = {h.name: sorted(on_daemon(h, hosts_label)) for h in hosts.hosts.values()}
        assert {k: len(v) for k, v in per_host.items()} == {"local": 2, "h1": 2, "h2": 2}
        for sandbox in sandboxes:
            [host] = [h for h, names in per_host.items() if sandbox.handle.name in names]
            assert sandbox.handle.labels[L.HOST] == host
        stats = await pool.stats()
        assert {name: h["used"] for name, h in stats["hosts"].items()} == {"local": 2, "h1": 2, "h2": 2}
        with pytest.raises(TimeoutError):  # every slot is taken: a seventh lease waits
            await asyncio.wait_for(pool.lease(spec).acquire(), 3)
        await asyncio.gather(*(lease.release() for lease in leases))

        # warm sandboxes take their host's slots like leases do: three warm ones, one per host
        assert await pool.prewarm(spec, 3, wait=True) == 3
        assert {h.name: len(on_daemon(h, hosts_label)) for h in hosts.hosts.values()} == {"local": 1, "h1": 1, "h2": 1}
        warm = [pool.lease(spec) for _ in range(3)]
        await asyncio.gather(*(lease.acquire() for lease in warm))
        assert (await pool.stats())["warm_hits"] == 3
        await asyncio.gather(*(lease.release() for lease in warm))

        # circuits: h2's daemon goes away; its first failed start opens h2's circuit, only h2's, and the
        # leases are served by the others; when it is back, the half-open trial closes it again
        h2.stop_docker()
        try:
            again = [pool.lease(spec) for _ in range(4)]
            got = await asyncio.wait_for(asyncio.gather(*(lease.acquire() for lease in again)), 120)
            assert {s.handle.labels[L.HOST] for s in got} <= {"local", "h1"}
            circuits = {name: h["circuit"]["state"] for name, h in (await pool.stats())["hosts"].items()}
            assert circuits == {"local": "closed", "h1": "closed", "h2": "open"}
            await asyncio.gather(*(lease.release() for lease in again))
        finally:
            h2.start_docker()
        await asyncio.sleep(config.circuit_reset_s)
        back = [pool.lease(spec) for _ in range(6)]
        got = await asyncio.wait_for(asyncio.gather(*(lease.acquire() for lease in back)), 120)
        assert Counter(s.handle.labels[L.HOST] for s in got) == {"local": 2, "h1": 2, "h2": 2}
        assert (await pool.stats())["hosts"]["h2"]["circuit"]["state"] == "closed"
        await asyncio.gather(*(lease.release() for lease in back))
    finally:
        await pool.shutdown()


def test_the_end_of_run_sweep_reaches_every_tls_host(hosts, hosts_label) -> None:
    """After a Ctrl-C, `run` sweeps its own sandboxes by owner label: on the backend's daemon and, with
    `pool.hosts`, on each remote daemon too (before, only the backend's). A host that is down does not stop it."""
    from harbor_ray.backends.docker.backend import DockerBackend
    from harbor_ray.harbor.runner import _sweep

    cfg = load_config([f"run_label={hosts_label}"])
    cfg.backend = tls_backend(hosts)
    cfg.pool.hosts = hosts.pool_hosts()
    owner = L.current_owner()
    spec = SandboxSpec(run_label=hosts_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=600, owner=owner)
    other = SandboxSpec(run_label=hosts_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=600, owner="x-1")
    for host in hosts.remote:
        backend = DockerBackend(cfg.backend.at_url(host.tls_url))
        backend.create(spec, BUSYBOX_IMAGE)
        backend.create(other, BUSYBOX_IMAGE)  # another run's, on the same label: kept
    hosts["h2"].freeze_docker()  # h2 hangs: h1 is still swept
    try:
        cfg.backend.timeout_s = 5
        _sweep(cfg, owner)
    finally:
        hosts["h2"].thaw_docker()
    h1 = hosts["h1"].client().containers.list(all=True, filters={"label": f"{L.RUN}={hosts_label}"})
    assert [c.labels[L.OWNER] for c in h1] == ["x-1"]
    _sweep(cfg, owner)
    h2 = hosts["h2"].client().containers.list(all=True, filters={"label": f"{L.RUN}={hosts_label}"})
    assert [c.labels[L.OWNER] for c in h2] == ["x-1"]
    for c in h1 + h2:
        c.remove(force=True)


async def test_one_host_per_ray_node_without_pool_hosts(hosts, hosts_label) -> None:
    """No `pool.hosts`: one host per node offering `sandbox_slot`, each its node's own daemon (DOCKER_HOST)."""
    spec = SandboxSpec(run_label=hosts_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=600)
    config = PoolConfig(name=f"nodes-{hosts_label}", sandbox_resource="sandbox_slot", max_sandboxes=6,
                        reap_interval_s=0, keep_actors_s=0, health_interval_s=0)  # fmt: skip
    pool = SandboxPool(DockerBackendConfig(), config, run_label=hosts_label)
    try:
        leases = [pool.lease(spec) for _ in range(6)]
        sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
        by_node = {f"node-{h.node_id[:12]}": h for h in hosts.hosts.values()}
        assert set((await pool.stats())["hosts"]) == set(by_node)
        for sandbox in sandboxes:
            host = by_node[sandbox.handle.labels[L.HOST]]
            assert sandbox.handle.name in on_daemon(host, hosts_label)
            assert sandbox.handle.host == host.docker_url
        assert Counter(s.handle.labels[L.HOST] for s in sandboxes) == dict.fromkeys(by_node, 2)
        await asyncio.gather(*(lease.release() for lease in leases))
    finally:
        await pool.shutdown()
