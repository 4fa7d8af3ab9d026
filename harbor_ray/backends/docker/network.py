"""The "gateway only" network of one Docker sandbox: an internal network and one forwarder per endpoint.

The network is `internal` (no route out) with `inhibit_ipv4` (the host has no address on it, so host services
on 0.0.0.0 stay out of reach) on a small subnet of its own. Each forwarder is a tiny asyncio TCP relay on that
network and on the default bridge, relaying its one port to one fixed `HOST:PORT`. Everything carries the
sandbox's labels plus `harbor-ray/sandbox=<name>`; `remove_egress` and `clean_networks` take it all away.
Why it is built this way: docs/network.md.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.docker.endpoint import first_line
from harbor_ray.backends.egress import Endpoint
from harbor_ray.backends.images import BASE_IMAGE
from harbor_ray.errors import ConfigError, SandboxStartError

log = logging.getLogger(__name__)

FORWARDER_IMAGE = BASE_IMAGE  # has python3; built by `python -m harbor_ray images`
HOST_ALIAS = "host.docker.internal"  # in a forwarder: the Docker host (Docker's host-gateway)
# Subnets are ours to pick: with inhibit_ipv4 the host gets no address or route on them, so they cannot clash
# with the host's networks; Docker's default pools would run out after ~30 networks.
SUBNET_RANGE = ipaddress.IPv4Network("10.213.0.0/16")
SUBNET_PREFIX = 28
# Names come from /etc/hosts. Docker's embedded resolver would forward other queries, and to a loopback upstream
# of the host (dnsmasq on 127.0.0.1) it does so from the host's namespace: a DNS channel out. A never-routed
# upstream (TEST-NET-3) makes it dial from the sandbox's namespace, where nothing is routed; fail fast.
NO_DNS: dict[str, Any] = {"dns": ["203.0.113.53"], "dns_opt": ["timeout:1", "attempts:1"]}
_PICK_ATTEMPTS = 12
_MAX_ENDPOINTS = 12  # a /28 holds 13 addresses after the gateway's: the sandbox's and the forwarders'
_STARTER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="harbor-ray-forwarder")
_READY_TIMEOUT_S = 30.0

# argv: listen_port target_host target_port ttl_s. Relays each connection both ways, half-closes pass through.
_RELAY = """
import asyncio, sys
listen, host, port, ttl = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def pipe(r, w):
    try:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()
    except OSError:
        pass
async def handle(r, w):
    try:
        ur, uw = await asyncio.open_connection(host, port)
    except OSError:
        w.close()
        return
    await asyncio.gather(pipe(r, uw), pipe(ur, w))
    uw.close()
    w.close()
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", listen)
    print("ready", flush=True)
    async with server:
        await asyncio.sleep(ttl)
asyncio.run(main())
"""


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
    """The sandbox's labels (run, owner, pool, created, ttl) for a network or forwarder of it."""
    keep = {k: v for k, v in sandbox_labels.items() if k in {L.RUN, L.OWNER, L.POOL, L.CREATED, L.TTL}}
    return keep | {L.KIND: kind, L.SANDBOX: sandbox}


@dataclass
class Egress:
    """A sandbox's network and forwarders: `hosts` for its /etc/hosts, `wait()` before the sandbox is used."""

    network: str
    address: str  # the sandbox's own, fixed like the forwarders' so no dynamic pick can take one of theirs
    hosts: dict[str, str]
    _started: Future[None]

    def wait(self, *, quiet: bool = False) -> None:
        """Block until every forwarder listens; SandboxStartError if one did not come up (unless quiet)."""
        error = self._started.exception()
        if error is not None and not quiet:
            raise error


def create_egress(
    client: Any, sandbox: str, sandbox_labels: dict[str, str], endpoints: list[Endpoint], ttl_s: int
) -> Egress:
    """Make the sandbox's internal network and its forwarders (each at a fixed address of the subnet).

    The forwarders start in the background, so the sandbox can start meanwhile; call `wait()` after it.
    On a failure here what was made is removed and SandboxStartError says why.
    """
    network = f"{sandbox}-egress"
    if len(endpoints) > _MAX_ENDPOINTS:
        msg = f"sandbox.egress: at most {_MAX_ENDPOINTS} endpoints per sandbox, not {len(endpoints)}"
        raise ConfigError(msg)
    try:
        subnet = _create_network(client, network, companion_labels(sandbox_labels, sandbox, "network"))
        labels = companion_labels(sandbox_labels, sandbox, "forwarder")
        # the first address is the (absent) bridge's gateway, the second the sandbox's, then the forwarders'
        addresses = [str(a) for a in subnet.hosts()][2:]
        forwarders = [
            _create_forwarder(client, f"{sandbox}-fwd{i}", network, addresses[i], labels, endpoint, ttl_s)
            for i, endpoint in enumerate(endpoints)
        ]
    except BaseException:
        remove_egress(client, sandbox, network)
        raise
    hosts = {e.name: addresses[i] for i, e in enumerate(endpoints)}
    sandbox_address = str(next(islice(subnet.hosts(), 1, None)))
    return Egress(network, sandbox_address, hosts, _STARTER.submit(_start_all, client, forwarders))


