"""The pool's engine, and the one writer of its lease state: slots per host, leases, warm sandboxes, idle actors.

`PoolCore` is plain asyncio. `SandboxPool` runs it in-process, or `_PoolActor` (remote.py) runs it inside a
named Ray actor so every process of the cluster shares one. A slot on a host is taken by each idle actor,
sandbox starting, warm sandbox and leased sandbox; it is freed only once that sandbox is destroyed, so a
host never holds more than its slots. The helpers (starter, gang, upkeep, discovery, warm) change that
state only through the methods here (`claim`, `free`, `keep_idle`, `drop_idle`, `record_lease`, …).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

import ray
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from harbor_ray.backends.base import BackendSettings, SandboxSpec
from harbor_ray.config import PoolConfig, check_pool_config
from harbor_ray.errors import BackendUnavailable, CircuitOpen, HarborRayError, SandboxGone, SandboxStartError
from harbor_ray.pool.gang import group_member_gone, start_group
from harbor_ray.pool.hosts import Host, hopeless, pick
from harbor_ray.pool.metrics import PoolMetrics
from harbor_ray.pool.starter import Entry, Starter
from harbor_ray.pool.upkeep import Upkeep
from harbor_ray.pool.warm import WarmSet
from harbor_ray.sandbox import Sandbox, SandboxLimits, settle_actor

log = logging.getLogger(__name__)

_STOP_TIMEOUT_S = 30.0
_LEASE_GRACE_S = 60.0  # a lease held this long past its sandbox's TTL is taken back


def _retryable(e: BaseException) -> bool:
    return isinstance(e, SandboxStartError | BackendUnavailable | SandboxGone) and not isinstance(e, CircuitOpen)


class Demand:
    """The peak number of sandboxes in use (leased or waited for) during the last `window_s`."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()

    def note(self, in_use: int) -> None:
        while self._samples and self._samples[-1][1] <= in_use:
            self._samples.pop()  # older and not above the new value: never the peak again
        self._samples.append((time.monotonic(), in_use))

    def peak(self) -> int:
        now = time.monotonic()
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        return self._samples[0][1] if self._samples else 0


