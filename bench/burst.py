"""A burst of N cold leases through the pool vs the raw docker SDK doing the same N create+start, interleaved.

    scripts/python bench/burst.py [--n 100] [--rounds 3] [--concurrency 8] [--prestart]
    scripts/python bench/burst.py --gateway [--n 8] [--rounds 6] [--concurrency 4] [--holder-stock K]
                                                                          ("gateway only" vs none)

Each round runs the raw burst and the pool burst (order alternating): N container create+start with
`--concurrency` threads (the same hardening options as the Docker backend) against N leases at once through
one `SandboxPool` (max_concurrent_creates = --concurrency, no warm set: every lease creates its container).
Then one `true` exec on every sandbox (same concurrency), then release / remove.

Round 1 is the pool's first burst: every lease also starts its sandbox actor's worker process, unless
`--prestart` (`pool.prestart_actors=N`, what a trainer sets to its step's size) had the pool start them before
the first round, as it would while the policy loads (`prestart_s`: how long that took). Later rounds reuse
the processes the first burst left (`pool.keep_actors_s`, recycled actors): containers are still created
fresh per lease. Prints one JSON object:
- `burst_ratio`: median over rounds 2.. of all-leased time through the pool / raw create+start;
- `first_burst_ratio`: the same for round 1 (new actor processes);
- `exec_all_ratio`, `release_ratio`: one exec on every sandbox / release of all, pool vs raw (medians);
- `uss_mb_p50`: unique memory (USS: private pages) per sandbox actor process, with N alive; `uss_floor_mb`:
  the same of an empty Ray actor (a class with one method) in this Ray: what any one-process-per-actor
  design pays before holding a sandbox;
- `leftovers`: containers with the bench's label after the run (must be 0); `load`: load average at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import ray

from harbor_ray.backends.base import DEFAULT_CAP_ADD, SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig
from harbor_ray.pool import SandboxPool

_REFILL_SETTLE_S = 0.5


def uss_mb(pid: int) -> float:
    """Private (unique) memory of a process: what ending it would give back."""
    total_kb = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total_kb += int(line.split()[1])
    return total_kb / 1024


@ray.remote(num_cpus=0)
class EmptyActor:
    def pid(self) -> int:
        return os.getpid()


def raw_kwargs(label: str) -> dict[str, Any]:
    return {
        "command": ["sleep", "3600"],
        "labels": {"harbor-run": label},
        "network_mode": "none",
        "init": True,
        "auto_remove": True,
        "nano_cpus": int(0.1 * 1e9),
        "mem_limit": "64m",
        "memswap_limit": "64m",
        "pids_limit": 512,
        "cap_drop": ["ALL"],
        "cap_add": list(DEFAULT_CAP_ADD),
        "security_opt": ["no-new-privileges"],
    }


def raw_round(client: docker.DockerClient, label: str, n: int, concurrency: int) -> dict[str, float]:
    kwargs = raw_kwargs(label)

    def start(_: int) -> Any:
        container = client.containers.create(BUSYBOX_IMAGE, **kwargs)  # create + start, as the backend does
        container.start()
        return container

    with ThreadPoolExecutor(concurrency) as ex:
        t = time.perf_counter()
        containers = list(ex.map(start, range(n)))
        started = time.perf_counter() - t
        t = time.perf_counter()
        list(ex.map(lambda c: c.exec_run(["true"]), containers))
        exec_all = time.perf_counter() - t
        t = time.perf_counter()
        list(ex.map(lambda c: c.remove(force=True), containers))
        removed = time.perf_counter() - t
    return {"burst": started, "exec_all": exec_all, "release": removed}


async def pool_round(
    pool: SandboxPool,
    spec: SandboxSpec,
    n: int,
    concurrency: int,
    before_release: Callable[[], Awaitable[float]] | None = None,
) -> dict[str, Any]:
    leases = [pool.lease(spec) for _ in range(n)]
    t = time.perf_counter()
    sandboxes = await asyncio.gather(*(lease.acquire() for lease in leases))
    started = time.perf_counter() - t
    gate = asyncio.Semaphore(concurrency)

    async def one_exec(sandbox: Any) -> None:
        async with gate:
            await sandbox.exec(["true"])

    t = time.perf_counter()
    await asyncio.gather(*(one_exec(s) for s in sandboxes))
    exec_all = time.perf_counter() - t
    infos = await asyncio.gather(*(s.actor.info.remote() for s in sandboxes))
    uss = [uss_mb(i["pid"]) for i in infos]
    waited = await before_release() if before_release else 0.0
    t = time.perf_counter()
    await asyncio.gather(*(lease.release() for lease in leases))
    released = time.perf_counter() - t
    return {"burst": started, "exec_all": exec_all, "release": released, "uss": uss, "waited": waited}


async def stock_ready(client: docker.DockerClient, label: str, size: int, timeout_s: float = 60) -> float:
    """Wait until the daemon's stock of ready network holders of the run is back to `size`; seconds waited."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout_s:
        found = client.api.containers(filters={"label": [f"harbor-run={label}", "harbor-ray/kind=holder"]})
        if sum(1 for c in found if "-stock-" in c["Names"][0]) >= size:
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - t


