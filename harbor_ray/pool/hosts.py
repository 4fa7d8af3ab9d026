"""Where sandbox actors go: the hosts (Docker daemons, or one Kubernetes namespace), their slots, Ray options.

A *host* is one place sandboxes are created, with a number of slots the pool never exceeds:

- a Docker daemon local to a Ray node: its actors are pinned to that node by a label selector
  (`pool.hosts[i].node_labels`, or the node's own `ray.io/node-id`), because the container lives
  where the daemon is;
- a remote Docker daemon (`tcp://…:2376`) or the Kubernetes API: actors SPREAD over the allowed nodes.

Without `pool.hosts`, a local daemon means one host per Ray node that offers `pool.sandbox_resource`
(or, without that resource, the pool's own node). Every sandbox actor asks for `pool.actor_cpus`
(0 by default), no GPU, and one unit of `pool.sandbox_resource` when set, so it never lands in the
trainer's GPU placement-group bundles.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.base import BackendSettings
from harbor_ray.config import PoolConfig, check_section
from harbor_ray.errors import ConfigError, HarborRayError, SandboxStartError
from harbor_ray.pool.circuit import CircuitBreaker

log = logging.getLogger(__name__)

HOST_LABEL = L.HOST
NODE_ID_LABEL = "ray.io/node-id"  # a label every Ray node carries
_HOST_KEYS = {"name", "url", "node_labels", "slots", "max_concurrent_creates"}


@dataclass(eq=False)
class Host:
    """One place sandboxes are created, with its slots and what is using them.

    `used` counts every slot taken on the host: idle actors, sandboxes starting, warm and leased.
    """

    name: str
    backend_config: Any
    slots: int
    selector: dict[str, str]  # node labels its actors require; {} = any node
    spread: bool  # SPREAD over the allowed nodes (remote daemon, Kubernetes)
    max_creates: int = 4
    circuit: CircuitBreaker = field(default_factory=lambda: CircuitBreaker("?"))
    used: int = 0
    idle: list[Any] = field(default_factory=list)  # started actors with no sandbox yet
    alive: bool = True
    creating: asyncio.Semaphore = field(init=False, repr=False)
    lost: asyncio.Event = field(init=False, repr=False)  # set while no Ray node can run its actors

    def __post_init__(self) -> None:
        self.creating = asyncio.Semaphore(self.max_creates)
        self.lost = asyncio.Event()
        if self.circuit.host == "?":
            self.circuit.host = self.name

    @property
    def load(self) -> float:
        """Share of the slots doing work (idle actors are spare capacity)."""
        return (self.used - len(self.idle)) / self.slots

    def summary(self) -> dict[str, Any]:
        return {
            "slots": self.slots,
            "used": self.used,
            "idle_actors": len(self.idle),
            "alive": self.alive,
            "circuit": self.circuit.summary(),
        }


def _new_host(
    name: str,
    backend_config: Any,
    slots: int,
    selector: dict[str, str],
    spread: bool,
    cfg: PoolConfig,
    max_creates: int | None = None,
) -> Host:
    creates = max_creates or backend_config.max_concurrent_creates or cfg.max_concurrent_creates
    return Host(
        name,
        backend_config,
        max(1, int(slots)),
        dict(selector),
        spread,
        creates,
        CircuitBreaker(name, threshold=cfg.circuit_failures, reset_s=cfg.circuit_reset_s),
    )


def configured_hosts(backend_config: BackendSettings, cfg: PoolConfig, *, pool_node_id: str) -> list[Host]:
    """Hosts from `pool.hosts`, or the single default host; [] means one host per node (see `node_hosts`)."""
    default_slots = backend_config.slots or cfg.max_sandboxes
    if cfg.hosts:  # None or [] -> the defaults below
        if not backend_config.supports_hosts:
            msg = f"pool.hosts: applies to Docker daemons; for backend.kind={backend_config.kind} use its own placement"
            raise ConfigError(msg)
        return [
            _from_entry(i, entry, backend_config, cfg, default_slots, pool_node_id) for i, entry in enumerate(cfg.hosts)
        ]
    name = backend_config.host_name()
    if name is not None:  # one shared endpoint (a remote daemon, a cluster's API): actors spread over nodes
        return [_new_host(name, backend_config, default_slots, dict(cfg.node_labels or {}), True, cfg)]
    if cfg.sandbox_resource:
        return []  # one host per node offering the resource, found at run time
    return [_new_host("local", backend_config, default_slots, {NODE_ID_LABEL: pool_node_id}, False, cfg)]


def _from_entry(
    i: int, entry: Any, backend_config: Any, cfg: PoolConfig, default_slots: int, pool_node_id: str
) -> Host:
    where = f"pool.hosts[{i}]"
    entry = check_section(entry, where, _HOST_KEYS, "{name: a, node_labels: {rack: a}, slots: 8}")
    url = str(entry.get("url") or "")
    labels = entry.get("node_labels") or {}
    if not isinstance(labels, dict):
        msg = f"{where}.node_labels: must be a mapping of Ray node label to value"
        raise ConfigError(msg)
    slots = entry.get("slots") or default_slots
    if not isinstance(slots, int) or slots <= 0:
        msg = f"{where}.slots={slots!r}: must be a whole number greater than 0"
        raise ConfigError(msg)
    config = backend_config.at_url(url) if url else backend_config
    creates = entry.get("max_concurrent_creates")
    shared = config.host_name()
    if shared is not None:  # a remote daemon: its actors spread over the allowed nodes
        selector = {str(k): str(v) for k, v in labels.items()} or dict(cfg.node_labels or {})
        return _new_host(str(entry.get("name") or shared), config, slots, selector, True, cfg, creates)
    selector = {str(k): str(v) for k, v in labels.items()} or {NODE_ID_LABEL: pool_node_id}
    name = str(entry.get("name") or ",".join(f"{k}={v}" for k, v in selector.items()))
    return _new_host(name, config, slots, selector, False, cfg, creates)


def node_hosts(backend_config: BackendSettings, cfg: PoolConfig, nodes: list[dict[str, Any]]) -> list[Host]:
    """One host per alive node offering `pool.sandbox_resource` (a local daemon on every such node)."""
    default_slots = backend_config.slots or cfg.max_sandboxes
    hosts = []
    for node in nodes:
        amount = node.get("Resources", {}).get(cfg.sandbox_resource, 0)
        if node.get("Alive") and amount >= 1:
            node_id = node["NodeID"]
            slots = min(default_slots, int(amount))
            hosts.append(_new_host(f"node-{node_id[:12]}", backend_config, slots, {NODE_ID_LABEL: node_id}, False, cfg))
    return hosts


def _matches(node: dict[str, Any], selector: dict[str, str], resource: str) -> bool:
    if not node.get("Alive"):
        return False
    if resource and node.get("Resources", {}).get(resource, 0) < 1:
        return False
    labels = {**(node.get("Labels") or {}), NODE_ID_LABEL: node.get("NodeID", "")}
    for key, value in selector.items():
        if value.startswith(("!", "in(", "!in(")):
            continue  # an operator expression: let Ray decide
        if labels.get(key) != value:
            return False
    return True


def has_node(host: Host, cfg: PoolConfig, nodes: list[dict[str, Any]]) -> bool:
    """Is any alive Ray node able to run this host's actors?"""
    return any(_matches(node, host.selector, cfg.sandbox_resource) for node in nodes)


