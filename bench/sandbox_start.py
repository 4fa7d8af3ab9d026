"""Sandbox start and exec through a SandboxActor vs the raw docker SDK, interleaved in one process.

    scripts/python bench/sandbox_start.py [--rounds 20] [--image harbor-ray/busybox:latest]

Prints one JSON object: medians in ms and the ratios `start_ratio` (fresh actor + container / raw
`containers.run`), `prestarted_start_ratio` (idle actor already up, as the pool keeps them / raw) and
`exec_ratio` (exec through a live actor / raw `exec_run`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid

import docker
import ray

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.sandbox import Sandbox, actor_class


def ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 2)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--image", default=BUSYBOX_IMAGE)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    client = docker.from_env()
    label = f"bench-{uuid.uuid4().hex[:8]}"
    cfg = DockerBackendConfig()
    spec = SandboxSpec(run_label=label, image=args.image)
    raw_kwargs = {
        "entrypoint": ["sleep"],
        "command": ["3600"],
        "detach": True,
        "labels": {"harbor-run": label},
        "network_mode": "none",
        "init": True,
    }
    times: dict[str, list[float]] = {
        k: [] for k in ("raw_start", "actor_start", "prestarted_start", "raw_exec", "actor_exec")
    }
    # Warm both paths once so imports and the image cache do not count.
    warm = await Sandbox.create(cfg, spec)
    await warm.stop()
    client.containers.run(args.image, **raw_kwargs).remove(force=True)
    try:
        for _ in range(args.rounds):
            t = time.perf_counter()
            raw = client.containers.run(args.image, **raw_kwargs)
            times["raw_start"].append(time.perf_counter() - t)

            t = time.perf_counter()
            sandbox = await Sandbox.create(cfg, spec)
            times["actor_start"].append(time.perf_counter() - t)

            idle = actor_class().remote(cfg)
            await idle.ready.remote()  # what the pool does ahead of demand
            t = time.perf_counter()
            prestarted = await Sandbox.create(cfg, spec, actor=idle)
            times["prestarted_start"].append(time.perf_counter() - t)

            for _ in range(3):
                t = time.perf_counter()
                raw.exec_run(["true"])
                times["raw_exec"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await sandbox.exec(["true"])
                times["actor_exec"].append(time.perf_counter() - t)

            raw.remove(force=True)
            await sandbox.stop()
            await prestarted.stop()
    finally:
        for c in client.containers.list(all=True, filters={"label": f"harbor-run={label}"}):
            c.remove(force=True)
        ray.shutdown()
    med = {f"{k}_p50_ms": ms(v) for k, v in times.items()}
    print(
        json.dumps(
            {
                "bench": "sandbox_start",
                "image": args.image,
                "rounds": args.rounds,
                **med,
                "start_ratio": round(med["actor_start_p50_ms"] / med["raw_start_p50_ms"], 3),
                "prestarted_start_ratio": round(med["prestarted_start_p50_ms"] / med["raw_start_p50_ms"], 3),
                "exec_ratio": round(med["actor_exec_p50_ms"] / med["raw_exec_p50_ms"], 3),
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