async def released_gone(client: docker.DockerClient, label: str, timeout_s: float = 60) -> float:
    """Wait until the released sandboxes' holders (which end a second after their sandbox) and their networks
    are gone: only the stock and its networks are left; seconds waited."""
    t = time.perf_counter()
    while time.perf_counter() - t < timeout_s:
        found = client.api.containers(all=True, filters={"label": [f"harbor-run={label}", "harbor-ray/kind=holder"]})
        networks = client.api.networks(filters={"label": [f"harbor-run={label}", "harbor-ray/kind=network"]})
        if all("-stock-" in c["Names"][0] for c in found) and len(networks) <= len(found):
            break
        await asyncio.sleep(0.1)
    return time.perf_counter() - t


async def gateway_main(
    args: argparse.Namespace, client: docker.DockerClient, label: str, pool: SandboxPool, plain: SandboxSpec
) -> None:
    """`--gateway`: the same pool bursts of N leases, "gateway only" sandboxes (each in a network holder's
    namespace from the daemon's stock, `--holder-stock` or the config's default, which grows to N;
    docs/network.md) against sandboxes without network, interleaved (A B, B A, ...), after one burst of each
    that starts the N actor processes and the relay. The background work of the gateway rounds is kept out of
    every measured phase: before the release, the stock's refill (begun a second after each claim; a trial
    outlives it) is waited for (`stock_refill_s`, from the burst's end); after the release, the released
    holders' end (a second after their sandbox) and their networks' removal (`holders_gone_s`), so that the next
    round does not meet it. Prints `gateway_create_ratio` (all leased) and `gateway_destroy_ratio` (all
    released), medians over the rounds, with the absolute medians per burst and per sandbox (ms); the issue's
    target is 1.3 for both."""
    import socket

    from harbor_ray.backends.docker.holders import sweep
    from harbor_ray.backends.docker.network import clean_networks, host_address

    listener = socket.create_server((host_address(client), 0))  # a gateway address that answers
    gated = dataclasses.replace(plain, gateway=f"{listener.getsockname()[0]}:{listener.getsockname()[1]}")
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "gateway": []}
    relays = 0
    try:

        async def refilled() -> float:
            """The stock is back (its refills start a second after each claim): a trial outlives that, so its
            sandbox's release does not meet them; then what the refills' last holders still do (relay joins)."""
            waited = await stock_ready(client, label, args.stock_expected)
            await asyncio.sleep(_REFILL_SETTLE_S)
            return waited

        await pool_round(pool, plain, args.n, args.concurrency)  # warm-up: N actor processes, kept for reuse
        await pool_round(pool, gated, args.n, args.concurrency, refilled)  # the relay's start, the first stock
        await released_gone(client, label)
        for i in range(args.rounds):
            for which in ("plain", "gateway") if i % 2 == 0 else ("gateway", "plain"):
                gateway = which == "gateway"
                spec, wait = (gated, refilled) if gateway else (plain, None)
                runs[which].append(await pool_round(pool, spec, args.n, args.concurrency, wait))
                if gateway:  # from the burst's end: the exec on every sandbox, then the refill
                    runs[which][-1]["refill_s"] = runs[which][-1]["exec_all"] + runs[which][-1]["waited"]
                    runs[which][-1]["gone_s"] = await released_gone(client, label)
        relays = len(client.api.containers(filters={"label": [f"harbor-run={label}", "harbor-ray/kind=relay"]}))
    finally:
        listener.close()
        await pool.shutdown()
        ray.shutdown()
    time.sleep(1)  # the daemon finishes the last holders' and networks' removals it was sent
    # the stock of ready holders outlives the actors that made it; their makers gone, a sweep takes it at once
    stock_swept = [n for n in sweep(client, label) if "-stock-" in n]
    leftovers = client.containers.list(all=True, filters={"label": f"harbor-run={label}"})
    networks = client.networks.list(filters={"label": f"harbor-run={label}"})
    left = [c.name for c in leftovers if c.labels.get("harbor-ray/kind") != "relay"] + [n.name for n in networks]
    cleaned = clean_networks(client, label)  # the relay (it would end itself after a minute idle)

    def median(which: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[which])

    def per_sandbox_ms(which: str, key: str) -> float:
        return round(1000 * median(which, key) / args.n, 1)

    print(
        json.dumps(
            {
                "bench": "burst --gateway",
                "n": args.n,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "gateway_create_ratio": round(median("gateway", "burst") / median("plain", "burst"), 3),
                "gateway_destroy_ratio": round(median("gateway", "release") / median("plain", "release"), 3),
                "create_ms_per_sandbox": {
                    "plain": per_sandbox_ms("plain", "burst"),
                    "gateway": per_sandbox_ms("gateway", "burst"),
                },
                "destroy_ms_per_sandbox": {
                    "plain": per_sandbox_ms("plain", "release"),
                    "gateway": per_sandbox_ms("gateway", "release"),
                },
                "stock_refill_s": [round(r.get("refill_s", 0), 2) for r in runs["gateway"]],
                "holders_gone_s": [round(r.get("gone_s", 0), 2) for r in runs["gateway"]],
                "gateway_burst_s": [round(r["burst"], 2) for r in runs["gateway"]],
                "plain_burst_s": [round(r["burst"], 2) for r in runs["plain"]],
                "gateway_release_s": [round(r["release"], 2) for r in runs["gateway"]],
                "plain_release_s": [round(r["release"], 2) for r in runs["plain"]],
                "relays": relays,
                "holder_stock": args.holder_stock,  # null: the default (backend.slots)
                "stock_size": args.stock_size,
                "stock_after_burst": args.stock_expected,
                "stock_swept_after": len(stock_swept),
                "leftovers": left,
                "relay_cleaned": [name for kind, name in cleaned if kind == "relay"],
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prestart", action="store_true", help="pool.prestart_actors=N before the first round")
    parser.add_argument(
        "--gateway", action="store_true", help="gateway-only sandboxes vs sandboxes without network, both via the pool"
    )
    parser.add_argument(
        "--holder-stock", type=int, default=None, help="backend.holder_stock for --gateway (default: the config's)"
    )
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    client = docker.from_env(timeout=300)
    label = f"bench-{uuid.uuid4().hex[:8]}"
    slots = max(args.n, DockerBackendConfig.slots)
    backend = DockerBackendConfig(slots=slots, max_concurrent_creates=args.concurrency, holder_stock=args.holder_stock)
    args.stock_size = backend.holder_stock_size()
    args.stock_expected = min(args.stock_size, args.n)  # each start replaces the holder it took: the burst's size
    config = PoolConfig(
        name=label,
        max_sandboxes=args.n,
        max_concurrent_creates=args.concurrency,
        reap_interval_s=0,
        shared=False,
        prestart_actors=args.n if args.prestart else 0,
    )
    pool = SandboxPool(backend, config, run_label=label)
    spec = SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, cpus=0.1, memory_mb=64)
    if args.gateway:
        await gateway_main(args, client, label, pool, spec)
        return
    raw: list[dict[str, float]] = []
    ours: list[dict[str, Any]] = []
    try:
        async with pool.lease(spec):  # the pool's own start (host discovery, one actor), not part of a burst
            pass
        t = time.perf_counter()
        while args.prestart and (await pool.stats())["idle_actors"] < args.n:
            await asyncio.sleep(0.5)
        prestart_s = time.perf_counter() - t
        empty = EmptyActor.remote()
        uss_floor = uss_mb(await empty.pid.remote())
        ray.kill(empty)
        for i in range(args.rounds):
            if i % 2:
                ours.append(await pool_round(pool, spec, args.n, args.concurrency))
                raw.append(raw_round(client, label, args.n, args.concurrency))
            else:
                raw.append(raw_round(client, label, args.n, args.concurrency))
                ours.append(await pool_round(pool, spec, args.n, args.concurrency))
        stats = await pool.stats()
    finally:
        await pool.shutdown()
        ray.shutdown()
    leftovers = client.containers.list(all=True, filters={"label": f"harbor-run={label}"})
    for container in leftovers:
        container.remove(force=True)

    def ratio(key: str, rounds: slice) -> float:
        return round(
            statistics.median(o[key] for o in ours[rounds]) / statistics.median(r[key] for r in raw[rounds]), 3
        )

    steady = slice(1, None) if args.rounds > 1 else slice(0, 1)
    print(
        json.dumps(
            {
                "bench": "burst",
                "n": args.n,
                "rounds": args.rounds,
                "concurrency": args.concurrency,
                "burst_ratio": ratio("burst", steady),
                "first_burst_ratio": ratio("burst", slice(0, 1)),
                "prestarted": args.prestart,
                "prestart_s": round(prestart_s, 1),
                "exec_all_ratio": ratio("exec_all", slice(None)),
                "release_ratio": ratio("release", slice(None)),
                "pool_burst_s": [round(o["burst"], 2) for o in ours],
                "raw_burst_s": [round(r["burst"], 2) for r in raw],
                "pool_release_s": [round(o["release"], 2) for o in ours],
                "raw_release_s": [round(r["release"], 2) for r in raw],
                "uss_mb_p50": round(statistics.median(u for o in ours for u in o["uss"]), 1),
                "uss_floor_mb": round(uss_floor, 1),
                "actors_recycled": stats.get("actors_recycled", 0),
                "leftovers": len(leftovers),
                "load": [round(x, 2) for x in os.getloadavg()],
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
