"""How a `SandboxPool` handle reaches its `PoolCore`: `LocalPool` in this process, or the named pool actor.

The named pool actor (`_PoolActor`, a `LocalPool` inside a Ray actor) is one `PoolCore` per cluster, found by
name and namespace from any Ray process; `RemotePool` is the typed way a handle calls it.

It is created lazily (`get_if_exists`), on the first lease or prewarm of the handle that configured it,
so it comes after the trainer's placement groups. It takes no CPU and is placed on its creator's node
(softly), where a local Docker daemon is expected. It is owned by its creator's job and ends with it;
the sandbox actors it created end with it too, and the reaper removes what they leave.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from harbor_ray.backends.base import BackendSettings, SandboxSpec
from harbor_ray.config import PoolConfig
from harbor_ray.errors import BackendUnavailable
from harbor_ray.pool.core import PoolCore
from harbor_ray.sandbox import Sandbox, SandboxLimits, call_actor

log = logging.getLogger(__name__)

# What the pool actor is created from: backend config, pool config, output limit, actor options, run label.
CreateArgs = tuple[BackendSettings, PoolConfig, SandboxLimits, dict[str, Any], str | None]


class LocalPool:
    """A `PoolCore` in this process."""

    def __init__(self, core: PoolCore) -> None:
        self.core = core

    async def acquire(self, spec: SandboxSpec, lease_id: str) -> Sandbox:
        return await self.core.acquire(spec, lease_id)

    async def acquire_group(self, spec: SandboxSpec, lease_ids: list[str], strategy: str) -> list[Sandbox]:
        return await self.core.acquire_group(spec, lease_ids, strategy)

    async def release(self, lease_id: str) -> None:
        await self.core.release(lease_id)

    def release_later(self, lease_id: str) -> None:
        self.core.spawn(self.core.release(lease_id))

    async def prewarm(self, spec: SandboxSpec, n: int, wait: bool) -> int:
        return await self.core.prewarm(spec, n, wait=wait)

    async def start(self) -> None:
        await self.core.ensure_started()

    async def stats(self) -> dict[str, Any]:
        return self.core.stats()

    def stats_sync(self) -> dict[str, Any]:
        return self.core.stats()

    async def reap(self) -> list[str]:
        return await self.core.reap()

    async def shutdown(self) -> None:
        await self.core.shutdown()


class _PoolActor(LocalPool):
    """Async Ray actor around a `PoolCore`: the `LocalPool` of the process it runs in."""

    def __init__(
        self,
        backend_config: BackendSettings,
        config: PoolConfig,
        limits: SandboxLimits,
        actor_options: dict[str, Any],
        run_label: str | None,
    ) -> None:
        super().__init__(
            PoolCore(
                backend_config,
                config,
                limits=limits,
                actor_options=actor_options,
                run_label=run_label,
            )
        )

    def config(self) -> PoolConfig:
        return self.core.config


def get_or_create(args: CreateArgs) -> tuple[Any, bool]:
    """The named pool actor, created if absent; returns (handle, created_here)."""
    config = args[1]
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
        .remote(*args)
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


class RemotePool:
    """The named pool actor, as a `PoolTransport`: found already (`actor`), or created on first use (`create`).

    The handle whose first use created the actor owns it: its `shutdown` ends the pool.
    """

    def __init__(self, config: PoolConfig, *, actor: Any = None, create: CreateArgs | None = None) -> None:
        self.config = config
        self._actor = actor
        self._create = create
        self._owner = False

    def _handle(self) -> Any:
        if self._actor is None:
            assert self._create is not None
            self._actor, self._owner = get_or_create(self._create)
        return self._actor

    async def _ready(self) -> Any:
        """The actor; on the first use of one made elsewhere, a warning if it runs with other settings."""
        first_use = self._actor is None
        actor = self._handle()
        if first_use and not self._owner and self._create is not None:
            theirs = await call(actor.config.remote(), self.config.name)
            if theirs != self.config:
                log.warning(
                    "pool %s in namespace %s already runs with other settings (%s); using it as it is",
                    self.config.name,
                    self.config.namespace,
                    theirs,
                )
        return actor

    async def acquire(self, spec: SandboxSpec, lease_id: str) -> Sandbox:
        actor = await self._ready()
        return await call(actor.acquire.remote(spec, lease_id), self.config.name)

    async def acquire_group(self, spec: SandboxSpec, lease_ids: list[str], strategy: str) -> list[Sandbox]:
        actor = await self._ready()
        return list(await call(actor.acquire_group.remote(spec, lease_ids, strategy), self.config.name))

    async def release(self, lease_id: str) -> None:
        actor = await self._ready()
        await call(actor.release.remote(lease_id), self.config.name)

    def release_later(self, lease_id: str) -> None:
        if self._actor is not None:
            self._actor.release.remote(lease_id)

    async def prewarm(self, spec: SandboxSpec, n: int, wait: bool) -> int:
        actor = await self._ready()
        return int(await call(actor.prewarm.remote(spec, n, wait), self.config.name))

    async def start(self) -> None:
        actor = await self._ready()
        await call(actor.start.remote(), self.config.name)

    async def stats(self) -> dict[str, Any]:
        actor = await self._ready()
        return dict(await call(actor.stats.remote(), self.config.name))

    def stats_sync(self) -> dict[str, Any]:
        return dict(ray.get(self._handle().stats.remote()))

    async def reap(self) -> list[str]:
        actor = await self._ready()
        return list(await call(actor.reap.remote(), self.config.name))

    async def shutdown(self) -> None:
        if self._owner and self._actor is not None:
            await call(self._actor.shutdown.remote(), self.config.name)
            ray.kill(self._actor, no_restart=True)
            self._actor = None
