"""SandboxPool: hands out started, healthy sandboxes (each owned by a Ray actor) and takes them back.

Every lease gets a fresh sandbox; release destroys it and the pool tops its warm set up in the background.
The pool places sandbox actors per host (a Docker daemon local to a node, a remote daemon, or Kubernetes)
within each host's slots, keeps warm sandboxes and idle actors ahead of demand, builds each image once
per host, replaces what dies, and pauses hosts that keep failing (see docs/pool.md).

`SandboxPool(...)` runs the pool in this process. `SandboxPool.from_config(cfg)` with `pool.shared` uses
one named pool actor (`pool.name` in `pool.namespace`) that every Ray process of the cluster can reach,
also with `await SandboxPool.connect(name, namespace)`. Both hand out the same `Lease` and `Sandbox`:
a handle talks to its engine through a `PoolTransport`, `LocalPool` (a `PoolCore` here) or `RemotePool`.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, Protocol

from harbor_ray.backends.base import BackendSettings, SandboxSpec
from harbor_ray.config import PoolConfig
from harbor_ray.pool.core import PoolCore
from harbor_ray.pool.remote import LocalPool, RemotePool, lookup
from harbor_ray.sandbox import Sandbox, SandboxLimits

log = logging.getLogger(__name__)


class PoolTransport(Protocol):
    """How a handle reaches its pool's engine: `LocalPool` in this process, or `RemotePool` (the named actor)."""

    async def acquire(self, spec: SandboxSpec, lease_id: str) -> Sandbox: ...

    async def acquire_group(self, spec: SandboxSpec, lease_ids: list[str], strategy: str) -> list[Sandbox]: ...

    async def release(self, lease_id: str) -> None: ...

    def release_later(self, lease_id: str) -> None:
        """Release without waiting (a lease cancelled mid-acquire: the pool may still finish starting it)."""
        ...

    async def prewarm(self, spec: SandboxSpec, n: int, wait: bool) -> int: ...

    async def start(self) -> None: ...

    async def stats(self) -> dict[str, Any]: ...

    def stats_sync(self) -> dict[str, Any]: ...

    async def reap(self) -> list[str]: ...

    async def shutdown(self) -> None:
        """End the pool, when this handle owns it; otherwise nothing."""
        ...


class Lease:
    """One sandbox on loan. `async with pool.lease(spec) as sandbox: …`, or `acquire()` / `release()`."""

    def __init__(self, pool: SandboxPool, spec: SandboxSpec) -> None:
        self._pool = pool
        self.spec = spec
        self.id = uuid.uuid4().hex
        self.sandbox: Sandbox | None = None

    async def acquire(self) -> Sandbox:
        if self.sandbox is None:
            self._pool._open.add(self)
            try:
                self.sandbox = await self._pool._transport.acquire(self.spec, self.id)
            except BaseException as e:
                self._pool._open.discard(self)
                if isinstance(e, asyncio.CancelledError):
                    self._pool._transport.release_later(self.id)  # the pool may still finish starting it
                raise
        return self.sandbox

    async def release(self) -> None:
        """Destroy the sandbox and free its slot; safe to call twice or without an acquire."""
        sandbox, self.sandbox = self.sandbox, None
        acquiring = sandbox is None and self in self._pool._open
        self._pool._open.discard(self)
        if sandbox is not None or acquiring:  # mid-acquire: the pool destroys the sandbox once it is started
            await self._pool._transport.release(self.id)

    async def __aenter__(self) -> Sandbox:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class GroupLease:
    """N sandboxes placed together (one Ray placement group), started all or none; released together."""

    def __init__(self, pool: SandboxPool, spec: SandboxSpec, n: int, strategy: str) -> None:
        self._pool = pool
        self.spec = spec
        self.strategy = strategy
        self.ids = [uuid.uuid4().hex for _ in range(n)]
        self.sandboxes: list[Sandbox] = []

    async def acquire(self) -> list[Sandbox]:
        if not self.sandboxes:
            self.sandboxes = await self._pool._transport.acquire_group(self.spec, self.ids, self.strategy)
        return self.sandboxes

    async def release(self) -> None:
        sandboxes, self.sandboxes = self.sandboxes, []
        if sandboxes:
            await asyncio.gather(*(self._pool._transport.release(i) for i in self.ids))

    async def __aenter__(self) -> list[Sandbox]:
        return await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        await self.release()


