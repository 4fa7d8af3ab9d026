"""The "gateway only" network of one Docker sandbox: its own internal network, joined by the shared relays.

The network is `internal` (no route out) with `inhibit_ipv4` (the host has no address on it, so host services
on 0.0.0.0 stay out of reach) on a small subnet of its own, and holds only the sandbox (`.2`) and, at fixed
addresses after it, the relay of each endpoint (harbor_ray.backends.docker.relay: one per daemon, run and
target, shared by all sandboxes). The relays join in the background while the sandbox starts; after the start
`Egress.check` proves each relay runs there. On destroy the daemon is asked to take the relays off the
network while the sandbox's container goes, then to remove the network, neither waited for (`unplug`, `drop`).
A network whose sandbox is gone is swept by the next sweep (`sweep_networks`: the pool's reaper, a create a
minute later) and by `clean_networks` (`python -m harbor_ray clean`).
Why it is built this way: docs/network.md.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.docker.endpoint import first_line
from harbor_ray.backends.docker.relay import HOST_ALIAS, JOINED, Relays, relay_name
from harbor_ray.backends.egress import Endpoint
from harbor_ray.errors import ConfigError, SandboxStartError

log = logging.getLogger(__name__)

__all__ = [
    "HOST_ALIAS",
    "Egress",
    "Pending",
    "clean_networks",
    "create_egress",
    "drop",
    "drop_later",
    "removals_done",
    "host_address",
    "remove_container",
    "remove_egress",
    "send",
    "sweep_networks",
    "unplug",
]

# Subnets are ours to pick: with inhibit_ipv4 the host gets no address or route on them, so they cannot clash
# with the host's networks; Docker's default pools would run out after ~30 networks.
SUBNET_RANGE = ipaddress.IPv4Network("10.213.0.0/16")
SUBNET_PREFIX = 28
# Names come from /etc/hosts. Docker's embedded resolver would forward other queries, and to a loopback upstream
# of the host (dnsmasq on 127.0.0.1) it does so from the host's namespace: a DNS channel out. A never-routed
# upstream (TEST-NET-3) makes it dial from the sandbox's namespace, where nothing is routed; fail fast.
NO_DNS: dict[str, Any] = {"dns": ["203.0.113.53"], "dns_opt": ["timeout:1", "attempts:1"]}
SWEEP_GRACE_S = 300  # a network younger than this may still be waiting for its sandbox's container
_SWEEP_EVERY_S = 60.0
_DROP_ANSWER_S = 0.02  # a refusal (403) comes back at once; a removal under way takes longer: not waited for
_PICK_ATTEMPTS = 12
_MAX_ENDPOINTS = 12  # a /28 holds 13 addresses after the gateway's: the sandbox's and the relays'
_JOINER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="harbor-ray-relay-join")
_REMOVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="harbor-ray-net-remove")
_RELAYS: weakref.WeakKeyDictionary[Any, Relays] = weakref.WeakKeyDictionary()
_LAST_SWEEP: dict[tuple[int, str, str], float] = {}
_SWEEP_LOCK = threading.Lock()
_LOCK = threading.Lock()


def host_address(client: Any) -> str:
    """The Docker host's address on its default bridge (e.g. 172.17.0.1): where a gateway should listen.

    Containers on the default bridge (the forwarders) reach it; other machines do not.
    """
    config = (client.api.inspect_network("bridge").get("IPAM") or {}).get("Config") or [{}]
    gateway = config[0].get("Gateway")
    if gateway:
        return str(gateway)
    # No explicit gateway: Docker gives the bridge the subnet's first address.
    return str(next(ipaddress.ip_network(config[0]["Subnet"]).hosts()))


def resolve_for_hosts(endpoint: Endpoint) -> str:
    """An /etc/hosts value for a sandbox with full network: the IP, Docker's host-gateway, or the name resolved."""
    if endpoint.is_ip:
        return endpoint.host
    if endpoint.host == HOST_ALIAS:
        return "host-gateway"
    return socket.gethostbyname(endpoint.host)


def companion_labels(sandbox_labels: dict[str, str], sandbox: str, kind: str) -> dict[str, str]:
    """The sandbox's labels (run, owner, pool, created, ttl, process) for its network."""
    keep = {k: v for k, v in sandbox_labels.items() if k in {L.RUN, L.OWNER, L.POOL, L.CREATED, L.TTL, L.PROCESS}}
    return keep | {L.KIND: kind, L.SANDBOX: sandbox}


