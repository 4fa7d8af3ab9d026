"""Helpers for the pool tests: a pool factory that always shuts its pools down, specs, and polling."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from support.waiting import eventually

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.config import PoolConfig
from harbor_ray.pool import SandboxPool


def busybox(run_label: str, **kw: Any) -> SandboxSpec:
    kw.setdefault("ttl_s", 900)
    return SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, **kw)


def ours(docker_client: Any, run_label: str, **labels: str) -> list[Any]:
    import docker

    filters = [f"{L.RUN}={run_label}", *(f"{k}={v}" for k, v in labels.items())]
    while True:
        try:
            return docker_client.containers.list(all=True, filters={"label": filters})
        except docker.errors.NotFound:  # one went away between the list and its inspect
            continue


async def all_gone(docker_client: Any, run_label: str) -> None:
    """No container of the run is left. A daemon still removing one (status "removing": docker answers 409
    to a remove that races the container's auto-remove) counts until it is done."""
    await eventually(lambda: not ours(docker_client, run_label), f"no container labeled {L.RUN}={run_label}", 30)


@pytest.fixture
async def make_pool(run_label: str, docker_client: Any) -> AsyncIterator[Callable[..., SandboxPool]]:
    """`make_pool(backend=..., **PoolConfig fields)`: in-process pools, shut down before the leak check."""
    pools: list[SandboxPool] = []

    def make(backend: Any = None, **fields: Any) -> SandboxPool:
        fields.setdefault("name", f"pool-{run_label}")
        fields.setdefault("reap_interval_s", 0)
        pool = SandboxPool(backend or DockerBackendConfig(), PoolConfig(**fields), run_label=run_label)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.shutdown()
    if pools:
        await all_gone(docker_client, run_label)
