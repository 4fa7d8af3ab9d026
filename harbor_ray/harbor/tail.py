"""Tail kill: end a batch's stragglers once enough of it is done (the seed system's `tail_kill_*`).

With `target < 1`, once at least `min_tasks` items of a batch of `total` have finished and the fraction
`target` of it is done, the items still running `grace_s` later are cancelled. It knows nothing of Harbor,
Ray or verl; the batch runner and the verl agent loops use it the same way:

    tail = TailKill(total=len(batch), target=0.9, grace_s=60, min_tasks=1)

    async def one(item):
        try:
            result = await tail.run(work(item))   # work's own cleanup runs when it is cancelled
        except TailKilled:
            result = ...                            # record it as Reason.TAIL_KILLED, mask the sample
        finally:
            tail.finished()                         # once per item, after its last try

`TailKill.run(awaitable)` runs the awaitable as a task and returns its result, or, when the grace ran out
first, cancels that task, waits until it has finished cleaning up, and raises `TailKilled`. An item waiting
for a slot is ended just the same (wrap the wait too). If the caller is cancelled meanwhile (Ctrl-C), the
task is cancelled and awaited before the cancellation goes on. `finished()` counts one item as done;
`grace_ends_at` is the loop time when stragglers are ended (None before the target is met, or never).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

__all__ = ["TailKill", "TailKilled"]


class TailKilled(Exception):
    """The item was still running when the batch's tail-kill grace ended; it was cancelled."""


class TailKill:
    """Tracks one batch: `finished()` per item; `run()` ends what is still running after the grace.

    Args:
        total: items in the batch.
        target: the fraction that must finish before the grace starts; 1.0 (or more) turns tail kill off.
        grace_s: how long stragglers get once the target is met.
        min_tasks: the grace never starts before this many items finished.

    >>> TailKill(total=10, target=0.8, grace_s=5, min_tasks=3).needed
    8
    """

    def __init__(self, total: int, *, target: float, grace_s: float, min_tasks: int = 1) -> None:
        self.total = total
        self.target = target
        self.min_tasks = min_tasks
        self.grace_s = grace_s
        self.done = 0
        self.grace_ends_at: float | None = None
        self._grace_over = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def enabled(self) -> bool:
        return self.target < 1 and self.total > 0

    @property
    def needed(self) -> int:
        """Items that must finish before the grace starts (more than the batch when tail kill is off)."""
        return max(self.min_tasks, math.ceil(self.target * self.total)) if self.enabled else self.total + 1

    def add(self) -> None:
        """One more item joins the batch (for batches whose size is learnt as their items start)."""
        self.total += 1

    @property
    def grace_over(self) -> bool:
        return self._grace_over.is_set()

    def finished(self) -> None:
        """One item of the batch ended (after its last try); may start the stragglers' grace."""
        self.done += 1
        if self.grace_ends_at is None and self.done >= self.needed and self.done < self.total:
            loop = asyncio.get_running_loop()
            self.grace_ends_at = loop.time() + self.grace_s
            self._timer = loop.call_at(self.grace_ends_at, self._grace_over.set)

    async def run(self, awaitable: Awaitable[T]) -> T:
        """The awaitable's result, or TailKilled once it was cancelled for running past the grace."""
        task = asyncio.ensure_future(awaitable)
        if not self.enabled:
            return await task
        waiter = asyncio.ensure_future(self._grace_over.wait())
        try:
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiter.cancel()
            task.cancel()
            await asyncio.wait({task})  # let its cleanup finish before the cancellation goes on
            raise
        waiter.cancel()
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            return task.result()  # it finished on its own while being cancelled
        msg = f"still running {self.grace_s:g}s after {self.done} of {self.total} finished"
        raise TailKilled(msg)

    def close(self) -> None:
        """Drop the pending timer (the batch is over)."""
        if self._timer is not None:
            self._timer.cancel()
