"""The pool's engine: slots per host, warm sandboxes, idle actors, build-once, retries and circuit breakers.

`PoolCore` is plain asyncio. `SandboxPool` runs it in-process, or `_PoolActor` runs it inside a named
Ray actor so every process of the cluster shares one. A slot on a host is taken by each idle actor,
sandbox starting, warm sandbox and leased sandbox; it is freed only once that sandbox is destroyed,
so a host never holds more than its slots. Background upkeep (refills, health checks, node changes,
the reaper) lives in `harbor_ray.pool_upkeep`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from dataclasses import replace
from typing import Any

import ray
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from harbor_ray.actor import Sandbox
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.config import PoolConfig
from harbor_ray.errors import (
    BackendUnavailable,
    CircuitOpen,
    HarborRayError,
    SandboxGone,
    SandboxStartError,
)
from harbor_ray.placement import Host, check_pool_config, configured_hosts, pick
from harbor_ray.pool_metrics import PoolMetrics
from harbor_ray.pool_start import Entry, Starter

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 30.0
_HEALTH_TIMEOUT_S = 30.0


def _retryable(e: BaseException) -> bool:
    return isinstance(e, SandboxStartError | BackendUnavailable | SandboxGone) and not isinstance(e, CircuitOpen)


class PoolCore:
    """Leases over hosts with slots. Every public coroutine may run concurrently with the others."""

    def __init__(
        self,
        backend_config: Any,
        config: PoolConfig,
        *,
        output_limit_bytes: int = 1_000_000,
        actor_options: dict[str, Any] | None = None,
        run_label: str | None = None,
    ) -> None:
        check_pool_config(config)
        self.backend_config = backend_config
        self.config = config
        self.output_limit_bytes = output_limit_bytes
        self.actor_options = dict(actor_options or {})
        self.metrics = PoolMetrics(config.name)
        self.hosts: dict[str, Host] = {}
        self.dynamic_hosts = False  # one host per node offering pool.sandbox_resource
        self.leases: dict[str, Entry] = {}
        self.warm: dict[SandboxSpec, deque[Entry]] = {}
        self.warm_starting: Counter[SandboxSpec] = Counter()
        self.seen: OrderedDict[SandboxSpec, None] = OrderedDict()  # keys kept warm, most recent last
        self.credits: Counter[SandboxSpec] = Counter()  # prewarm(spec, n): sandboxes for upcoming leases
        self.idle_starting = 0
        self.waiters = 0
        self.warm_errors: dict[SandboxSpec, str] = {}  # keys whose warm start failed (cleared by prewarm)
        self.prefixes: set[str] = {run_label} if run_label else set()
        self.maybe_orphans = False  # a start was abandoned: reap at shutdown
        self.closed = False
        self._acquiring: set[str] = set()
        self._cancelled: set[str] = set()
        self.creating = asyncio.Semaphore(config.max_concurrent_creates)
        self.starter = Starter(self)
        self.start_on = self.starter.start_on
        self._wakeups: list[asyncio.Future[None]] = []
        self._evicting = 0
        self._start_lock = asyncio.Lock()
        self._gang_lock = asyncio.Lock()
        self.upkeep: Any = None
        self.tasks: set[asyncio.Task[Any]] = set()

    # -- start -------------------------------------------------------------------------------------

    async def ensure_started(self) -> None:
        if self.upkeep is not None or self.closed:
            return
        async with self._start_lock:
            if self.upkeep is not None:
                return
            if not ray.is_initialized():
                log.info("Ray is not running in this process; starting a local Ray for the pool")
                ray.init()
            node_id = ray.get_runtime_context().get_node_id()
            hosts = configured_hosts(self.backend_config, self.config, pool_node_id=node_id)
            self.dynamic_hosts = not hosts
            self.hosts = {h.name: h for h in hosts}
            from harbor_ray.pool_upkeep import Upkeep

            upkeep = Upkeep(self)
            await upkeep.refresh_hosts()
            upkeep.start()
            self.upkeep = upkeep

    # -- bookkeeping ---------------------------------------------------------------------------------

    def used(self) -> int:
        return sum(h.used for h in self.hosts.values())

    def wake(self) -> None:
        """Tell waiting leases and the upkeep loop that slots or sandboxes changed."""
        wakeups, self._wakeups = self._wakeups, []
        for fut in wakeups:
            if not fut.done():
                fut.set_result(None)

    async def changed(self, timeout: float) -> None:
        fut = asyncio.get_running_loop().create_future()
        self._wakeups.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass

    def free(self, host: Host) -> None:
        host.used -= 1
        self.wake()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def key(self, spec: SandboxSpec) -> SandboxSpec:
        return replace(spec, pool=self.config.name)

    def target(self, key: SandboxSpec) -> int:
        return (self.config.warm_per_image if key in self.seen else 0) + self.credits[key]

    def _note(self, key: SandboxSpec) -> None:
        self.prefixes.add(key.run_label)
        if self.credits[key]:
            self.credits[key] -= 1
        if self.config.warm_per_image:
            self.seen[key] = None
            self.seen.move_to_end(key)
            keep = max(1, self.config.max_sandboxes // self.config.warm_per_image)
            while len(self.seen) > keep:
                self.seen.popitem(last=False)

    # -- leases --------------------------------------------------------------------------------------

    async def acquire(self, spec: SandboxSpec, lease_id: str) -> Sandbox:
        """A started, healthy sandbox for `spec`, recorded under `lease_id` until `release(lease_id)`."""
        await self.ensure_started()
        if self.closed:
            msg = f"pool {self.config.name}: shut down; create a new pool"
            raise SandboxStartError(msg)
        began = time.monotonic()
        key = self.key(spec)
        self._note(key)
        self._acquiring.add(lease_id)
        try:
            entry = await self._obtain(key)
        finally:
            self._acquiring.discard(lease_id)
        if lease_id in self._cancelled:
            self._cancelled.discard(lease_id)
            self.spawn(self.discard(entry))
            msg = f"lease {lease_id}: released while it was being acquired"
            raise SandboxGone(msg)
        self.leases[lease_id] = entry
        self.metrics.count("leases")
        self.metrics.waited(time.monotonic() - began)
        self.wake()
        return entry.sandbox

    async def release(self, lease_id: str) -> None:
        """Destroy the lease's sandbox and free its slot; the warm set is topped up in the background."""
        entry = self.leases.pop(lease_id, None)
        if entry is None:
            if lease_id in self._acquiring:
                self._cancelled.add(lease_id)
            return
        await self.discard(entry)
        self.metrics.count("released")
        if entry.group is not None:
            self._group_member_gone(entry.group)

    async def prewarm(self, spec: SandboxSpec, n: int, *, wait: bool = False) -> int:
        """Start `n` sandboxes for upcoming leases of `spec`, within capacity; returns how many are warm.

        With `wait`, return once n are warm, or nothing more is starting for `spec` and no slot is free
        (or warming it failed), or after `pool.start_timeout_s`.
        """
        await self.ensure_started()
        key = self.key(spec)
        self.prefixes.add(key.run_label)
        self.credits[key] += n
        self.warm_errors.pop(key, None)
        self.wake()
        deadline = time.monotonic() + self.config.start_timeout_s
        while wait and time.monotonic() < deadline and len(self.warm.get(key, ())) < n:
            await self.changed(0.2)
            stuck = not self.warm_starting[key] and self.used() >= self._capacity()
            if key in self.warm_errors or stuck:
                break
        return len(self.warm.get(key, ()))

    def _capacity(self) -> int:
        return min(self.config.max_sandboxes, sum(h.slots for h in self.hosts.values() if h.alive))

    async def _obtain(self, key: SandboxSpec) -> Entry:
        failed: set[str] = set()
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.config.start_retries + 1),
            wait=wait_exponential(multiplier=0.2, max=5),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                while True:
                    entry = await self.take_warm(key)
                    if entry is not None:
                        return entry
                    reserved = await self._reserve(key, failed)
                    if reserved is None:
                        continue  # a warm sandbox for this key appeared while waiting
                    host, actor = reserved
                    try:
                        return await self.start_on(host, key, actor)
                    except BaseException:
                        failed.add(host.name)
                        raise
        msg = "unreachable"
        raise AssertionError(msg)  # pragma: no cover

    async def take_warm(self, key: SandboxSpec) -> Entry | None:
        queue = self.warm.get(key)
        while queue:
            entry = queue.popleft()
            try:
                ok = await self.healthy(entry)
            except BaseException:
                queue.appendleft(entry)  # cancelled mid-check: the sandbox stays warm
                raise
            if ok:
                self.metrics.count("warm_hits")
                return entry
            self.metrics.failure("UnhealthyWarmSandbox")
            self.metrics.count("replaced")
            log.info("warm sandbox %s failed its health check; replacing it", entry.sandbox.handle.name)
            self.spawn(self.discard(entry))
        return None

    async def healthy(self, entry: Entry) -> bool:
        try:
            return await asyncio.wait_for(entry.sandbox.health(), _HEALTH_TIMEOUT_S)
        except (TimeoutError, HarborRayError, ray.exceptions.RayError):
            return False

    async def _reserve(self, key: SandboxSpec, avoid: set[str], *, new_only: bool = False) -> tuple[Host, Any] | None:
        """Take a slot (or an idle actor) on the best host, waiting while all are full; None: take warm."""
        deadline = time.monotonic() + self.config.start_timeout_s
        self.waiters += 1
        try:
            while True:
                if self.closed:
                    msg = f"pool {self.config.name}: shut down while a lease was waiting"
                    raise SandboxStartError(msg)
                if not new_only and self.warm.get(key):
                    return None
                hosts = list(self.hosts.values())
                host = pick(hosts, room_total=self.used() < self.config.max_sandboxes, avoid=avoid, new_only=new_only)
                if host is not None and host.circuit.allow():
                    actor = host.idle.pop() if host.idle and not new_only else None
                    if actor is None:
                        host.used += 1
                    return host, actor
                self._raise_if_hopeless(hosts, deadline)
                self._evict_one(key)
                await self.changed(1.0)
        finally:
            self.waiters -= 1

    def _raise_if_hopeless(self, hosts: list[Host], deadline: float) -> None:
        live = [h for h in hosts if h.alive]
        if live and all(h.circuit.state == "open" for h in live):
            raise min((h.circuit for h in live), key=lambda c: c.opened_at or 0.0).error()
        if not live and time.monotonic() > deadline:
            what = f"resource {self.config.sandbox_resource!r}" if self.config.sandbox_resource else "its labels"
            msg = f"pool {self.config.name}: no alive Ray node can run sandboxes (none offers {what}); add one"
            raise SandboxStartError(msg)

    def _evict_one(self, key: SandboxSpec) -> None:
        """At capacity with leases waiting: destroy the oldest warm sandbox of another image to free a slot."""
        if self.used() < self._capacity() or self._evicting:
            return
        others = [(q[0].started, k) for k, q in self.warm.items() if q and k != key]
        if not others:
            return
        _, victim = min(others)
        entry = self.warm[victim].popleft()
        self.metrics.count("evicted")
        self._evicting += 1

        async def evict() -> None:
            try:
                await self.discard(entry)
            finally:
                self._evicting -= 1

        self.spawn(evict())

    # -- starting and stopping -----------------------------------------------------------------------

    async def discard(self, entry: Entry) -> None:
        """Destroy a sandbox (its actor too) and free its slot."""
        try:
            await asyncio.wait_for(entry.sandbox.stop(), _STOP_TIMEOUT_S)
        except (TimeoutError, HarborRayError, ray.exceptions.RayError) as e:
            self.maybe_orphans = True
            log.warning("could not stop sandbox %s: %s", entry.sandbox.handle.name, e)
        finally:
            self.free(entry.host)

    def _group_member_gone(self, group: Any) -> None:
        if not any(e.group is group for e in self.leases.values()):
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)

    async def acquire_group(self, spec: SandboxSpec, lease_ids: list[str], strategy: str = "PACK") -> list[Sandbox]:
        """Gang lease: reserve len(lease_ids) slots and one placement group, then start all or none."""
        from harbor_ray.pool_gang import acquire_group

        await self.ensure_started()
        self._note(self.key(spec))
        async with self._gang_lock:
            return await acquire_group(self, self.key(spec), lease_ids, strategy)

    async def reserve_new(self, key: SandboxSpec) -> Host:
        reserved = await self._reserve(key, set(), new_only=True)
        assert reserved is not None
        return reserved[0]

    # -- reporting and shutdown ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        warm = {k.image or k.build_context or "?": len(q) for k, q in self.warm.items() if q}
        return {
            "pool": self.config.name,
            "alive": sum(len(q) for q in self.warm.values()) + len(self.leases),
            "leased": len(self.leases),
            "warm": sum(warm.values()),
            "warm_by_image": warm,
            "idle_actors": sum(len(h.idle) for h in self.hosts.values()),
            "slots_used": self.used(),
            "capacity": self._capacity(),
            "waiting": self.waiters,
            "hosts": {name: h.summary() for name, h in self.hosts.items()},
            **self.metrics.summary(),
        }

    async def reap(self) -> list[str]:
        await self.ensure_started()
        return await self.upkeep.reap()

    async def shutdown(self) -> None:
        """Destroy every sandbox and idle actor of the pool; wait for starts in flight to finish first."""
        if self.closed:
            return
        self.closed = True
        self.wake()
        if self.upkeep is not None:
            await self.upkeep.stop()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=self.config.start_timeout_s)
        entries = list(self.leases.values()) + [e for q in self.warm.values() for e in q]
        self.leases.clear()
        self.warm.clear()
        await asyncio.gather(*(self.discard(e) for e in entries), return_exceptions=True)
        for host in self.hosts.values():
            for actor in host.idle:
                ray.kill(actor, no_restart=True)
                host.used -= 1
            host.idle.clear()
        if self.maybe_orphans and self.upkeep is not None:
            await self.upkeep.reap()
