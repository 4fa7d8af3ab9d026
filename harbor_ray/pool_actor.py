"""The named pool actor: one `PoolCore` per cluster, found by name and namespace from any Ray process.

It is created lazily (`get_if_exists`), on the first lease or prewarm of the handle that configured it,
so it comes after the trainer's placement groups. It takes no CPU and is placed on its creator's node
(softly), where a local Docker daemon is expected. It is owned by its creator's job and ends with it;
the sandbox actors it created end with it too, and the reaper removes what they leave.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from harbor_ray.actor import Sandbox, call_actor
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.config import PoolConfig
from harbor_ray.errors import BackendUnavailable
from harbor_ray.pool_core import PoolCore

log = logging.getLogger(__name__)


class _PoolActor:
    """Async Ray actor around a `PoolCore`; its methods mirror the core's."""

    def __init__(
        self,
        backend_config: Any,
        config: PoolConfig,
        output_limit_bytes: int,
        actor_options: dict[str, Any],
        run_label: str | None,
    ) -> None:
        self.core = PoolCore(
            backend_config,
            config,
            output_limit_bytes=output_limit_bytes,
            actor_options=actor_options,
            run_label=run_label,
        )

    async def acquire(self, spec: SandboxSpec, lease_id: str) -> Sandbox:
        return await self.core.acquire(spec, lease_id)

    async def acquire_group(self, spec: SandboxSpec, lease_ids: list[str], strategy: str) -> list[Sandbox]:
        return await self.core.acquire_group(spec, lease_ids, strategy)

    async def release(self, lease_id: str) -> None:
        await self.core.release(lease_id)

    async def prewarm(self, spec: SandboxSpec, n: int, wait: bool) -> int:
        return await self.core.prewarm(spec, n, wait=wait)

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    async def reap(self) -> list[str]:
        return await self.core.reap()

    async def shutdown(self) -> None:
        await self.core.shutdown()

    def config(self) -> PoolConfig:
        return self.core.config


def get_or_create(
    backend_config: Any,
    config: PoolConfig,
    output_limit_bytes: int,
    actor_options: dict[str, Any],
    run_label: str | None,
) -> tuple[Any, bool]:
    """The named pool actor, created if absent; returns (handle, created_here)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    created = lookup(config.name, config.namespace, missing_ok=True) is None
    here = ray.get_runtime_context().get_node_id()
    handle = (
        ray.remote(_PoolActor)
        .options(
            name=config.name,
            namespace=config.namespace,
            get_if_exists=True,
            num_cpus=0,
            max_concurrency=1000,
            max_restarts=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True),
        )
        .remote(backend_config, config, output_limit_bytes, actor_options, run_label)
    )
    if created:
        log.info("sandbox pool %s created in Ray namespace %s", config.name, config.namespace)
    return handle, created


def lookup(name: str, namespace: str, *, missing_ok: bool = False) -> Any:
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError as e:
        if missing_ok:
            return None
        msg = (
            f"no sandbox pool named {name!r} in Ray namespace {namespace!r}; create it first with "
            "SandboxPool.from_config(cfg) (pool.shared=true) in the driver"
        )
        raise BackendUnavailable(msg) from e


async def call(ref: Any, name: str) -> Any:
    """Await a pool actor call; re-raise harbor_ray errors as themselves, a dead pool as BackendUnavailable."""
    hint = "; was its creating job stopped?"
    return await call_actor(ref, "a call", f"sandbox pool {name}", died=BackendUnavailable, hint=hint)