@dataclass
class Egress:
    """A sandbox's network: `hosts` for its /etc/hosts; `wait()` and `check()` once the sandbox started."""

    network: str
    address: str  # the sandbox's own, fixed like the relays' so no dynamic pick can take one of theirs
    hosts: dict[str, str]
    relays: list[str]  # the relays' names, in the endpoints' order
    _joined: Future[None]
    _check: Callable[[], None] = field(repr=False)

    def wait(self, *, quiet: bool = False) -> None:
        """Block until every relay joined; SandboxStartError if one could not (unless quiet)."""
        error = self._joined.exception()
        if error is not None and not quiet:
            raise error

    def check(self) -> None:
        """Prove every relay runs, listens and is on the network (made so again when not): fail loud."""
        self._check()


def relays_of(client: Any) -> Relays:
    """This process's view of the relays of the daemon `client` talks to."""
    with _LOCK:
        relays = _RELAYS.get(client)
        if relays is None:
            relays = _RELAYS[client] = Relays(client)
        return relays


def create_egress(
    client: Any, sandbox: str, sandbox_labels: dict[str, str], endpoints: list[Endpoint], ttl_s: int
) -> Egress:
    """Make the sandbox's internal network; its relays join it in the background (call `wait()` after the
    sandbox's start, then `check()`). On a failure here nothing is left and SandboxStartError says why."""
    network = f"{sandbox}-egress"
    if len(endpoints) > _MAX_ENDPOINTS:
        msg = f"sandbox.egress: at most {_MAX_ENDPOINTS} endpoints per sandbox, not {len(endpoints)}"
        raise ConfigError(msg)
    run = sandbox_labels[L.RUN]
    names = [relay_name(run, e, ttl_s) for e in endpoints]

    def labels_for(subnet: ipaddress.IPv4Network) -> dict[str, str]:
        own = companion_labels(sandbox_labels, sandbox, "network")
        return own | {JOINED + name: address for name, address in zip(names, _relay_addresses(subnet), strict=False)}

    subnet = _create_network(client, network, labels_for)
    relays = relays_of(client)
    places = list(zip(endpoints, _relay_addresses(subnet), strict=False))

    def join_all() -> None:
        for endpoint, address in places:
            relays.join(run, endpoint, ttl_s, network, address)

    def check_all() -> None:
        for endpoint, address in places:
            relays.check(run, endpoint, ttl_s, network, address)

    sweep_soon(client, run, sweep_networks, "networks", _REMOVER)
    hosts = {e.name: address for e, address in places}
    sandbox_address = str(list(subnet.hosts())[1])
    return Egress(network, sandbox_address, hosts, names, _JOINER.submit(join_all), check_all)


def _relay_addresses(subnet: ipaddress.IPv4Network) -> list[str]:
    # the first address is the (absent) bridge's gateway, the second the sandbox's, then the relays'
    return [str(a) for a in subnet.hosts()][2:]


def _create_network(
    client: Any, name: str, labels_for: Callable[[ipaddress.IPv4Network], dict[str, str]]
) -> ipaddress.IPv4Network:
    import docker.errors
    import docker.types

    subnets = list(SUBNET_RANGE.subnets(new_prefix=SUBNET_PREFIX))
    for _ in range(_PICK_ATTEMPTS):
        subnet = random.choice(subnets)
        ipam = docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=str(subnet))])
        try:
            client.api.create_network(
                name,
                driver="bridge",
                internal=True,
                options={"com.docker.network.bridge.inhibit_ipv4": "true"},
                ipam=ipam,
                labels=labels_for(subnet),
                check_duplicate=True,
            )
        except docker.errors.APIError as e:
            if "overlap" in str(e).lower():  # another sandbox holds that subnet: pick again
                continue
            msg = f"network {name}: the daemon refused it: {first_line(e)}"
            raise SandboxStartError(msg) from e
        return subnet
    msg = f"network {name}: no free /{SUBNET_PREFIX} left in {SUBNET_RANGE} after {_PICK_ATTEMPTS} tries"
    raise SandboxStartError(msg)


def remove_egress(client: Any, network: str) -> None:
    """Remove the network of a sandbox that is gone (its start failed), waiting for it."""
    _remove_network(client, network)


