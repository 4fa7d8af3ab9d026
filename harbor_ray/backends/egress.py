"""The endpoints a sandbox may reach when it has no network otherwise: the model gateway and `egress` entries.

Backend-neutral: parsing and validation of `SandboxSpec.gateway` / `SandboxSpec.egress`, the name the sandbox
uses for the gateway and the environment variable that carries its URL. See docs/network.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.errors import ConfigError

GATEWAY_HOSTNAME = "gateway.harbor-ray.internal"
GATEWAY_URL_ENV = "HARBOR_RAY_GATEWAY_URL"


@dataclass(frozen=True)
class Endpoint:
    """One `HOST:PORT` the sandbox may reach, under `name` (what the sandbox connects to, same port)."""

    name: str
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


def parse(value: str, key: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[addr]:port`) -> (host, port); ConfigError naming `key` otherwise."""
    host, sep, port = value.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        msg = f"{key}={value!r}: give HOST:PORT, e.g. 172.17.0.1:8000"
        raise ConfigError(msg)
    if host == "localhost" or (_ip(host) is not None and _ip(host).is_loopback):  # type: ignore[union-attr]
        msg = (
            f"{key}={value!r}: loopback is the sandbox's own; bind the gateway to the Docker host's bridge address "
            "(harbor_ray.backends.docker.network.host_address) or the node's IP and give that"
        )
        raise ConfigError(msg)
    return host, int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def endpoints(spec: SandboxSpec) -> list[Endpoint]:
    """The gateway (named GATEWAY_HOSTNAME) first, then each egress entry under its own host name."""
    found: list[Endpoint] = []
    if spec.gateway:
        host, port = parse(spec.gateway, "sandbox.gateway")
        found.append(Endpoint(GATEWAY_HOSTNAME, host, port))
    for entry in spec.egress:
        host, port = parse(entry, "sandbox.egress")
        found.append(Endpoint(host, host, port))
    return found


def restricted(spec: SandboxSpec) -> bool:
    """Whether the sandbox gets the "gateway only" network (no full network, but endpoints to reach)."""
    return not spec.network and bool(spec.gateway or spec.egress)


def sandbox_env(spec: SandboxSpec) -> dict[str, str]:
    """The environment that tells in-sandbox agents where the gateway is (empty without a gateway)."""
    if not spec.gateway:
        return {}
    _, port = parse(spec.gateway, "sandbox.gateway")
    return {GATEWAY_URL_ENV: f"http://{GATEWAY_HOSTNAME}:{port}"}
