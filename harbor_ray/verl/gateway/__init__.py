"""The token-faithful model gateway: agents' OpenAI/Anthropic calls -> verl's `server_manager.generate`.

`server` is the HTTP server (one per agent-loop worker process, started lazily by the first trial:
`process_gateway`), `openai_api` / `anthropic_api` the two protocols, `engine` one call, `session` a trial's
conversations and the rewrite policy, `conversation` one conversation's token record (lineage, retries,
limits), `messages` the canonical chat form, `render` verl's renderer and tool parser.
"""

from __future__ import annotations

import asyncio
import weakref

from harbor_ray.verl.gateway.render import backend_for
from harbor_ray.verl.gateway.server import Gateway
from harbor_ray.verl.gateway.session import Backend, Record, RewritePolicy, Session

__all__ = ["Backend", "Gateway", "Record", "RewritePolicy", "Session", "backend_for", "process_gateway"]

_GATEWAYS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Task[Gateway]]] = (
    weakref.WeakKeyDictionary()
)


async def process_gateway(host: str) -> Gateway:
    """This process's gateway on `host` (an ephemeral port), started by the first caller of this event loop."""
    per_loop = _GATEWAYS.setdefault(asyncio.get_running_loop(), {})
    task = per_loop.get(host)
    if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
        task = per_loop[host] = asyncio.ensure_future(Gateway.start(host))
    return await asyncio.shield(task)
