"""The pool's numbers: Ray metrics (`ray.util.metrics`) for dashboards, and the counters behind `stats()`.

Ray metrics exported (tag `pool` on all; Ray's Prometheus endpoint names them with a `ray_` prefix, counters with
a `_total` suffix, see docs/pool.md and `harbor_ray.ops.metrics`):
- `harbor_ray_sandboxes` gauge, tag `state` = alive | warm | leased | idle_actors | starting
- `harbor_ray_sandbox_starts` counter, tag `host`; `harbor_ray_sandbox_failures` counter, tags `host` and `kind`
  (error class)
- `harbor_ray_sandbox_start_seconds` histogram, tag `host`; `harbor_ray_lease_wait_seconds` histogram
- `harbor_ray_host_sandboxes` gauge, tags `host` and `state` = slots | used | idle_actors (slots taken, idle
  actors among them); `harbor_ray_host_available` gauge, tag `host`: 1 while the host can take a creation (its
  Ray node is there and its circuit breaker is not open), else 0
The pool's process exports them, so they are read from the metrics endpoint of the Ray node the pool runs on.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_BOUNDARIES = [0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300]
_WINDOW = 1000  # recent samples kept for the percentiles in stats()
COUNTERS = (
    "leases",
    "released",
    "started",
    "warmed",
    "warm_hits",
    "replaced",
    "evicted",
    "expired",
    "builds",
    "actors_prestarted",
    "reaped",
)


class PoolMetrics:
    """Counters and latency windows of one pool, mirrored to Ray metrics when Ray can take them."""

    def __init__(self, pool: str) -> None:
        self.pool = pool
        self.counts: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.start_s: deque[float] = deque(maxlen=_WINDOW)
        self.wait_s: deque[float] = deque(maxlen=_WINDOW)
        self._ray: dict[str, Callable[..., None]] = {}  # name -> the metric's record method (inc/observe/set)
        try:
            from ray.util import metrics

            tags = ("pool",)
            self._ray = {
                "sandboxes": metrics.Gauge(
                    "harbor_ray_sandboxes", "Sandboxes of the pool by state", tag_keys=("pool", "state")
                ).set,
                "starts": metrics.Counter(
                    "harbor_ray_sandbox_starts", "Sandboxes started", tag_keys=("pool", "host")
                ).inc,
                "failures": metrics.Counter(
                    "harbor_ray_sandbox_failures",
                    "Sandbox failures by host and error class",
                    tag_keys=("pool", "host", "kind"),
                ).inc,
                "start_s": metrics.Histogram(
                    "harbor_ray_sandbox_start_seconds",
                    "Sandbox start latency",
                    boundaries=_BOUNDARIES,
                    tag_keys=("pool", "host"),
                ).observe,
                "wait_s": metrics.Histogram(
                    "harbor_ray_lease_wait_seconds",
                    "Time a lease waited for its sandbox",
                    boundaries=_BOUNDARIES,
                    tag_keys=tags,
                ).observe,
                "host_sandboxes": metrics.Gauge(
                    "harbor_ray_host_sandboxes", "Slots of each host and their use", tag_keys=("pool", "host", "state")
                ).set,
                "host_available": metrics.Gauge(
                    "harbor_ray_host_available", "1 while a host can take a creation, else 0", tag_keys=("pool", "host")
                ).set,
            }
        except Exception as e:  # metrics are optional: never let them break the pool
            log.debug("Ray metrics unavailable: %s", e)

    def _emit(self, name: str, value: float, **tags: str) -> None:
        record = self._ray.get(name)
        if record is not None:
            try:
                record(value, tags={"pool": self.pool, **tags})
            except Exception as e:
                log.debug("metric %s: %s", name, e)

    def count(self, what: str, n: int = 1) -> None:
        self.counts[what] += n

    def started(self, seconds: float, host: str = "") -> None:
        self.counts["started"] += 1
        self.start_s.append(seconds)
        self._emit("starts", 1, host=host)
        self._emit("start_s", seconds, host=host)

    def waited(self, seconds: float) -> None:
        self.wait_s.append(seconds)
        self._emit("wait_s", seconds)

    def failure(self, error: BaseException | str, host: str = "") -> None:
        kind = error if isinstance(error, str) else type(error).__name__
        self.failures[kind] += 1
        self._emit("failures", 1, host=host, kind=kind)

    def gauges(self, **states: int) -> None:
        for state, value in states.items():
            self._emit("sandboxes", value, state=state)

    def host(self, name: str, *, slots: int, used: int, idle_actors: int, available: bool) -> None:
        """One host's gauges (each upkeep tick, for every host the pool knows)."""
        for state, value in (("slots", slots), ("used", used), ("idle_actors", idle_actors)):
            self._emit("host_sandboxes", value, host=name, state=state)
        self._emit("host_available", 1 if available else 0, host=name)

    def summary(self) -> dict[str, Any]:
        return {
            **{name: self.counts[name] for name in COUNTERS},
            **dict(self.counts),
            "failures": dict(self.failures),
            "start_p50_ms": _ms(self.start_s, 50),
            "start_p99_ms": _ms(self.start_s, 99),
            "lease_wait_p50_ms": _ms(self.wait_s, 50),
            "lease_wait_p99_ms": _ms(self.wait_s, 99),
        }


def _ms(samples: deque[float], pct: int) -> float | None:
    if not samples:
        return None
    if len(samples) == 1:
        return round(samples[0] * 1000, 1)
    return round(statistics.quantiles(samples, n=100, method="inclusive")[pct - 1] * 1000, 1)