def unplug(client: Any, network: str, relays: list[str]) -> None:
    """Ask the daemon to take the relays off a sandbox's network, without waiting (about 1 ms each): it does
    so while the sandbox's container is removed. The relays are shared, so the daemon serializes their
    disconnections; waiting for them would add up across a burst of releases."""
    for relay in relays:
        body = {"Container": relay, "Force": True}
        send(client, "post", client.api._url("/networks/{0}/disconnect", network), 0.001, json=body)


def drop(client: Any, network: str) -> None:
    """Once the sandbox's container is gone: have the daemon remove its network, waiting for an answer only
    briefly. A request sent is finished by the daemon even if this process ends right after (a pool ends its
    idle actors with ray.kill); a refusal (a relay still on it) is retried in the background; what a crash
    leaves is swept (`sweep_networks`)."""
    answer = send(client, "delete", client.api._url("/networks/{0}", network), _DROP_ANSWER_S)
    if answer in (200, 204, 404):
        return
    drop_later(client, network)  # refused, or still under way: make sure it goes


class Pending:
    """How many background jobs of a kind this process has queued or running; `wait` for none."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def acquire(self) -> None:
        with self._idle:
            self._count += 1

    def release(self) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait(self, timeout_s: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout_s)


_LATER = Pending()  # the removals `drop_later` has queued or running


def drop_later(client: Any, network: str, after_s: float = 0.0) -> None:
    """Remove a network in the background, `after_s` from now, once nothing is on it any more (or leave it to
    a sweep; `removals_done` waits for them before this process ends)."""
    due = time.monotonic() + after_s
    _LATER.acquire()
    _REMOVER.submit(_remove_when_due, client, network, due)


def _remove_when_due(client: Any, network: str, due: float) -> None:
    try:
        time.sleep(max(0.0, due - time.monotonic()))  # queued together, due together: no wait adds up
        _remove_quietly(client, network)
    finally:
        _LATER.release()


def removals_done(timeout_s: float) -> bool:
    """Wait until this process's `drop_later` removals are over; False on timeout."""
    return _LATER.wait(timeout_s)


def send(client: Any, method: str, url: str, read_timeout_s: float, **kwargs: Any) -> int | None:
    """Send one API request (`url` from the SDK's own `_url`, versioned and quoted); its status when it is
    answered within `read_timeout_s`, else None: sent, and the daemon carries a request through once it has
    read it, whether or not the client waits for the answer."""
    import requests

    try:
        return int(getattr(client.api, method)(url, timeout=(10, read_timeout_s), **kwargs).status_code)
    except requests.exceptions.ReadTimeout:
        return None
    except requests.RequestException as e:
        log.debug("%s %s not sent: %s", method.upper(), url, e)
        return -1


def _remove_quietly(client: Any, network: str) -> None:
    try:
        _remove_network(client, network)
    except Exception as e:
        log.warning("network %s not removed (a sweep or clean will): %s", network, first_line(e))


def _disconnect_relays(client: Any, network: str) -> None:
    import docker.errors

    try:
        info = client.api.inspect_network(network)
    except docker.errors.NotFound:
        return
    for container_id, endpoint in (info.get("Containers") or {}).items():
        if "-relay-" not in str(endpoint.get("Name", "")):
            continue  # a sandbox (or anything not ours to unplug): the removal waits for it to go
        try:
            client.api.disconnect_container_from_network(container_id, network, force=True)
        except docker.errors.APIError as e:
            log.debug("disconnect %s from %s: %s", endpoint.get("Name"), network, first_line(e))


def _remove_network(client: Any, name: str) -> bool:
    """Disconnect the relays from network `name` and remove it; False when a sandbox still holds it."""
    import docker.errors

    deadline = time.monotonic() + 15
    while True:
        _disconnect_relays(client, name)
        try:
            client.api.remove_network(name)
        except docker.errors.NotFound:
            return True
        except docker.errors.APIError as e:
            # 403 "has active endpoints": a container's removal is still in flight, or a relay just healed in
            if time.monotonic() < deadline and e.status_code in (403, 409):
                time.sleep(0.1)
                continue
            if e.status_code in (403, 409):
                return False
            raise
        return True


def _networks(client: Any, labels: dict[str, str]) -> list[dict[str, Any]]:
    return list(client.api.networks(filters={"label": [f"{k}={v}" for k, v in labels.items()]}))


