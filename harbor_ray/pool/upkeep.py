"""The pool's background upkeep: one loop that refreshes hosts, checks health, refills, prestarts and reaps.

The loop wakes on every slot change (or each second). It never starts background work while leases are
waiting for a slot: leases come first. What it changes, it changes through `PoolCore`'s methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import ray

from harbor_ray.pool.discovery import Discovery
from harbor_ray.pool.hosts import Host, actor_options, task_options
from harbor_ray.reaper import reap_with_config
from harbor_ray.sandbox import actor_class
from harbor_ray.sandbox import call_actor as actor_call

if TYPE_CHECKING:
    from harbor_ray.pool.core import PoolCore

log = logging.getLogger(__name__)

_REFRESH_S = 5.0  # how often the Ray node list is read
_READY_TIMEOUT_S = 10.0
_REAP_TIMEOUT_S = 120.0
_reap_task: Any = None


def _reaper() -> Any:
    global _reap_task
    if _reap_task is None:
        _reap_task = ray.remote(reap_with_config)
    return _reap_task


class Upkeep:
    def __init__(self, core: PoolCore) -> None:
        self.core = core
        self.cfg = core.config
        self.discovery = Discovery(core.backend_config, core.config, core.hosts, core.host_lost)
        self.idle_starting = 0
        self._loop_task: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._reaping: asyncio.Task[list[str]] | None = None
        self._last_refresh = self._last_health = time.monotonic()
        self._last_reap = float("-inf")  # reap once at pool start

    async def start(self, pool_node_id: str) -> None:
        """Find the hosts, then run the loop."""
        await self.discovery.start(pool_node_id)
        self.core.wake()
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._loop_task, self._health, self._reaping) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while not self.core.closed:
            try:
                await self.tick()
            except Exception:
                log.exception("pool %s: upkeep failed; continuing", self.cfg.name)
            await self.core.changed(1.0)

    async def tick(self) -> None:
        core = self.core
        now = time.monotonic()
        if now - self._last_refresh >= _REFRESH_S:
            self._last_refresh = now
            if await self.discovery.refresh():
                self._check_health_soon()
            core.wake()
        if self.cfg.health_interval_s and now - self._last_health >= self.cfg.health_interval_s:
            self._check_health_soon()
        if (self.cfg.reap_interval_s or self._last_reap < 0) and now - self._last_reap >= self.cfg.reap_interval_s:
            if self._reaping is None or self._reaping.done():
                self._last_reap = now
                self._reaping = asyncio.get_running_loop().create_task(self.reap())
        core.expire(now)
        core.trim_idle(now)
        if not core.waiters and not core.closed and core.refill(now):
            self._prestart_actors()
        warm = len(core.warm.entries())
        core.metrics.gauges(
            alive=warm + len(core.leases),
            warm=warm,
            leased=len(core.leases),
            idle_actors=sum(len(h.idle) for h in core.hosts.values()),
            starting=sum(core.warm.starting.values()) + self.idle_starting,
        )
        for host in core.hosts.values():
            available = host.alive and host.circuit.state != "open"
            core.metrics.host(
                host.name, slots=host.slots, used=host.used, idle_actors=len(host.idle), available=available
            )

    def refresh_soon(self) -> None:
        """Read the node table on the next tick (an actor just died: its node may be gone)."""
        self._last_refresh = float("-inf")
        self.core.wake()

    # -- health --------------------------------------------------------------------------------------

    def _check_health_soon(self) -> None:
        self._last_health = time.monotonic()
        if self._health is None or self._health.done():
            self._health = asyncio.get_running_loop().create_task(self.check_health())

    async def check_health(self) -> None:
        """Replace warm sandboxes that stopped answering and idle actors that died."""
        core = self.core
        await core.warm.check()
        idle = [(h, a) for h in core.hosts.values() for a in h.idle]
        results = await asyncio.gather(
            *(asyncio.wait_for(actor_call(a.ready.remote(), "ready"), _READY_TIMEOUT_S) for _, a in idle),
            return_exceptions=True,
        )
        for (host, actor), result in zip(idle, results, strict=True):
            if isinstance(result, BaseException) and core.drop_idle(host, actor):
                core.metrics.failure("IdleActorLost", host.name)
        core.wake()

    # -- idle actors ---------------------------------------------------------------------------------

    def _prestart_actors(self) -> None:
        core = self.core
        need = self.cfg.prestart_actors - sum(len(h.idle) for h in core.hosts.values()) - self.idle_starting
        while need > 0:
            place = core.claim(new_only=True)
            if place is None:
                return
            self.idle_starting += 1
            core.spawn(self._prestart(place[0]))
            need -= 1

    async def _prestart(self, host: Host) -> None:
        core = self.core
        options = actor_options(host, self.cfg, core.actor_options)
        actor = actor_class(**options).remote(host.backend_config, core.limits)
        try:
            await asyncio.wait_for(actor_call(actor.ready.remote(), "ready"), self.cfg.start_timeout_s)
        except BaseException as e:
            ray.kill(actor, no_restart=True)
            core.free(host)
            if not isinstance(e, Exception):
                raise
            host.circuit.failure(e)
            core.metrics.failure(e, host.name)
            log.info("idle actor on %s did not come up: %s", host.name, e)
        else:
            if core.keep_idle(host, actor):
                host.circuit.success()
                core.metrics.count("actors_prestarted")
        finally:
            self.idle_starting -= 1
            core.wake()

    # -- reaper --------------------------------------------------------------------------------------

    async def reap(self) -> list[str]:
        """Run the reaper for every prefix this pool has served, on every live host (near its daemon)."""
        core = self.core
        prefixes = sorted(core.prefixes)
        if not prefixes:
            return []
        hosts = [h for h in core.hosts.values() if h.alive]
        refs = [_reaper().options(**task_options(h)).remote(h.backend_config, prefixes) for h in hosts]
        removed: list[str] = []
        for host, ref in zip(hosts, refs, strict=True):
            try:
                removed += await asyncio.wait_for(ref, _REAP_TIMEOUT_S)
            except Exception as e:
                log.warning("reaper on %s failed: %s", host.name, str(e).splitlines()[0] if str(e) else e)
        core.metrics.count("reaped", len(removed))
        return removed
