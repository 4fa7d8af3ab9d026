"""A circuit breaker per host: stop creating sandboxes on a daemon that keeps failing, and say so.

Closed: creations go ahead. After `threshold` start failures in a row the circuit opens: the pool
sends no creation to that host for `reset_s` seconds and leases that would need it fail fast with
`CircuitOpen`. Then it is half-open: one trial creation goes ahead; its success closes the circuit,
its failure opens it again for another `reset_s`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harbor_ray.errors import CircuitOpen

log = logging.getLogger(__name__)


@dataclass
class CircuitBreaker:
    """Consecutive-failure breaker with one trial call when half-open.

    >>> breaker = CircuitBreaker("docker@10.0.0.5", threshold=2, reset_s=30)
    >>> breaker.failure("refused"); breaker.failure("refused"); breaker.state
    'open'
    """

    host: str
    threshold: int = 5
    reset_s: float = 30.0
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)
    failures: int = 0
    last_error: str = ""
    opened_at: float | None = None
    trial_in_flight: bool = False
    times_opened: int = 0

    @property
    def state(self) -> str:
        """closed, open or half_open."""
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at < self.reset_s:
            return "open"
        return "half_open"

    def available(self) -> bool:
        """Could a creation go to this host now (without taking the half-open trial)?"""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial_in_flight)

    def allow(self) -> bool:
        """Take permission for one creation; in the half-open state only one at a time gets it."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("host %s: a sandbox started again; circuit closed", self.host)
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def failure(self, error: object) -> None:
        self.failures += 1
        self.last_error = str(error)[:300]
        self.trial_in_flight = False
        if self.failures >= self.threshold:
            if self.state != "open":
                self.times_opened += 1
                log.warning(
                    "host %s: %d sandbox starts failed in a row (last: %s); pausing creations there for %gs",
                    self.host,
                    self.failures,
                    self.last_error,
                    self.reset_s,
                )
            self.opened_at = self.clock()

    def error(self) -> CircuitOpen:
        """The error a lease gets while this circuit is open."""
        left = 0.0 if self.opened_at is None else max(0.0, self.reset_s - (self.clock() - self.opened_at))
        msg = (
            f"host {self.host}: {self.failures} sandbox starts failed in a row (last: {self.last_error}); "
            f"creations there are paused for {left:.0f}s more"
        )
        return CircuitOpen(msg)

    def summary(self) -> dict[str, object]:
        return {
            "state": self.state,
            "failures": self.failures,
            "last_error": self.last_error,
            "times_opened": self.times_opened,
        }
