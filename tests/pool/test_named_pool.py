"""The named pool actor: created lazily by `from_config`, reached by name from another driver (its own job)
and from a Ray task; one set of slots and counters for all of them; gone after its owner shuts it down."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
import ray

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.config import Config, PoolConfig
from harbor_ray.errors import BackendUnavailable
from harbor_ray.pool import SandboxPool

from .conftest import busybox, eventually

pytestmark = [pytest.mark.docker, pytest.mark.ray]

OTHER_DRIVER = textwrap.dedent(
    """
    import asyncio, sys
    import ray
    from harbor_ray.backends.base import SandboxSpec
    from harbor_ray.backends.images import BUSYBOX_IMAGE
    from harbor_ray.pool import SandboxPool

    gcs, name, namespace, label = sys.argv[1:]
    ray.init(address=gcs, log_to_driver=False)

    async def main():
        pool = await SandboxPool.connect(name, namespace)
        spec = SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64)
        async with pool.lease(spec) as sandbox:
            print("other-driver:" + (await sandbox.exec("echo ok")).stdout.strip())
        await pool.shutdown()  # a connected handle releases its own leases only

    asyncio.run(main())
    """
)


async def test_named_pool_is_shared(ray_local, run_label) -> None:
    name, namespace = f"pool-{run_label}", "harbor_ray_tests"
    cfg = Config(
        run_label=run_label,
        backend=DockerBackendConfig(),
        pool=PoolConfig(name=name, namespace=namespace, max_sandboxes=3, shared=True, reap_interval_s=0),
    )
    pool = SandboxPool.from_config(cfg)
    try:
        with pytest.raises(BackendUnavailable, match="no sandbox pool named"):
            SandboxPool.connect_sync(name, namespace)  # lazy: nothing exists before the first use
        async with pool.lease(busybox(run_label)) as sandbox:
            assert (await sandbox.exec("echo driver")).stdout == "driver\n"
        gcs = ray.get_runtime_context().gcs_address
        other = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", OTHER_DRIVER, gcs, name, namespace, run_label],
            capture_output=True,
            text=True,
            timeout=300,
            env=dict(os.environ),
        )
        assert "other-driver:ok" in other.stdout, other.stderr[-2000:]

        @ray.remote(num_cpus=0)
        def lease_in_a_task(name: str, namespace: str, spec: SandboxSpec) -> str:  # a local function ships by value
            async def go() -> str:
                pool = SandboxPool.connect_sync(name, namespace)
                async with pool.lease(spec) as sandbox:
                    return (await sandbox.exec("echo task")).stdout.strip()

            return asyncio.run(go())

        assert await lease_in_a_task.remote(name, namespace, busybox(run_label)) == "task"
        stats = await pool.stats()
        assert (stats["leases"], stats["released"], stats["leased"]) == (3, 3, 0)
        assert (await SandboxPool.connect(name, namespace)).stats_sync()["leases"] == 3
    finally:
        await pool.shutdown()

    def gone() -> bool:
        try:
            SandboxPool.connect_sync(name, namespace)
        except BackendUnavailable:
            return True
        return False

    await eventually(gone, "the pool actor ended with its owner's shutdown")