def actor_options(host: Host, cfg: PoolConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ray options for a sandbox actor on `host` (pass them to `harbor_ray.sandbox.actor_class`)."""
    options: dict[str, Any] = {"num_cpus": cfg.actor_cpus}
    if cfg.sandbox_resource:
        options["resources"] = {cfg.sandbox_resource: 1}
    if host.selector:
        options["label_selector"] = dict(host.selector)
    if host.spread:
        options["scheduling_strategy"] = "SPREAD"
    options.update(extra or {})
    return options


def task_options(host: Host) -> dict[str, Any]:
    """Ray options for a short helper task that must reach the host's daemon (no slot taken)."""
    options: dict[str, Any] = {"num_cpus": 0}
    if host.selector and not host.spread:
        options["label_selector"] = dict(host.selector)
    return options


def pick(hosts: list[Host], *, room_total: bool, avoid: set[str] | None = None, new_only: bool = False) -> Host | None:
    """The least-loaded host that can take one more sandbox now (an idle actor or a free slot), or None.

    `room_total` says whether the pool-wide bound leaves room for a new slot; `new_only` ignores idle actors
    (a placement-group bundle needs an actor of its own).
    """
    candidates = [
        h
        for h in hosts
        if h.alive and h.circuit.available() and ((h.idle and not new_only) or (room_total and h.used < h.slots))
    ]
    if not candidates:
        return None
    preferred = [h for h in candidates if h.name not in (avoid or set())] or candidates
    return min(preferred, key=lambda h: (h.load, not h.idle, h.name))


def hopeless(hosts: list[Host], cfg: PoolConfig, deadline: float) -> HarborRayError | None:
    """Why a waiting lease should fail now: every live host's circuit is open (the one that reopens first
    says so), or no host has had a Ray node until `deadline`; None while waiting can still help."""
    live = [h for h in hosts if h.alive]
    if live and all(h.circuit.state == "open" for h in live):
        return min((h.circuit for h in live), key=lambda c: c.opened_at or 0.0).error()
    if not live and time.monotonic() > deadline:
        what = f"resource {cfg.sandbox_resource!r}" if cfg.sandbox_resource else "its labels"
        msg = f"pool {cfg.name}: no alive Ray node can run sandboxes (none offers {what}); add one"
        return SandboxStartError(msg)
    return None


def bundle(cfg: PoolConfig, host: Host) -> tuple[dict[str, float], dict[str, str]]:
    """A placement-group bundle (and its label selector) for one sandbox actor on `host`."""
    resources = {cfg.sandbox_resource: 1.0} if cfg.sandbox_resource else {"CPU": 0.001}
    return resources, (dict(host.selector) if not host.spread else dict(cfg.node_labels or {}))
