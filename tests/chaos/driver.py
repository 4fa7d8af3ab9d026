"""A driver for the chaos tests: its own local Ray cluster and pool, N leased sandboxes, then commands from stdin.

Usage: python tests/chaos/driver.py RUN_LABEL N [DOCKER_URL]. Prints `leased <name>` per sandbox and `ready`;
then each stdin line `exec <command>` runs in the first sandbox and prints `exec <code>` or `error <one line>`;
EOF on stdin releases everything and exits 0. Without DOCKER_URL it uses the local daemon; with one (a plain
`tcp://` proxy of the tests) it uses backend docker_remote with allow_insecure.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import ray

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig
from harbor_ray.errors import HarborRayError
from harbor_ray.pool import SandboxPool


async def main(run_label: str, n: int, url: str) -> None:
    backend = DockerBackendConfig(kind="docker_remote", host=url, allow_insecure=True) if url else DockerBackendConfig()
    pool = SandboxPool(backend, PoolConfig(name=f"chaos-{run_label}", reap_interval_s=0), run_label=run_label)
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=900)
    try:
        async with contextlib.AsyncExitStack() as stack:
            sandboxes = [await stack.enter_async_context(pool.lease(spec)) for _ in range(n)]
            for sandbox in sandboxes:
                print("leased", sandbox.handle.name, flush=True)
            print("ready", flush=True)
            while line := await asyncio.to_thread(sys.stdin.readline):
                if line.startswith("exec "):
                    try:
                        print("exec", (await sandboxes[0].exec(line[5:].strip())).return_code, flush=True)
                    except HarborRayError as e:
                        print("error", type(e).__name__, str(e).splitlines()[0], flush=True)
    finally:
        await pool.shutdown()


if __name__ == "__main__":
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else ""))