class SandboxPool:
    """Sandboxes for many trials at once, within each host's slots.

    >>> pool = SandboxPool(DockerBackendConfig(), PoolConfig(max_sandboxes=8, warm_per_image=2))
    >>> async with pool.lease(SandboxSpec(run_label="demo", image=BUSYBOX_IMAGE)) as sandbox:  # doctest: +SKIP
    ...     await sandbox.exec("echo hi")
    """

    def __init__(
        self,
        backend_config: BackendSettings,
        config: PoolConfig | None = None,
        *,
        limits: SandboxLimits | None = None,
        actor_options: dict[str, Any] | None = None,
        run_label: str | None = None,
    ) -> None:
        self.config = config or PoolConfig()
        self.backend_config: BackendSettings | None = backend_config
        core = PoolCore(
            backend_config,
            self.config,
            limits=limits,
            actor_options=actor_options,
            run_label=run_label,
        )
        self._transport: PoolTransport = LocalPool(core)
        self._open: set[Lease] = set()

    @classmethod
    def from_config(cls, cfg: Any, *, actor_options: dict[str, Any] | None = None) -> SandboxPool:
        """The pool a `harbor_ray.config.Config` describes: the named pool actor when `pool.shared`.

        The actor is created (or found) on first use, not here, so a trainer can set up its placement
        groups first.
        """
        if not cfg.pool.shared:
            return cls(
                cfg.backend,
                cfg.pool,
                limits=SandboxLimits.from_config(cfg.sandbox),
                actor_options=actor_options,
                run_label=cfg.run_label,
            )
        args = (cfg.backend, cfg.pool, SandboxLimits.from_config(cfg.sandbox), dict(actor_options or {}), cfg.run_label)
        return cls._over(RemotePool(cfg.pool, create=args), cfg.pool, cfg.backend)

    @classmethod
    def connect_sync(cls, name: str = "harbor-ray", namespace: str = "harbor_ray") -> SandboxPool:
        """A handle on the running named pool; raises BackendUnavailable when there is none."""
        config = PoolConfig(name=name, namespace=namespace)
        return cls._over(RemotePool(config, actor=lookup(name, namespace)), config, None)

    @classmethod
    async def connect(cls, name: str = "harbor-ray", namespace: str = "harbor_ray") -> SandboxPool:
        """`connect_sync` for async code: `pool = await SandboxPool.connect("harbor-ray", "harbor_ray")`."""
        return await asyncio.to_thread(cls.connect_sync, name, namespace)

    @classmethod
    def _over(cls, transport: PoolTransport, config: PoolConfig, backend_config: BackendSettings | None) -> SandboxPool:
        pool = cls.__new__(cls)
        pool.config, pool.backend_config = config, backend_config
        pool._transport, pool._open = transport, set()
        return pool

    # -- leases --------------------------------------------------------------------------------------

    def lease(self, spec: SandboxSpec) -> Lease:
        return Lease(self, spec)

    def lease_group(self, spec: SandboxSpec, n: int, *, strategy: str = "PACK") -> GroupLease:
        """Gang reservation: `n` sandboxes of `spec` in one placement group (PACK, SPREAD, STRICT_*)."""
        return GroupLease(self, spec, n, strategy)

    async def prewarm(self, spec: SandboxSpec, n: int, *, wait: bool = False) -> int:
        """Start `n` sandboxes for upcoming leases of `spec`; with `wait`, until they are warm. Returns warm count."""
        return await self._transport.prewarm(spec, n, wait)

    async def start(self) -> None:
        """Start the pool now (hosts found, `pool.prestart_actors` idle actor processes starting) rather than on
        the first lease: e.g. while a trainer loads its model. Returns once the pool runs, not the actors."""
        await self._transport.start()

    # -- reporting and ending ------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        """Sandboxes alive/warm/leased, idle actors, hosts with slots and circuits, counters, latencies."""
        return await self._transport.stats()

    def stats_sync(self) -> dict[str, Any]:
        return self._transport.stats_sync()

    async def reap(self) -> list[str]:
        """Remove orphaned sandboxes of the prefixes this pool served; returns their names."""
        return await self._transport.reap()

    async def shutdown(self) -> None:
        """Release this handle's leases; the handle that owns the pool also destroys everything and ends it."""
        await asyncio.gather(*(lease.release() for lease in list(self._open)), return_exceptions=True)
        await self._transport.shutdown()
