"""Several hosts: a burst of N cold leases spread over 3 daemons vs the same creates made directly on them, and
how long a lost host's sandboxes take to be started again elsewhere.

    scripts/python bench/hosts.py [--n 12] [--rounds 3] [--creates 2]      # as root: it makes the test hosts

The hosts are `tests/support/hosts.py`'s: `local` (the head node, the machine's daemon) and h1, h2 (network
namespaces with a dockerd and a Ray node each); the pool's hosts are each Ray node's own daemon (`pool.hosts`
with node labels), `--creates` creations in flight per host (3 × that pool-wide).

Each round runs, order alternating: the raw burst (N create+start, round-robin over the 3 daemons' SDK clients,
`--creates` threads per daemon, the backend's hardening) and the pool burst (N leases at once, no warm set:
every lease creates its container; round 1 also starts every sandbox actor's process, later rounds reuse the
recycled ones). Then the loss: 6 leases (2 per host) each run `sleep 1` execs in a loop, as a trial's agent
does; h1 is cut off the network (veth down: its Ray node and daemon gone), and each of its 2 lease loops, once
its exec fails (SandboxGone), releases and leases again, as `run_trials` retries a `sandbox_lost` trial.
One JSON object:
- `spread_burst_ratio`: median over rounds 2.. of (all N leased through the pool / raw create+start on the 3
  daemons); `first_burst_ratio`: the same for round 1; `raw_burst_s`, `pool_burst_s`: the medians;
- `loss_detect_s`: from the cut until the last affected exec failed (the GCS marks the node dead after the
  harness's health checks: 1 s period, 5 misses, 3 s timeout; Ray's defaults take longer);
- `loss_to_last_retry_s`: from the cut until the last affected lease had a sandbox on another host;
- `per_host`: sandboxes per host in the last pool round; `leftovers` (must be 0); `load`: load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.hosts import TestHosts  # noqa: E402

from harbor_ray import labels as L  # noqa: E402
from harbor_ray.backends.base import DEFAULT_CAP_ADD, SandboxSpec  # noqa: E402
from harbor_ray.backends.docker.config import DockerBackendConfig  # noqa: E402
from harbor_ray.backends.images import BUSYBOX_IMAGE  # noqa: E402
from harbor_ray.config import PoolConfig  # noqa: E402
from harbor_ray.errors import SandboxGone  # noqa: E402
from harbor_ray.pool import SandboxPool  # noqa: E402


def raw_kwargs(label: str) -> dict[str, Any]:
    return {
        "command": ["sleep", "3600"], "labels": {L.RUN: label}, "network_mode": "none", "init": True,
        "auto_remove": True, "nano_cpus": int(0.1 * 1e9), "mem_limit": "64m", "memswap_limit": "64m",
        "pids_limit": 512, "cap_drop": ["ALL"], "cap_add": list(DEFAULT_CAP_ADD),
        "security_opt": ["no-new-privileges"],
    }  # fmt: skip


def raw_round(clients: list[Any], label: str, n: int, creates: int) -> float:
    """N create+start round-robin over the daemons, `creates` at a time on each; the containers are removed."""
    kwargs = raw_kwargs(label)
    share = [list(range(i, n, len(clients))) for i in range(len(clients))]

    def burst(client: Any, count: int) -> list[Any]:
        def start(_: int) -> Any:
            container = client.containers.create(BUSYBOX_IMAGE, **kwargs)
            container.start()
            return container

        with ThreadPoolExecutor(creates) as ex:
            return list(ex.map(start, range(count)))

    with ThreadPoolExecutor(len(clients)) as ex:
        t = time.perf_counter()
        made = list(ex.map(burst, clients, [len(s) for s in share]))
        took = time.perf_counter() - t
        for client_containers in made:
            list(ex.map(lambda c: c.remove(force=True), client_containers))
    return took


async def pool_round(pool: SandboxPool, spec: SandboxSpec, n: int) -> tuple[float, dict[str, int]]:
    leases = [pool.lease(spec) for _ in range(n)]
    t = time.perf_counter()
    sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
    took = time.perf_counter() - t
    per_host: dict[str, int] = {}
    for s in sandboxes:
        per_host[s.handle.labels[L.HOST]] = per_host.get(s.handle.labels[L.HOST], 0) + 1
    await asyncio.gather(*(lease.release() for lease in leases))
    return took, per_host


async def loss(hosts: TestHosts, pool: SandboxPool, spec: SandboxSpec) -> dict[str, float]:
    """Cut h1 while 6 lease loops exec; each loop on h1 leases again once its sandbox is gone."""
    cut_at: list[float] = []
    failed_at: list[float] = []
    retried_at: list[float] = []
    stop = asyncio.Event()

    async def trial(lease: Any) -> None:
        sandbox = await lease.acquire()
        while not stop.is_set():
            try:
                await sandbox.exec(["sleep", "1"])
            except SandboxGone:
                failed_at.append(time.perf_counter())
                await lease.release()
                lease = pool.lease(spec)
                sandbox = await lease.acquire()
                assert sandbox.handle.labels[L.HOST] != "h1"
                retried_at.append(time.perf_counter())
        await lease.release()

    loops = [asyncio.create_task(trial(pool.lease(spec))) for _ in range(6)]
    await asyncio.sleep(5)  # all six started and exec'ing
    cut_at.append(time.perf_counter())
    hosts["h1"].cut()
    try:
        deadline = time.perf_counter() + 180
        while len(retried_at) < 2 and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        hosts["h1"].restore()
    if len(retried_at) < 2:
        return {"loss_detect_s": float("nan"), "loss_to_last_retry_s": float("nan")}
    return {
        "loss_detect_s": round(max(failed_at) - cut_at[0], 2),
        "loss_to_last_retry_s": round(max(retried_at) - cut_at[0], 2),
    }


async def run(args: argparse.Namespace, hosts: TestHosts) -> dict[str, Any]:
    label = f"bench-hosts-{uuid.uuid4().hex[:6]}"
    spec = SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, cpus=0.1, memory_mb=64, ttl_s=900)
    slots = args.n  # each host may take the whole burst: the pool spreads it by load
    backend = DockerBackendConfig(max_concurrent_creates=args.creates, slots=slots)
    config = PoolConfig(
        name=f"bench-{label}", hosts=[h.node_entry(slots) for h in hosts.hosts.values()],
        sandbox_resource="sandbox_slot", max_sandboxes=3 * slots, max_concurrent_creates=3 * args.creates,
        reap_interval_s=0, health_interval_s=0, start_timeout_s=120,
    )  # fmt: skip
    pool = SandboxPool(backend, config, run_label=label)
    clients = [h.client() for h in hosts.hosts.values()]
    raw: list[float] = []
    pooled: list[float] = []
    per_host: dict[str, int] = {}
    try:
        await pool.start()
        for r in range(args.rounds):
            for which in ("raw", "pool") if r % 2 == 0 else ("pool", "raw"):
                if which == "raw":
                    raw.append(await asyncio.to_thread(raw_round, clients, label, args.n, args.creates))
                else:
                    took, per_host = await pool_round(pool, spec, args.n)
                    pooled.append(took)
        lost = await loss(hosts, pool, spec)
    finally:
        await pool.shutdown()
    survivors = [hosts.local.client(), hosts["h2"].client()]  # h1 keeps what its dead actors left until it is reaped
    leftovers = sum(len(c.containers.list(all=True, filters={"label": f"{L.RUN}={label}"})) for c in survivors)
    later = [p / r for p, r in zip(pooled[1:], raw[1:], strict=True)]
    return {
        "bench": "hosts",
        "hosts": len(hosts.hosts),
        "n": args.n,
        "creates_per_host": args.creates,
        "rounds": args.rounds,
        "spread_burst_ratio": round(statistics.median(later), 2) if later else None,
        "first_burst_ratio": round(pooled[0] / raw[0], 2),
        "raw_burst_s": round(statistics.median(raw), 3),
        "pool_burst_s": round(statistics.median(pooled), 3),
        **lost,
        "per_host": per_host,
        "leftovers": leftovers,
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--creates", type=int, default=2, help="creations in flight per host")
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with TestHosts(n=2, slots=args.n, local_slots=args.n) as hosts:
        result = asyncio.run(run(args, hosts))
        # the lost host's leftovers (its actors died with its node) are removed with the harness's daemons
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