def _create_network(client: Any, name: str, labels: dict[str, str]) -> ipaddress.IPv4Network:
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
                labels=labels,
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


def _create_forwarder(
    client: Any, name: str, network: str, address: str, labels: dict[str, str], endpoint: Endpoint, ttl_s: int
) -> tuple[str, str]:
    """Create one relay at `address` on the sandbox's network (not started); return (id, name)."""
    import docker.errors

    try:
        container = client.api.create_container(
            FORWARDER_IMAGE,
            name=name,
            entrypoint=["python3", "-c", _RELAY],
            command=[str(endpoint.port), endpoint.host, str(endpoint.port), str(int(ttl_s))],
            user="65534:65534",
            labels=labels,
            host_config=client.api.create_host_config(
                network_mode="bridge",
                auto_remove=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                read_only=True,
                pids_limit=64,
                mem_limit="64m",
                nano_cpus=int(0.5e9),
                extra_hosts={HOST_ALIAS: "host-gateway"},
            ),
        )
        client.api.connect_container_to_network(container["Id"], network, ipv4_address=address)
    except docker.errors.ImageNotFound as e:
        msg = f"forwarder {name}: image {FORWARDER_IMAGE} missing; build it with `python -m harbor_ray images`"
        raise SandboxStartError(msg) from e
    except docker.errors.APIError as e:
        msg = f"forwarder {name} to {endpoint.host}:{endpoint.port} not created: {first_line(e)}"
        raise SandboxStartError(msg) from e
    return str(container["Id"]), name


def _start_all(client: Any, forwarders: list[tuple[str, str]]) -> None:
    import docker.errors

    for container_id, name in forwarders:
        try:
            client.api.start(container_id)
        except docker.errors.APIError as e:
            msg = f"forwarder {name} did not start: {first_line(e)}"
            raise SandboxStartError(msg) from e
        _wait_ready(client, container_id, name)


def _wait_ready(client: Any, container_id: str, name: str) -> None:
    """Block until the relay prints `ready` (it then listens); its logs ending first means it died."""
    deadline = time.monotonic() + _READY_TIMEOUT_S
    seen = b""
    for chunk in client.api.logs(container_id, stream=True, follow=True):
        seen += chunk
        if b"ready" in seen:
            return
        if time.monotonic() > deadline:
            break
    msg = f"forwarder {name} did not come up: {seen.decode(errors='replace').strip()[-300:] or 'no output'}"
    raise SandboxStartError(msg)


def remove_egress(client: Any, sandbox: str, network: str | None = None) -> None:
    """Remove the sandbox's forwarders, then its network (once they are detached); idempotent."""
    import docker.errors

    for c in client.api.containers(all=True, filters={"label": [f"{L.SANDBOX}={sandbox}", f"{L.KIND}=forwarder"]}):
        _remove_container(client, c["Id"])
    names = [network] if network else [n["Name"] for n in _networks(client, {L.SANDBOX: sandbox})]
    for name in names:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.api.remove_network(name)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                # 403 "has active endpoints": a container's removal is still in flight.
                if time.monotonic() < deadline and e.status_code in (403, 409):
                    time.sleep(0.1)
                    continue
                raise
            break


def _remove_container(client: Any, ref: str) -> None:
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


def _networks(client: Any, labels: dict[str, str]) -> list[dict[str, Any]]:
    return list(client.api.networks(filters={"label": [f"{k}={v}" for k, v in labels.items()]}))


def clean_networks(client: Any, prefix: str, dry_run: bool = False) -> list[tuple[str, str]]:
    """Remove (or list) the forwarders and networks labeled harbor-run=<prefix>; return ("forwarder"|"network", name)s.

    Run after the sandboxes are gone: a network still used by a sandbox of ours is left (and logged).
    """
    import docker.errors

    L.check_prefix(prefix, key="prefix")
    run = f"{L.RUN}={prefix}"
    found: list[tuple[str, str]] = []
    for c in client.api.containers(all=True, filters={"label": [run, f"{L.KIND}=forwarder"]}):
        if (c.get("Labels") or {}).get(L.RUN) == prefix:
            found.append(("forwarder", c["Names"][0].lstrip("/")))
            if not dry_run:
                _remove_container(client, c["Id"])
    for n in _networks(client, {L.RUN: prefix, L.KIND: "network"}):
        if (n.get("Labels") or {}).get(L.RUN) != prefix:
            continue
        found.append(("network", n["Name"]))
        if not dry_run:
            try:
                client.api.remove_network(n["Id"])
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                log.warning("kept network %s: %s", n["Name"], first_line(e))
    return sorted(found)
