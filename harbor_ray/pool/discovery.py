"""Which Ray nodes can run the pool's sandboxes: the node table, read every few seconds, and host liveness.

Configured hosts (`pool.hosts`, or the one default host) stay, alive while some alive node matches their
labels (and offers `pool.sandbox_resource`). Without them, with a local daemon and a resource, there is one
host per node offering it, added as nodes join and removed once a gone node's host holds no slot.
A host that loses its node hands its idle actors and warm sandboxes to `on_lost`; its starts in flight
see `host.lost` and fail over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import ray

from harbor_ray.backends.base import BackendSettings
from harbor_ray.config import PoolConfig
from harbor_ray.pool.hosts import Host, configured_hosts, has_node, node_hosts

log = logging.getLogger(__name__)


class Discovery:
    """Keeps `hosts` (the pool's own dict, by name) in step with the Ray node table."""

    def __init__(
        self,
        backend_config: BackendSettings,
        config: PoolConfig,
        hosts: dict[str, Host],
        on_lost: Callable[[Host], None],
    ) -> None:
        self.backend_config = backend_config
        self.config = config
        self.hosts = hosts
        self._on_lost = on_lost
        self._dynamic = False  # one host per node offering pool.sandbox_resource
        self._nodes: set[str] | None = None

    async def start(self, pool_node_id: str) -> None:
        """The configured hosts (the default one pinned to `pool_node_id`), then a first read of the nodes."""
        hosts = configured_hosts(self.backend_config, self.config, pool_node_id=pool_node_id)
        self._dynamic = not hosts
        self.hosts.update({h.name: h for h in hosts})
        await self.refresh()

    async def refresh(self) -> bool:
        """Read the node table and update the hosts; True when a node left since the last read."""
        nodes = await asyncio.to_thread(ray.nodes)
        if self._dynamic:
            fresh = {h.name: h for h in node_hosts(self.backend_config, self.config, nodes)}
            for name, host in fresh.items():
                self.hosts.setdefault(name, host)
            for name, host in list(self.hosts.items()):
                self._set_alive(host, name in fresh)
                if not host.alive and host.used == 0:
                    del self.hosts[name]
        else:
            for host in self.hosts.values():
                self._set_alive(host, has_node(host, self.config, nodes))
        alive = {n["NodeID"] for n in nodes if n.get("Alive")}
        left = self._nodes - alive if self._nodes is not None else set()
        if left:
            log.warning("pool %s: %d Ray node(s) left; checking sandboxes now", self.config.name, len(left))
        self._nodes = alive
        return bool(left)

    def _set_alive(self, host: Host, alive: bool) -> None:
        if host.alive and not alive:
            log.warning(
                "host %s: no alive Ray node can run its sandboxes; dropping its idle actors and warm sandboxes",
                host.name,
            )
            self._on_lost(host)
            host.lost.set()
        elif alive and not host.alive:
            log.info("host %s: a Ray node for its sandboxes is back", host.name)
            host.lost = asyncio.Event()
        host.alive = alive
