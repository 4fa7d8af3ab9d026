"""Warm lease vs cold lease vs the raw docker SDK, interleaved in one process; then trials through the pool.

    scripts/python bench/warm_lease.py [--rounds 30] [--trials 200] [--concurrency 16]

Prints one JSON object:
- `warm_lease_p50_ms` / `warm_lease_p99_ms`: acquire from a warm set (a watched sandbox: no round trip);
- `cold_start_p50_ms`: acquire with no warm sandbox (the pool keeps idle actors ahead of demand);
- `cold_lease_ratio`: cold acquire + first exec through the pool / raw SDK create+start + first exec
  (medians over `--rounds` interleaved rounds; raw, cold and warm in turn, order alternating);
- `trials_per_minute`, `daemon_errors` (must be 0), `trial_errors`, `reward_mean`: `--trials` oracle
  Harbor trials of examples/tasks through harbor_ray.harbor.runner, `--concurrency` at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import ray

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig
from harbor_ray.pool import SandboxPool

ROOT = Path(__file__).resolve().parent.parent
# Errors that mean the daemon or the infrastructure failed a trial (not the agent or the task).
DAEMON_ERRORS = {
    "BackendUnavailable",
    "CircuitOpen",
    "SandboxStartError",
    "SandboxGone",
    "APIError",
    "DockerException",
    "ConnectionError",
    "ImageBuildError",
}


def pct(samples: list[float], q: int) -> float:
    if len(samples) == 1:
        return round(samples[0] * 1000, 2)
    return round(statistics.quantiles(samples, n=100, method="inclusive")[q - 1] * 1000, 2)


async def until(check: Callable[[], bool], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            msg = "the pool did not reach its steady state in time"
            raise TimeoutError(msg)
        await asyncio.sleep(0.02)


async def latencies(rounds: int) -> dict[str, Any]:
    client = docker.from_env()
    label = f"bench-{uuid.uuid4().hex[:8]}"
    spec = SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, cpus=0.5, memory_mb=128)
    backend = DockerBackendConfig()
    cold = SandboxPool(backend, PoolConfig(name=f"{label}-cold", prestart_actors=2, reap_interval_s=0), run_label=label)
    warm = SandboxPool(
        backend,
        PoolConfig(name=f"{label}-warm", warm_per_image=1, health_interval_s=0, reap_interval_s=0),
        run_label=label,
    )
    raw_kwargs = {
        "entrypoint": ["sleep"],
        "command": ["3600"],
        "detach": True,
        "labels": {"harbor-run": label},
        "network_mode": "none",
        "init": True,
        "auto_remove": True,
    }
    times: dict[str, list[float]] = {"raw": [], "cold": [], "cold_acquire": [], "warm_acquire": []}

    def raw_round() -> None:
        t = time.perf_counter()
        container = client.containers.run(BUSYBOX_IMAGE, **raw_kwargs)
        container.exec_run(["true"])
        times["raw"].append(time.perf_counter() - t)
        container.remove(force=True)

    async def cold_round() -> None:
        await until(lambda: cold.stats_sync()["idle_actors"] >= 2 and cold.stats_sync()["slots_used"] == 2)
        lease = cold.lease(spec)
        t = time.perf_counter()
        sandbox = await lease.acquire()
        acquired = time.perf_counter()
        await sandbox.exec(["true"])
        times["cold"].append(time.perf_counter() - t)
        times["cold_acquire"].append(acquired - t)
        await lease.release()

    async def warm_round() -> None:
        await until(lambda: warm.stats_sync()["warm"] >= 1)
        lease = warm.lease(spec)
        t = time.perf_counter()
        await lease.acquire()
        times["warm_acquire"].append(time.perf_counter() - t)
        await lease.release()

    try:
        for pool in (cold, warm):  # start both pools; the first warm lease makes the image "seen"
            async with pool.lease(spec):
                pass
        raw_round()
        times["raw"].clear()
        steps: list[Callable[[], Awaitable[None]]] = [_wrap(raw_round), cold_round, warm_round]
        for i in range(rounds):
            for step in steps if i % 2 == 0 else reversed(steps):
                await step()
        stats = {"cold_pool": await cold.stats(), "warm_pool": await warm.stats()}
    finally:
        await cold.shutdown()
        await warm.shutdown()
    return {
        "rounds": rounds,
        "warm_lease_p50_ms": pct(times["warm_acquire"], 50),
        "warm_lease_p99_ms": pct(times["warm_acquire"], 99),
        "cold_start_p50_ms": pct(times["cold_acquire"], 50),
        "cold_lease_plus_exec_p50_ms": pct(times["cold"], 50),
        "raw_create_start_exec_p50_ms": pct(times["raw"], 50),
        "cold_lease_ratio": round(statistics.median(times["cold"]) / statistics.median(times["raw"]), 3),
        "warm_hits": stats["warm_pool"]["warm_hits"],
        "cold_pool_warm_hits": stats["cold_pool"]["warm_hits"],
    }


def _wrap(fn: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        fn()  # on the loop's thread on purpose: the raw SDK path has no event loop to share

    return run


async def trials(n: int, concurrency: int) -> dict[str, Any]:
    from rich.console import Console

    from harbor_ray.config import load_config
    from harbor_ray.harbor.runner import run_trials

    logging.getLogger("harbor").setLevel(logging.WARNING)  # Harbor logs every trial step at DEBUG
    tasks = sorted(p for p in (ROOT / "examples" / "tasks").iterdir() if (p / "task.toml").is_file())
    attempts = -(-n // len(tasks))
    with tempfile.TemporaryDirectory(prefix="harbor-ray-bench-") as jobs:
        cfg = load_config(
            [
                f"tasks=[{','.join(str(t) for t in tasks)}]",
                f"n_attempts={attempts}",
                f"n_concurrent={concurrency}",
                "agent=oracle",
                f"run_label=bench-{uuid.uuid4().hex[:8]}",
                f"jobs_dir={jobs}",
                f"pool.max_sandboxes={concurrency + 4}",
                f"pool.name=bench-{uuid.uuid4().hex[:6]}",
                "pool.prestart_actors=4",
            ]
        )
        started = time.perf_counter()
        records = await run_trials(cfg, console=Console(file=open(os.devnull, "w")))  # noqa: SIM115
        elapsed = time.perf_counter() - started
    errors = [r.error for r in records if r.error]
    rewards = [r.reward for r in records if r.reward is not None]
    return {
        "trials": len(records),
        "trial_concurrency": concurrency,
        "trial_seconds": round(elapsed, 1),
        "trials_per_minute": round(len(records) / elapsed * 60, 1),
        "daemon_errors": sum(1 for e in errors if e in DAEMON_ERRORS),
        "trial_errors": len(errors),
        "trial_error_kinds": sorted(set(errors)),
        "reward_mean": round(statistics.fmean(rewards), 3) if rewards else None,
        "trial_pool": {
            "max_sandboxes": cfg.pool.max_sandboxes,
            "prestart_actors": cfg.pool.prestart_actors,
            "shared": cfg.pool.shared,
        },
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = {"bench": "warm_lease", **await latencies(args.rounds)}
        if args.trials:
            result |= await trials(args.trials, args.concurrency)
    finally:
        ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
