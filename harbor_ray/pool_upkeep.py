"""The pool's background upkeep: refill warm sets and idle actors, health checks, node changes, the reaper.

One loop per pool wakes on every slot change (or each second). It never starts background work while
leases are waiting for a slot: leases come first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import ray

from harbor_ray.actor import actor_class
from harbor_ray.actor import call_actor as actor_call
from harbor_ray.errors import ImageBuildError
from harbor_ray.placement import Host, actor_options, has_node, node_hosts, pick, task_options

if TYPE_CHECKING:
    from harbor_ray.backends.base import SandboxSpec
    from harbor_ray.pool_core import Entry, PoolCore

log = logging.getLogger(__name__)

_REFRESH_S = 5.0  # how often the Ray node list is read
_READY_TIMEOUT_S = 10.0
_REAP_TIMEOUT_S = 120.0
_LEASE_GRACE_S = 60.0  # a lease held this long past its sandbox's TTL is taken back
_reap_task: Any = None


def _reaper() -> Any:
    global _reap_task
    if _reap_task is None:
        from harbor_ray.reaper import reap_with_config

        _reap_task = ray.remote(reap_with_config)
    return _reap_task


class Upkeep:
    def __init__(self, core: PoolCore) -> None:
        self.core = core
        self.cfg = core.config
        self._loop_task: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None
        self._reaping: asyncio.Task[list[str]] | None = None
        self._last_refresh = self._last_health = self._last_reap = time.monotonic()
        self._last_reap = float("-inf")  # reap once at pool start
        self._nodes: set[str] | None = None
        self._backoff: dict[SandboxSpec, tuple[int, float]] = {}  # key -> (failures in a row, retry after)

    def start(self) -> None:
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
        now = time.monotonic()
        if now - self._last_refresh >= _REFRESH_S:
            self._last_refresh = now
            await self.refresh_hosts()
        if self.cfg.health_interval_s and now - self._last_health >= self.cfg.health_interval_s:
            self._check_health_soon()
        if (self.cfg.reap_interval_s or self._last_reap < 0) and now - self._last_reap >= self.cfg.reap_interval_s:
            if self._reaping is None or self._reaping.done():
                self._last_reap = now
                self._reaping = asyncio.get_running_loop().create_task(self.reap())
        self._expire(now)
        if not self.core.waiters and not self.core.closed:
            self._fill(now)
        self._gauges()

    # -- hosts and nodes ---------------------------------------------------------------------------

    async def refresh_hosts(self) -> None:
        core = self.core
        nodes = await asyncio.to_thread(ray.nodes)
        if core.dynamic_hosts:
            fresh = {h.name: h for h in node_hosts(core.backend_config, self.cfg, nodes)}
            for name, host in fresh.items():
                core.hosts.setdefault(name, host)
            for name, host in list(core.hosts.items()):
                self._set_alive(host, name in fresh)
                if not host.alive and host.used == 0:
                    del core.hosts[name]
        else:
            for host in core.hosts.values():
                self._set_alive(host, has_node(host, self.cfg, nodes))
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        if self._nodes is not None and self._nodes - alive:
            log.warning("pool %s: %d Ray node(s) left; checking sandboxes now", self.cfg.name, len(self._nodes - alive))
            self._check_health_soon()
        self._nodes = alive
        core.wake()

    def _set_alive(self, host: Host, alive: bool) -> None:
        if host.alive and not alive:
            log.warning(
                "host %s: no alive Ray node can run its sandboxes; dropping its idle actors and warm sandboxes",
                host.name,
            )
            for actor in host.idle:
                ray.kill(actor, no_restart=True)
                host.used -= 1
            host.idle.clear()
            for queue in self.core.warm.values():
                for entry in [e for e in queue if e.host is host]:
                    queue.remove(entry)
                    self.core.spawn(self.core.discard(entry))
            host.lost.set()
        elif alive and not host.alive:
            log.info("host %s: a Ray node for its sandboxes is back", host.name)
            host.lost = asyncio.Event()
        host.alive = alive

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
        entries = [e for q in core.warm.values() for e in q]
        oks = await asyncio.gather(*(core.healthy(e) for e in entries))
        for entry, ok in zip(entries, oks, strict=True):
            queue = core.warm.get(entry.key)
            if not ok and queue is not None and entry in queue:
                queue.remove(entry)
                core.metrics.count("replaced")
                core.metrics.failure("UnhealthyWarmSandbox")
                log.info("warm sandbox %s failed its health check; replacing it", entry.sandbox.handle.name)
                core.spawn(core.discard(entry))
        idle = [(h, a) for h in core.hosts.values() for a in h.idle]
        results = await asyncio.gather(
            *(asyncio.wait_for(actor_call(a.ready.remote(), "ready"), _READY_TIMEOUT_S) for _, a in idle),
            return_exceptions=True,
        )
        for (host, actor), result in zip(idle, results, strict=True):
            if isinstance(result, BaseException) and actor in host.idle:
                host.idle.remove(actor)
                ray.kill(actor, no_restart=True)
                core.free(host)
                core.metrics.failure("IdleActorLost")
        core.wake()

    def _expire(self, now: float) -> None:
        core = self.core
        for key, queue in core.warm.items():
            # A warm sandbox's PID 1 lives ttl_s; hand out only ones with at least half of it left.
            while queue and now - queue[0].started > key.ttl_s / 2:
                core.metrics.count("expired")
                core.spawn(core.discard(queue.popleft()))
        for lease_id, entry in list(core.leases.items()):
            if now - entry.started > entry.key.ttl_s + _LEASE_GRACE_S:
                log.warning("lease %s held past its sandbox's TTL (%ss); taking it back", lease_id, entry.key.ttl_s)
                core.metrics.count("expired")
                core.spawn(core.release(lease_id))

    # -- refills -------------------------------------------------------------------------------------

    def _fill(self, now: float) -> None:
        core = self.core
        hosts = list(core.hosts.values())
        keys = list(dict.fromkeys([*core.seen, *(k for k, n in core.credits.items() if n)]))
        for key in keys:
            failures, after = self._backoff.get(key, (0, 0.0))
            if after > now or key in core.warm_errors:
                continue
            need = core.target(key) - len(core.warm.get(key, ())) - core.warm_starting[key]
            while need > 0:
                host = pick(hosts, room_total=core.used() < self.cfg.max_sandboxes)
                if host is None or not host.circuit.allow():
                    return
                actor = host.idle.pop() if host.idle else None
                if actor is None:
                    host.used += 1
                core.warm_starting[key] += 1
                core.spawn(self._warm_one(host, key, actor))
                need -= 1
        need = self.cfg.prestart_actors - sum(len(h.idle) for h in hosts) - core.idle_starting
        while need > 0:
            host = pick(hosts, room_total=core.used() < self.cfg.max_sandboxes, new_only=True)
            if host is None or not host.circuit.allow():
                return
            host.used += 1
            core.idle_starting += 1
            core.spawn(self._prestart(host))
            need -= 1

    async def _warm_one(self, host: Host, key: SandboxSpec, actor: Any) -> None:
        core = self.core
        try:
            entry: Entry = await core.start_on(host, key, actor)
        except ImageBuildError as e:
            core.warm_errors[key] = str(e)
            log.warning("not keeping %s warm: %s", key.build_context, e)
        except Exception as e:
            failures = self._backoff.get(key, (0, 0.0))[0] + 1
            self._backoff[key] = (failures, time.monotonic() + min(60.0, 2.0**failures))
            log.info("warm start for %s failed (%d in a row): %s", key.image or key.build_context, failures, e)
            if failures > self.cfg.start_retries:
                core.warm_errors[key] = str(e)
        else:
            self._backoff.pop(key, None)
            if core.closed or not host.alive:
                await core.discard(entry)
            else:
                core.warm.setdefault(key, deque()).append(entry)
                core.metrics.count("warmed")
        finally:
            core.warm_starting[key] -= 1
            core.wake()

    async def _prestart(self, host: Host) -> None:
        core = self.core
        options = actor_options(host, self.cfg, core.actor_options)
        actor = actor_class(**options).remote(host.backend_config, core.output_limit_bytes)
        try:
            await asyncio.wait_for(actor_call(actor.ready.remote(), "ready"), self.cfg.start_timeout_s)
        except BaseException as e:
            ray.kill(actor, no_restart=True)
            core.free(host)
            if not isinstance(e, Exception):
                raise
            host.circuit.failure(e)
            core.metrics.failure(e)
            log.info("idle actor on %s did not come up: %s", host.name, e)
        else:
            if core.closed or not host.alive:
                ray.kill(actor, no_restart=True)
                core.free(host)
            else:
                host.idle.append(actor)
                host.circuit.success()
                core.metrics.count("actors_prestarted")
        finally:
            core.idle_starting -= 1
            core.wake()

    # -- reaper and gauges ---------------------------------------------------------------------------

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

    def _gauges(self) -> None:
        core = self.core
        warm = sum(len(q) for q in core.warm.values())
        core.metrics.gauges(
            alive=warm + len(core.leases),
            warm=warm,
            leased=len(core.leases),
            idle_actors=sum(len(h.idle) for h in core.hosts.values()),
            starting=sum(core.warm_starting.values()) + core.idle_starting,
        )
