"""The relays of "gateway only" sandboxes: one long-lived container per daemon, run and endpoint, shared.

A relay is a tiny asyncio TCP relay (python3 in the base image) on the daemon's default bridge that listens
on its endpoint's port and relays every connection to one fixed `HOST:PORT`. It is joined (`network
connect`) to each sandbox's own internal network at a fixed address, so a sandbox reaches it and, through
it, only that target. Its name is deterministic (`<run>-relay-<hash of target and TTL>`): processes that
start it at the same time race on the name, one creates it (the others get 409 and use it).

Its lifetime is its own: it exits (and is auto-removed) once no sandbox network has been joined for
`IDLE_S`, and at the latest `ttl + LIFE_MARGIN_S` after the last network joined it, so it never outlives
the backstop of the sandboxes it serves by much, even when every process of ours died. A relay that died
is made again by the next sandbox start, which then joins every network labeled for it again (healing the
sandboxes it served). Why it is built so: docs/network.md.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from harbor_ray import labels as L
from harbor_ray.backends.docker.endpoint import first_line
from harbor_ray.backends.egress import Endpoint
from harbor_ray.backends.images import BASE_IMAGE
from harbor_ray.errors import SandboxStartError

log = logging.getLogger(__name__)

RELAY_IMAGE = BASE_IMAGE  # has python3; built by `python -m harbor_ray images`
HOST_ALIAS = "host.docker.internal"  # in a relay: the Docker host (Docker's host-gateway)
TARGET = "harbor-ray/relay-target"  # on a relay: the HOST:PORT it relays to
JOINED = "harbor-ray/relay."  # + relay name, on a sandbox network: the relay's address on it (for healing)
IDLE_S = 60.0  # no sandbox network joined this long: the relay ends
LIFE_MARGIN_S = 300  # past the sandbox TTL, after the last join: the relay's backstop
PER_PEER = 512  # open connections one sandbox may hold through the relay (the others keep theirs)
_READY_TIMEOUT_S = 30.0
_ATTEMPTS = 6

# argv: listen_port target_host target_port life_s idle_s per_peer. Relays each connection both ways,
# half-closes pass through. Watches its own interfaces: each sandbox network joined is one more.
_PROGRAM = """
import asyncio, os, sys, time
listen, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
life, idle, per_peer = float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
open_by_peer = {}
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
    peer = (w.get_extra_info("peername") or ("?",))[0]
    if open_by_peer.get(peer, 0) >= per_peer:
        w.close()
        return
    open_by_peer[peer] = open_by_peer.get(peer, 0) + 1
    try:
        try:
            ur, uw = await asyncio.open_connection(host, port)
        except OSError:
            w.close()
            return
        await asyncio.gather(pipe(r, uw), pipe(ur, w))
        uw.close()
        w.close()
    finally:
        open_by_peer[peer] -= 1
        if not open_by_peer[peer]:
            del open_by_peer[peer]
def links():
    found = set()
    for name in os.listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{name}/ifindex") as f:
                found.add(int(f.read()))
        except (OSError, ValueError):
            pass
    return found
async def main():
    server = await asyncio.start_server(handle, "0.0.0.0", listen, backlog=1024)
    own = links()
    print("ready", flush=True)
    last_join = last_busy = time.monotonic()
    newest = max(own)
    async with server:
        while True:
            await asyncio.sleep(1)
            now, joined = time.monotonic(), links() - own
            if joined:
                last_busy = now
                if max(joined) > newest:
                    newest, last_join = max(joined), now
            if now - last_busy > idle or now - last_join > life:
                return
asyncio.run(main())
"""


def relay_name(run: str, endpoint: Endpoint, ttl_s: int) -> str:
    """The relay's container name: one per run, target and TTL (the TTL bounds its life)."""
    digest = hashlib.sha256(f"{endpoint.host}:{endpoint.port}|{int(ttl_s)}".encode()).hexdigest()[:10]
    return f"{run}-relay-{digest}"


