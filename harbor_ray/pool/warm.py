"""Warm sandboxes: started ahead of leases, per spec, and never handed out dead.

Each warm sandbox is watched (its actor's `watch` returns when the container exits or is removed, and
fails when the actor dies), so a hand-out needs no round trip: a watched sandbox whose watch has not
fired is alive as far as anything can know. Where the backend cannot watch, the hand-out runs a health
check. A background check (`pool.health_interval_s`) still catches a sandbox that runs but stopped answering.

A spec is kept warm (`pool.warm_per_image`) once it has been leased recently, plus the credits
`prewarm(spec, n)` gave it. A warm sandbox past half its TTL is destroyed; at capacity with leases
waiting, the oldest warm sandbox of another spec is destroyed to free a slot. `WarmSet` changes none
of the pool's slots: it hands the sandboxes it drops to `drop`, which destroys them and frees theirs.
Only `PoolCore` calls it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from typing import Any

import ray

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.config import PoolConfig
from harbor_ray.errors import HarborRayError, ImageBuildError
from harbor_ray.pool.hosts import Host
from harbor_ray.pool.metrics import PoolMetrics
from harbor_ray.pool.starter import Entry

log = logging.getLogger(__name__)

_HEALTH_TIMEOUT_S = 30.0


async def healthy(entry: Entry) -> bool:
    """Does the sandbox still answer (a trivial exec), within a bound?"""
    try:
        return await asyncio.wait_for(entry.sandbox.health(), _HEALTH_TIMEOUT_S)
    except (TimeoutError, HarborRayError, ray.exceptions.RayError):
        return False


class WarmSet:
    """The warm sandboxes of one pool, oldest first per spec, and how many each spec should have."""

    def __init__(self, config: PoolConfig, metrics: PoolMetrics, drop: Callable[..., asyncio.Task[None]]) -> None:
        self.config = config
        self.metrics = metrics
        self._drop = drop
        self._queues: dict[SandboxSpec, deque[Entry]] = {}
        self.starting: Counter[SandboxSpec] = Counter()
        self._seen: OrderedDict[SandboxSpec, None] = OrderedDict()  # keys kept warm, most recent last
        self._credits: Counter[SandboxSpec] = Counter()  # prewarm(spec, n): sandboxes for upcoming leases
        self.errors: dict[SandboxSpec, str] = {}  # keys whose warm start failed (cleared by prewarm)
        self._backoff: dict[SandboxSpec, tuple[int, float]] = {}  # key -> (failures in a row, retry after)
        self._evicting = 0

    # -- what to keep ----------------------------------------------------------------------------------

    def note(self, key: SandboxSpec) -> None:
        """A lease of `key` begins: it uses up a credit and keeps the spec warm."""
        if self._credits[key]:
            self._credits[key] -= 1
        if self.config.warm_per_image:
            self._seen[key] = None
            self._seen.move_to_end(key)
            keep = max(1, self.config.max_sandboxes // self.config.warm_per_image)
            while len(self._seen) > keep:
                self._seen.popitem(last=False)

    def credit(self, key: SandboxSpec, n: int) -> None:
        self._credits[key] += n
        self.errors.pop(key, None)

    def wanted(self, now: float) -> Iterator[tuple[SandboxSpec, int]]:
        """(spec, how many more to start) for every spec below its target and not backing off."""
        for key in list(dict.fromkeys([*self._seen, *(k for k, n in self._credits.items() if n)])):
            if self._backoff.get(key, (0, 0.0))[1] > now or key in self.errors:
                continue
            target = (self.config.warm_per_image if key in self._seen else 0) + self._credits[key]
            need = target - self.count(key) - self.starting[key]
            if need > 0:
                yield key, need

    def start_failed(self, key: SandboxSpec, e: Exception) -> None:
        """A warm start failed: a build error stops refills of the spec, other errors back off."""
        if isinstance(e, ImageBuildError):
            self.errors[key] = str(e)
            log.warning("not keeping %s warm: %s", key.build_context, e)
            return
        failures = self._backoff.get(key, (0, 0.0))[0] + 1
        self._backoff[key] = (failures, time.monotonic() + min(60.0, 2.0**failures))
        log.info("warm start for %s failed (%d in a row): %s", key.image or key.build_context, failures, e)
        if failures > self.config.start_retries:
            self.errors[key] = str(e)

    def start_succeeded(self, key: SandboxSpec) -> None:
        self._backoff.pop(key, None)

    def add(self, entry: Entry) -> None:
        self._queues.setdefault(entry.key, deque()).append(entry)
        self.metrics.count("warmed")
        entry.watch = asyncio.ensure_future(entry.sandbox.watch())
        entry.watch.add_done_callback(lambda fut: self._watch_ended(entry, fut))

    def _watch_ended(self, entry: Entry, fut: asyncio.Future[str]) -> None:
        if fut.cancelled() or (fut.exception() is None and fut.result() == "unsupported"):
            return  # handed out (the watch is not needed any more), or the backend cannot watch
        if self._remove(entry):
            log.info("warm sandbox %s is gone; replacing it", entry.sandbox.handle.name)
            self._replace(entry)

    # -- hand-out and replacement ----------------------------------------------------------------------

    def count(self, key: SandboxSpec) -> int:
        return len(self._queues.get(key, ()))

    def entries(self) -> list[Entry]:
        return [e for q in self._queues.values() for e in q]

    def by_image(self) -> dict[str, int]:
        return {k.image or k.build_context or "?": len(q) for k, q in self._queues.items() if q}

    async def take(self, key: SandboxSpec) -> Entry | None:
        """The oldest warm sandbox of `key` that passes its health check; the others are replaced."""
        queue = self._queues.get(key)
        while queue:
            entry = queue.popleft()
            if entry.watch is not None and not entry.watch.done():
                entry.watch.cancel()  # alive: its watch would have ended (and removed it) otherwise
                self.metrics.count("warm_hits")
                return entry
            try:
                ok = await healthy(entry)
            except BaseException:
                queue.appendleft(entry)  # cancelled mid-check: the sandbox stays warm
                raise
            if ok:
                self.metrics.count("warm_hits")
                return entry
            self._replace(entry)
        return None

    async def check(self) -> None:
        """Replace every warm sandbox that stopped answering."""
        entries = self.entries()
        oks = await asyncio.gather(*(healthy(e) for e in entries))
        for entry, ok in zip(entries, oks, strict=True):
            if not ok and self._remove(entry):
                self._replace(entry)

    def _replace(self, entry: Entry) -> None:
        self.metrics.count("replaced")
        self.metrics.failure("UnhealthyWarmSandbox", entry.host.name)
        log.info("warm sandbox %s failed its health check; replacing it", entry.sandbox.handle.name)
        self._drop(entry, recycle=False)  # its actor may be what failed

    def _remove(self, entry: Entry) -> bool:
        queue = self._queues.get(entry.key)
        if queue is None or entry not in queue:
            return False
        queue.remove(entry)
        return True

    def evict_for(self, key: SandboxSpec) -> None:
        """Destroy the oldest warm sandbox of another spec (one at a time), so a lease of `key` gets its slot."""
        others = [(q[0].started, k) for k, q in self._queues.items() if q and k != key]
        if self._evicting or not others:
            return
        _, victim = min(others)
        self.metrics.count("evicted")
        self._evicting += 1
        self._drop(self._queues[victim].popleft()).add_done_callback(self._evicted)

    def _evicted(self, _: Any) -> None:
        self._evicting -= 1

    def expire(self, now: float) -> None:
        """A warm sandbox's PID 1 lives ttl_s; hand out only ones with at least half of it left."""
        for key, queue in self._queues.items():
            while queue and now - queue[0].started > key.ttl_s / 2:
                self.metrics.count("expired")
                self._drop(queue.popleft())

    def drop_host(self, host: Host) -> None:
        """The host's node is gone: destroy its warm sandboxes."""
        for entry in [e for e in self.entries() if e.host is host]:
            self._remove(entry)
            self._drop(entry)

    def drain(self) -> list[Entry]:
        """Every warm sandbox, taken out (at shutdown)."""
        entries = self.entries()
        self._queues.clear()
        return entries
