"""Tail kill inside verl: the samples an AgentLoopWorker starts together form one `TailKill` batch.

verl builds one agent loop per sample and tells it nothing of its batch. `AgentLoopWorker.generate_sequences`
creates every sample's task at once, so their loops' `run()` all begin in one turn of the event loop, before
any of them awaits: the first to start opens a batch, the event loop's next turn closes it, and each loop that
joins in between counts toward its total. A batch is therefore one worker's share of verl's batch (verl splits
a step's batch across its agent-loop workers), and tail kill acts per worker. `join` must be the first thing a
loop's `run()` does, before its first await.
"""

from __future__ import annotations

import asyncio

from harbor_ray.config import Config
from harbor_ray.harbor.tail import TailKill

_open: dict[tuple[float, float, int], TailKill] = {}


def join(cfg: Config) -> TailKill:
    """The batch this sample belongs to, by harbor_ray's `tail_kill_*` settings (target 1.0: never kills)."""
    key = (cfg.tail_kill_target, cfg.tail_kill_grace_s, cfg.tail_kill_min_tasks)
    tail = _open.get(key)
    if tail is None:
        tail = _open[key] = TailKill(0, target=key[0], grace_s=key[1], min_tasks=key[2])
        asyncio.get_running_loop().call_soon(_open.pop, key, None)
    tail.add()
    return tail