class Relays:
    """The relays of one daemon as this process knows them: `ensure` starts one when missing, `join` puts
    it on a sandbox's network, `check` proves it still runs there (and heals it when it does not)."""

    def __init__(self, client: Any, *, idle_s: float = IDLE_S) -> None:
        self.client = client
        self.idle_s = idle_s
        self._ready: set[str] = set()  # container ids seen printing "ready"

    def ensure(self, run: str, endpoint: Endpoint, ttl_s: int) -> str:
        """The running, listening relay for this endpoint (made when missing); returns its container id."""
        import docker.errors

        name = relay_name(run, endpoint, ttl_s)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        ended = 0
        while ended < _ATTEMPTS and time.monotonic() < deadline:
            info = self._inspect(name)
            if info is None:
                try:
                    return self._create(name, run, endpoint, ttl_s)
                except docker.errors.APIError as e:
                    if e.status_code != 409:
                        msg = f"relay {name} to {endpoint.host}:{endpoint.port} not created: {first_line(e)}"
                        raise SandboxStartError(msg) from e
                    # 409: another process holds the name; while it creates the container (or one that ended is
                    # being removed) the name is taken but not yet (or no longer) inspectable: look again soon
                    time.sleep(0.05)
                    continue
            state = info["State"]
            if state.get("Running") and not state.get("Restarting"):
                self._wait_ready(info["Id"], name)
                return str(info["Id"])
            if state.get("Status") == "created":  # another process is starting it
                time.sleep(0.05)
                continue
            ended += 1
            self._gone(info["Id"])  # ended (idle, TTL, killed): auto-removal may be under way
        msg = f"relay {name} to {endpoint.host}:{endpoint.port}: not running after {ended} restarts and "
        msg += f"{_READY_TIMEOUT_S:.0f} s (its image is {RELAY_IMAGE})"
        raise SandboxStartError(msg)

    def join(self, run: str, endpoint: Endpoint, ttl_s: int, network: str, address: str) -> None:
        """Put the relay on `network` at `address` (starting it when missing); idempotent."""
        import docker.errors

        for _ in range(_ATTEMPTS):
            relay = self.ensure(run, endpoint, ttl_s)
            try:
                self.client.api.connect_container_to_network(relay, network, ipv4_address=address)
                return
            except docker.errors.NotFound as e:
                if "network" in first_line(e).lower():
                    msg = f"network {network}: gone while its relay joined it"
                    raise SandboxStartError(msg) from e
                continue  # the relay ended between ensure and connect: start it again
            except docker.errors.APIError as e:
                if _already_joined(e):
                    return
                if e.status_code in (404, 409):  # not running any more
                    continue
                msg = f"relay {relay_name(run, endpoint, ttl_s)} did not join {network}: {first_line(e)}"
                raise SandboxStartError(msg) from e
        msg = f"relay {relay_name(run, endpoint, ttl_s)}: kept ending while joining {network}"
        raise SandboxStartError(msg)

    def check(self, run: str, endpoint: Endpoint, ttl_s: int, network: str, address: str) -> None:
        """After the sandbox started: its relay runs, listens and is on its network, else it is made so now
        (SandboxStartError when that fails: the sandbox is never left cut off from its gateway)."""
        name = relay_name(run, endpoint, ttl_s)
        info = self._inspect(name)
        if info is not None and info["State"].get("Running") and network in _networks_of(info):
            self._wait_ready(info["Id"], name)
            return
        log.warning("relay %s was gone or off %s at the sandbox's start: starting/joining it again", name, network)
        self.join(run, endpoint, ttl_s, network, address)

    # -- making one ----------------------------------------------------------------------------------

    def _create(self, name: str, run: str, endpoint: Endpoint, ttl_s: int) -> str:
        import docker.errors

        life = int(ttl_s) + LIFE_MARGIN_S
        labels = {L.RUN: run, L.KIND: "relay", L.CREATED: str(int(time.time()))}
        labels[TARGET] = f"{endpoint.host}:{endpoint.port}"
        try:
            container = self.client.api.create_container(
                RELAY_IMAGE,
                name=name,
                entrypoint=["python3", "-c", _PROGRAM],
                command=[
                    str(endpoint.port),
                    endpoint.host,
                    str(endpoint.port),
                    str(life),
                    str(self.idle_s),
                    str(PER_PEER),
                ],
                user="65534:65534",
                labels=labels,
                host_config=self.client.api.create_host_config(
                    network_mode="bridge",
                    auto_remove=True,
                    cap_drop=["ALL"],
                    security_opt=["no-new-privileges"],
                    read_only=True,
                    pids_limit=64,
                    mem_limit="256m",
                    nano_cpus=int(1e9),
                    extra_hosts={HOST_ALIAS: "host-gateway"},
                    # joined to many sandbox networks: it must never route between them (or to the bridge)
                    sysctls={"net.ipv4.ip_forward": "0", "net.ipv6.conf.all.disable_ipv6": "1"},
                ),
            )
        except docker.errors.ImageNotFound as e:
            msg = f"relay {name}: image {RELAY_IMAGE} missing; build it with `python -m harbor_ray images`"
            raise SandboxStartError(msg) from e
        relay = str(container["Id"])
        try:
            self.client.api.start(relay)
            self._wait_ready(relay, name)
        except BaseException as e:
            self._gone(relay)
            if isinstance(e, docker.errors.APIError):
                msg = f"relay {name} did not start: {first_line(e)}"
                raise SandboxStartError(msg) from e
            raise
        log.info("started relay %s to %s:%s", name, endpoint.host, endpoint.port)
        self._heal(name, relay)
        return relay

    def _heal(self, name: str, relay: str) -> None:
        """A new relay joins every network labeled for its name: sandboxes its predecessor served get it back."""
        import docker.errors

        for net in self.client.api.networks(filters={"label": [JOINED + name]}):
            address = (net.get("Labels") or {}).get(JOINED + name, "")
            try:
                self.client.api.connect_container_to_network(relay, net["Name"], ipv4_address=address)
            except docker.errors.APIError as e:
                if not _already_joined(e) and e.status_code != 404:
                    log.warning("relay %s could not join %s again: %s", name, net["Name"], first_line(e))

    def _wait_ready(self, relay: str, name: str) -> None:
        """Block until the relay printed `ready` (it then listens); ending first, or silence, is a failure."""
        import docker.errors

        if relay in self._ready:
            return
        deadline = time.monotonic() + _READY_TIMEOUT_S
        seen = b""
        while True:
            try:
                seen = bytes(self.client.api.logs(relay))
            except docker.errors.NotFound:
                break
            if b"ready" in seen:
                self._ready.add(relay)
                return
            info = self._inspect(relay)
            if info is None or not info["State"].get("Running") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        why = seen.decode(errors="replace").strip()[-300:] or "no output"
        msg = f"relay {name} did not come up (its image is {RELAY_IMAGE}): {why}"
        raise SandboxStartError(msg)

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        import docker.errors

        try:
            return dict(self.client.api.inspect_container(ref))
        except docker.errors.NotFound:
            return None

    def _gone(self, ref: str) -> None:
        """Remove a relay that ended (or failed to start) and wait until its name is free."""
        import docker.errors

        self._ready.discard(ref)
        try:
            self.client.api.remove_container(ref, force=True)
        except docker.errors.APIError as e:
            if e.status_code not in (404, 409):  # 409: its auto-removal is under way
                raise
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._inspect(ref) is not None:
            time.sleep(0.05)


def _networks_of(info: dict[str, Any]) -> set[str]:
    return set((info.get("NetworkSettings") or {}).get("Networks") or {})


def _already_joined(e: BaseException) -> bool:
    return "already exists" in first_line(e).lower()