def sweep_soon(client: Any, run: str, sweep: Callable[[Any, str], Any], what: str, executor: Executor) -> None:
    """`sweep(client, run)` in the background, at most once a minute per process, run and `what` (networks,
    holders): never on a process's first call, or a burst of creates would sweep N times."""
    key, now = (id(client), run, what), time.monotonic()
    with _SWEEP_LOCK:
        last = _LAST_SWEEP.setdefault(key, now)
        if now - last < _SWEEP_EVERY_S:
            return
        _LAST_SWEEP[key] = now
    executor.submit(_sweep_quietly, sweep, client, run, what)


def _sweep_quietly(sweep: Callable[[Any, str], Any], client: Any, run: str, what: str) -> None:
    try:
        sweep(client, run)
    except Exception as e:
        log.warning("sweep of %s %s failed: %s", run, what, first_line(e))


def sweep_networks(client: Any, prefix: str, *, dry_run: bool = False, grace_s: float = SWEEP_GRACE_S) -> list[str]:
    """Remove (or list) the sandbox networks of run `prefix` whose sandbox's container is gone; their names.

    A network is made just before its sandbox, so one younger than `grace_s` is left alone, unless the process
    that made it (its PROCESS label) is proven gone.
    """
    L.check_prefix(prefix, key="prefix")
    run = f"{L.RUN}={prefix}"
    every = client.api.containers(all=True, filters={"label": [run]})
    sandboxes = {name.lstrip("/") for c in every for name in c.get("Names") or []}
    # a holder's network is named after the holder's first name (it is renamed when claimed): its label says it
    sandboxes |= {(c.get("Labels") or {}).get(L.EGRESS_NET, "") for c in every}
    swept = []
    for n in _networks(client, {L.RUN: prefix, L.KIND: "network"}):
        labels = n.get("Labels") or {}
        try:
            young = time.time() - int(labels.get(L.CREATED, "0")) < grace_s
        except ValueError:
            young = False
        if young and L.process_gone(labels.get(L.PROCESS, "")):
            young = False  # the process that made it ended: no sandbox of it is coming
        in_use = labels.get(L.SANDBOX, "") in sandboxes or n["Name"] in sandboxes
        if labels.get(L.RUN) != prefix or young or in_use:
            continue
        if dry_run or _remove_network(client, n["Name"]):
            swept.append(n["Name"])
    if swept and not dry_run:
        log.info("swept %d network(s) of run %s whose sandbox was gone", len(swept), prefix)
    return sorted(swept)


def clean_networks(client: Any, prefix: str, dry_run: bool = False) -> list[tuple[str, str]]:
    """Remove (or list) the holders, relays, forwarders and networks labeled harbor-run=<prefix>; (kind, name)s.

    Run after the run's sandboxes are gone (`clean` removes them first): a relay goes even if it still
    served one. A network still used by a sandbox of ours is left (and logged).
    """
    import docker.errors

    L.check_prefix(prefix, key="prefix")
    run = f"{L.RUN}={prefix}"
    found: list[tuple[str, str]] = []
    # holders: network namespaces of sandboxes (harbor_ray.backends.docker.holders); forwarders: one per sandbox
    # in versions before the shared relay
    for kind in ("holder", "relay", "forwarder"):
        for c in client.api.containers(all=True, filters={"label": [run, f"{L.KIND}={kind}"]}):
            if (c.get("Labels") or {}).get(L.RUN) == prefix:
                found.append((kind, c["Names"][0].lstrip("/")))
                if not dry_run:
                    remove_container(client, c["Id"])
    for n in _networks(client, {L.RUN: prefix, L.KIND: "network"}):
        if (n.get("Labels") or {}).get(L.RUN) != prefix:
            continue
        found.append(("network", n["Name"]))
        if not dry_run:
            try:
                if not _remove_network(client, n["Id"]):
                    log.warning("kept network %s: a container still uses it", n["Name"])
            except docker.errors.APIError as e:
                log.warning("kept network %s: %s", n["Name"], first_line(e))
    return sorted(found)


def remove_container(client: Any, ref: str) -> None:
    import docker.errors

    try:
        client.api.remove_container(ref, force=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as e:
        if e.status_code != 409:  # 409: auto-remove already under way
            raise
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.api.inspect_container(ref)
        except docker.errors.NotFound:
            return
        time.sleep(0.1)