class PoolCore:
    """Leases over hosts with slots. Every public coroutine may run concurrently with the others."""

    def __init__(
        self,
        backend_config: BackendSettings,
        config: PoolConfig,
        *,
        limits: SandboxLimits | None = None,
        actor_options: dict[str, Any] | None = None,
        run_label: str | None = None,
    ) -> None:
        check_pool_config(config)
        self.backend_config = backend_config
        self.config = config
        self.limits = limits or SandboxLimits()
        self.actor_options = dict(actor_options or {})
        self.metrics = PoolMetrics(config.name)
        self.hosts: dict[str, Host] = {}
        self.leases: dict[str, Entry] = {}
        self.warm = WarmSet(config, self.metrics, self.destroy_later)
        self.waiters = 0
        self.prefixes: set[str] = {run_label} if run_label else set()
        self.maybe_orphans = False  # a start was abandoned: reap at shutdown
        self.closed = False
        self._acquiring: set[str] = set()
        self._cancelled: set[str] = set()
        self.creating = asyncio.Semaphore(config.max_concurrent_creates)
        self.starter = Starter(self)
        self.start_on = self.starter.start_on
        self._wakeups: list[asyncio.Future[None]] = []
        self._start_lock = asyncio.Lock()
        self._gang_lock = asyncio.Lock()
        self.upkeep: Upkeep | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.demand = Demand(config.keep_actors_s)
        self._idle_since: dict[Any, float] = {}  # recycled idle actor -> when it went idle

    async def ensure_started(self) -> None:
        if self.upkeep is not None or self.closed:
            return
        async with self._start_lock:
            if self.upkeep is not None:
                return
            if not ray.is_initialized():
                log.info("Ray is not running in this process; starting a local Ray for the pool")
                ray.init()
            upkeep = Upkeep(self)
            await upkeep.start(ray.get_runtime_context().get_node_id())
            self.upkeep = upkeep

    # -- slots and idle actors: the only writers ----------------------------------------------------

    def used(self) -> int:
        return sum(h.used for h in self.hosts.values())

    def capacity(self) -> int:
        return min(self.config.max_sandboxes, sum(h.slots for h in self.hosts.values() if h.alive))

    def claim(self, *, avoid: set[str] | None = None, new_only: bool = False) -> tuple[Host, Any] | None:
        """Take a place on the best host: one of its idle actors (which holds its slot), or a new slot.

        None when no host has one free (or its circuit breaker allows no creation now). `new_only` takes
        a new slot even where idle actors wait (a placement-group bundle needs an actor of its own).
        """
        room = self.used() < self.config.max_sandboxes
        host = pick(list(self.hosts.values()), room_total=room, avoid=avoid, new_only=new_only)
        if host is None or not host.circuit.allow():
            return None
        actor = host.idle.pop() if host.idle and not new_only else None
        if actor is None:
            host.used += 1
        return host, actor

    def free(self, host: Host) -> None:
        host.used -= 1
        self.wake()

    def keep_idle(self, host: Host, actor: Any) -> bool:
        """An actor with no sandbox joins the host's idle set, keeping its slot; ended when it cannot serve."""
        if self.closed or not host.alive:
            ray.kill(actor, no_restart=True)
            self.free(host)
            return False
        host.idle.append(actor)
        return True

    def drop_idle(self, host: Host, actor: Any) -> bool:
        """End an idle actor and free its slot; False when it was no longer idle."""
        if actor not in host.idle:
            return False
        host.idle.remove(actor)
        ray.kill(actor, no_restart=True)
        self.free(host)
        return True

    def _drop_an_idle_actor(self, avoid: set[str], new_only: bool) -> None:
        """No place for a lease, but an idle actor it cannot use holds a slot (on a host it avoids, or it
        needs a new actor): end that actor, so the pool-wide bound frees a slot."""
        if self.used() < self.config.max_sandboxes:
            return
        for host in self.hosts.values():
            if host.idle and (new_only or host.name in avoid):
                self.drop_idle(host, host.idle[-1])
                return

    def host_lost(self, host: Host) -> None:
        """The host has no Ray node any more: end its idle actors, destroy its warm sandboxes."""
        for actor in list(host.idle):
            self.drop_idle(host, actor)
        self.warm.drop_host(host)

    def record_lease(self, lease_id: str, entry: Entry) -> None:
        self.leases[lease_id] = entry
        self.demand.note(len(self.leases) + self.waiters)
        self.wake()

    def _keeps_actor(self, host: Host) -> bool:
        """Recycle a released sandbox's actor? While idle actors plus leases stay under the recent peak."""
        if not self.config.keep_actors_s or self.closed or not host.alive:
            return False
        idle = sum(len(h.idle) for h in self.hosts.values())
        return idle + len(self.leases) < self.demand.peak()

    def trim_idle(self, now: float) -> None:
        """End recycled idle actors unused for `keep_actors_s`, beyond the `prestart_actors` kept anyway."""
        idle = {actor for h in self.hosts.values() for actor in h.idle}
        spare = len(idle) - self.config.prestart_actors
        for host in self.hosts.values():
            for actor in list(host.idle):
                since = self._idle_since.get(actor)
                if spare > 0 and since is not None and now - since > self.config.keep_actors_s:
                    self._idle_since.pop(actor, None)
                    if self.drop_idle(host, actor):
                        spare -= 1
        self._idle_since = {a: t for a, t in self._idle_since.items() if a in idle}

    # -- wake-ups and tasks --------------------------------------------------------------------------

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

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def refresh_soon(self) -> None:
        if self.upkeep is not None:
            self.upkeep.refresh_soon()

    def key(self, spec: SandboxSpec) -> SandboxSpec:
        return replace(spec, pool=self.config.name)

    def _note(self, key: SandboxSpec) -> None:
        self.prefixes.add(key.run_label)
        self.warm.note(key)

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
            self.destroy_later(entry)
            msg = f"lease {lease_id}: released while it was being acquired"
            raise SandboxGone(msg)
        self.metrics.count("leases")
        self.metrics.waited(time.monotonic() - began)
        self.record_lease(lease_id, entry)
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
            group_member_gone(entry.group, self.leases.values())

    async def acquire_group(self, spec: SandboxSpec, lease_ids: list[str], strategy: str = "PACK") -> list[Sandbox]:
        """Gang lease: reserve len(lease_ids) slots and one placement group, then start all or none."""
        await self.ensure_started()
        self._note(self.key(spec))
        async with self._gang_lock:
            return await start_group(self, self.key(spec), lease_ids, strategy)

    async def prewarm(self, spec: SandboxSpec, n: int, *, wait: bool = False) -> int:
        """Start `n` sandboxes for upcoming leases of `spec`, within capacity; returns how many are warm.

        With `wait`, return once n are warm, or nothing more is starting for `spec` and no slot is free
        (or warming it failed), or after `pool.start_timeout_s`.
        """
        await self.ensure_started()
        key = self.key(spec)
        self.prefixes.add(key.run_label)
        self.warm.credit(key, n)
        self.wake()
        deadline = time.monotonic() + self.config.start_timeout_s
        while wait and time.monotonic() < deadline and self.warm.count(key) < n:
            await self.changed(0.2)
            stuck = not self.warm.starting[key] and self.used() >= self.capacity()
            if key in self.warm.errors or stuck:
                break
        return self.warm.count(key)

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
                    entry = await self.warm.take(key)
                    if entry is not None:
                        return entry
                    reserved = await self.reserve(key, failed)
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

    async def reserve(self, key: SandboxSpec, avoid: set[str], *, new_only: bool = False) -> tuple[Host, Any] | None:
        """`claim` a place for a lease, waiting while every host is full; None: a warm sandbox of `key` is ready."""
        deadline = time.monotonic() + self.config.start_timeout_s
        self.waiters += 1
        self.demand.note(len(self.leases) + self.waiters)
        try:
            while True:
                if self.closed:
                    msg = f"pool {self.config.name}: shut down while a lease was waiting"
                    raise SandboxStartError(msg)
                if not new_only and self.warm.count(key):
                    return None
                place = self.claim(avoid=avoid, new_only=new_only)
                if place is not None:
                    return place
                self._drop_an_idle_actor(avoid, new_only)
                error = hopeless(list(self.hosts.values()), self.config, deadline)
                if error is not None:
                    raise error
                if self.used() >= self.capacity():
                    self.warm.evict_for(key)
                await self.changed(1.0)
        finally:
            self.waiters -= 1

    # -- background work, asked for by upkeep ------------------------------------------------------

    def expire(self, now: float) -> None:
        """Take back warm sandboxes past half their TTL and leases held past theirs."""
        self.warm.expire(now)
        for lease_id, entry in list(self.leases.items()):
            if now - entry.started > entry.key.ttl_s + _LEASE_GRACE_S:
                log.warning("lease %s held past its sandbox's TTL (%ss); taking it back", lease_id, entry.key.ttl_s)
                self.metrics.count("expired")
                self.spawn(self.release(lease_id))

    def refill(self, now: float) -> bool:
        """Start warm sandboxes up to each spec's target; False when a host had no room for all of them."""
        for key, need in self.warm.wanted(now):
            for _ in range(need):
                place = self.claim()
                if place is None:
                    return False
                self.warm.starting[key] += 1
                self.spawn(self._warm_one(*place, key))
        return True

    async def _warm_one(self, host: Host, actor: Any, key: SandboxSpec) -> None:
        try:
            entry = await self.start_on(host, key, actor)
        except Exception as e:
            self.warm.start_failed(key, e)
        else:
            self.warm.start_succeeded(key)
            if self.closed or not host.alive:
                await self.discard(entry)
            else:
                self.warm.add(entry)
        finally:
            self.warm.starting[key] -= 1
            self.wake()

    # -- stopping ------------------------------------------------------------------------------------

    async def discard(self, entry: Entry, *, recycle: bool = True) -> None:
        """Destroy a sandbox and free its slot; its actor process is recycled as an idle actor (keeping the
        slot) when recent demand wants it, else ended."""
        actor = None
        # A gang member's actor lives in its placement group's bundle, which goes with the group.
        keep = recycle and entry.group is None and self._keeps_actor(entry.host)
        try:
            stop = entry.sandbox.stop(keep_actor=keep, max_served=self.config.actor_max_sandboxes)
            actor = await asyncio.wait_for(stop, _STOP_TIMEOUT_S)
        except (TimeoutError, HarborRayError, ray.exceptions.RayError) as e:
            self.maybe_orphans = True
            log.warning("could not stop sandbox %s: %s", entry.sandbox.handle.name, e)
        finally:
            if actor is not None and self.keep_idle(entry.host, actor):
                self._idle_since[actor] = time.monotonic()
                self.metrics.count("actors_recycled")
                self.wake()
            elif actor is None:
                self.free(entry.host)

    def destroy_later(self, entry: Entry, *, recycle: bool = True) -> asyncio.Task[None]:
        """`discard` in the background."""
        return self.spawn(self.discard(entry, recycle=recycle))

    # -- reporting and shutdown ----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        warm = self.warm.by_image()
        return {
            "pool": self.config.name,
            "alive": len(self.warm.entries()) + len(self.leases),
            "leased": len(self.leases),
            "warm": sum(warm.values()),
            "warm_by_image": warm,
            "idle_actors": sum(len(h.idle) for h in self.hosts.values()),
            "slots_used": self.used(),
            "capacity": self.capacity(),
            "waiting": self.waiters,
            "hosts": {name: h.summary() for name, h in self.hosts.items()},
            **self.metrics.summary(),
        }

    async def reap(self) -> list[str]:
        await self.ensure_started()
        assert self.upkeep is not None
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
        entries = list(self.leases.values()) + self.warm.drain()
        self.leases.clear()
        await asyncio.gather(*(self.discard(e, recycle=False) for e in entries), return_exceptions=True)
        # an actor released a moment ago may still clean up after its sandbox (a holder's network): let it
        idle = [(host, actor) for host in self.hosts.values() for actor in list(host.idle)]
        await asyncio.gather(*(settle_actor(actor) for _, actor in idle))
        for host, actor in idle:
            self.drop_idle(host, actor)
        if self.maybe_orphans and self.upkeep is not None:
            await self.upkeep.reap()
