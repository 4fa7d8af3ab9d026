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
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

from harbor_ray import labels as L
from harbor_ray.circuit import CircuitBreaker
from harbor_ray.errors import ConfigError

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


def check_pool_config(cfg: Any) -> None:
    """Numbers of `pool.*` that must be positive (or not negative); the error names the key."""
    positive = {
        "max_sandboxes": cfg.max_sandboxes,
        "max_concurrent_creates": cfg.max_concurrent_creates,
        "start_timeout_s": cfg.start_timeout_s,
        "circuit_failures": cfg.circuit_failures,
    }
    for key, value in positive.items():
        if value <= 0:
            msg = f"pool.{key}={value}: must be greater than 0"
            raise ConfigError(msg)
    never_negative = {
        "warm_per_image": cfg.warm_per_image,
        "start_retries": cfg.start_retries,
        "prestart_actors": cfg.prestart_actors,
        "actor_cpus": cfg.actor_cpus,
        "circuit_reset_s": cfg.circuit_reset_s,
        "health_interval_s": cfg.health_interval_s,
        "reap_interval_s": cfg.reap_interval_s,
    }
    for key, value in never_negative.items():
        if value < 0:
            msg = f"pool.{key}={value}: must be 0 or more"
            raise ConfigError(msg)


def is_local_docker(backend_config: Any) -> bool:
    host = str(getattr(backend_config, "host", "") or "")
    return getattr(backend_config, "kind", "") == "docker" and (not host or host.startswith("unix://"))


def _new_host(
    name: str,
    backend_config: Any,
    slots: int,
    selector: dict[str, str],
    spread: bool,
    cfg: Any,
    max_creates: int | None = None,
) -> Host:
    creates = max_creates or int(getattr(backend_config, "max_concurrent_creates", 0) or cfg.max_concurrent_creates)
    return Host(
        name,
        backend_config,
        max(1, int(slots)),
        dict(selector),
        spread,
        creates,
        CircuitBreaker(name, threshold=cfg.circuit_failures, reset_s=cfg.circuit_reset_s),
    )


def configured_hosts(backend_config: Any, cfg: Any, *, pool_node_id: str) -> list[Host]:
    """Hosts from `pool.hosts`, or the single default host; [] means one host per node (see `node_hosts`)."""
    default_slots = int(getattr(backend_config, "slots", 0) or cfg.max_sandboxes)
    if cfg.hosts:  # None or [] -> the defaults below
        if getattr(backend_config, "kind", "") == "k8s":
            msg = "pool.hosts: applies to Docker daemons; for Kubernetes use backend.node_selector and quota"
            raise ConfigError(msg)
        return [
            _from_entry(i, entry, backend_config, cfg, default_slots, pool_node_id) for i, entry in enumerate(cfg.hosts)
        ]
    if getattr(backend_config, "kind", "") == "k8s":
        name = f"k8s:{getattr(backend_config, 'namespace', 'default')}"
        return [_new_host(name, backend_config, cfg.max_sandboxes, dict(cfg.node_labels or {}), True, cfg)]
    if not is_local_docker(backend_config):
        from harbor_ray.backends.docker_host import check_docker_host

        url = check_docker_host(backend_config).url
        return [_new_host(url, backend_config, default_slots, dict(cfg.node_labels or {}), True, cfg)]
    if cfg.sandbox_resource:
        return []  # one host per node offering the resource, found at run time
    return [_new_host("local", backend_config, default_slots, {NODE_ID_LABEL: pool_node_id}, False, cfg)]


def _from_entry(i: int, entry: Any, backend_config: Any, cfg: Any, default_slots: int, pool_node_id: str) -> Host:
    where = f"pool.hosts[{i}]"
    if not isinstance(entry, dict):
        msg = f"{where}: must be a mapping like {{name: a, node_labels: {{rack: a}}, slots: 8}}"
        raise ConfigError(msg)
    unknown = set(entry) - _HOST_KEYS
    if unknown:
        msg = f"{where}.{sorted(unknown)[0]}: unknown key; known keys: {', '.join(sorted(_HOST_KEYS))}"
        raise ConfigError(msg)
    url = str(entry.get("url") or "")
    labels = entry.get("node_labels") or {}
    if not isinstance(labels, dict):
        msg = f"{where}.node_labels: must be a mapping of Ray node label to value"
        raise ConfigError(msg)
    slots = entry.get("slots") or default_slots
    if not isinstance(slots, int) or slots <= 0:
        msg = f"{where}.slots={slots!r}: must be a whole number greater than 0"
        raise ConfigError(msg)
    if url and not url.startswith("unix://"):
        from harbor_ray.backends.docker_host import check_docker_host

        config = dataclasses.replace(backend_config, kind="docker_remote", host=url)
        url = check_docker_host(config).url
        name = str(entry.get("name") or url)
        return _new_host(
            name,
            config,
            slots,
            {str(k): str(v) for k, v in labels.items()} or dict(cfg.node_labels or {}),
            True,
            cfg,
            entry.get("max_concurrent_creates"),
        )
    config = dataclasses.replace(backend_config, host=url) if url else backend_config
    selector = {str(k): str(v) for k, v in labels.items()} or {NODE_ID_LABEL: pool_node_id}
    name = str(entry.get("name") or ",".join(f"{k}={v}" for k, v in selector.items()))
    return _new_host(name, config, slots, selector, False, cfg, entry.get("max_concurrent_creates"))


def node_hosts(backend_config: Any, cfg: Any, nodes: list[dict[str, Any]]) -> list[Host]:
    """One host per alive node offering `pool.sandbox_resource` (a local daemon on every such node)."""
    default_slots = int(getattr(backend_config, "slots", 0) or cfg.max_sandboxes)
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


def has_node(host: Host, cfg: Any, nodes: list[dict[str, Any]]) -> bool:
    """Is any alive Ray node able to run this host's actors?"""
    return any(_matches(node, host.selector, cfg.sandbox_resource) for node in nodes)


def actor_options(host: Host, cfg: Any, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Ray options for a sandbox actor on `host` (pass them to `harbor_ray.actor.actor_class`)."""
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


def bundle(cfg: Any, host: Host) -> tuple[dict[str, float], dict[str, str]]:
    """A placement-group bundle (and its label selector) for one sandbox actor on `host`."""
    resources = {cfg.sandbox_resource: 1.0} if cfg.sandbox_resource else {"CPU": 0.001}
    return resources, (dict(host.selector) if not host.spread else dict(dict(cfg.node_labels or {})))
