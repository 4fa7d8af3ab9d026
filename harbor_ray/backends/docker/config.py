"""Settings of the Docker backend: the local daemon's socket, or a remote daemon over mutual TLS."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import ClassVar


@dataclass
class TLSFiles:
    """Client-side TLS material for a remote daemon.

    Attributes:
        ca_cert: the daemon's CA certificate (PEM); "" -> <cert_path>/ca.pem.
        client_cert: our client certificate (PEM); "" -> <cert_path>/cert.pem.
        client_key: the client certificate's key (PEM); "" -> <cert_path>/key.pem.
        cert_path: a directory holding ca.pem, cert.pem and key.pem; "" -> $DOCKER_CERT_PATH.
        verify: check the daemon's certificate and host name (off only with allow_insecure).
    """

    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    cert_path: str = ""
    verify: bool = True


@dataclass
class DockerBackendConfig:
    """One Docker daemon: the local one (`kind: docker`) or a remote one over TLS (`kind: docker_remote`).

    Attributes:
        kind: docker (the local daemon's unix socket) or docker_remote (normally tcp://<host>:2376 with TLS).
        host: the daemon's URL; "" -> unix:///var/run/docker.sock.
        tls: the client's TLS files for a remote daemon.
        allow_insecure: permit tcp://…:2375 or TLS off, which gives anyone on that network root on that host.
        slots: sandboxes this daemon serves at once.
        timeout_s: the timeout of one API call.
        build_timeout_s: the timeout of one image build.
        max_concurrent_creates: container creations in flight on this daemon at once.
        holder_stock: at most this many ready network holders kept per run and gateway on this daemon for
            "gateway only" sandboxes (docs/network.md); each start replaces the one it took, so the stock grows
            to the largest burst seen and no further; null (the default): `slots`; 0: each made at its
            sandbox's start.

    >>> DockerBackendConfig(kind="docker_remote", host="tcp://10.0.0.5:2376").host_name()
    'tcp://10.0.0.5:2376'
    """

    supports_hosts: ClassVar[bool] = True  # pool.hosts may list several daemons of this kind
    image_tar: ClassVar[bool] = False  # the daemon extracts uploads (put_archive)

    kind: str = "docker"  # the registry (harbor_ray.backends) maps kinds to this class: docker, docker_remote
    host: str = ""
    tls: TLSFiles = field(default_factory=TLSFiles)
    allow_insecure: bool = False
    slots: int = 16
    timeout_s: float = 60.0
    build_timeout_s: float = 1800.0
    max_concurrent_creates: int = 4
    holder_stock: int | None = None

    def validate(self) -> None:
        """Host, port and TLS files make sense (no I/O beyond checking that files exist); ConfigError if not."""
        from harbor_ray.backends.docker.endpoint import check_docker_host
        from harbor_ray.errors import ConfigError

        stock = self.holder_stock
        if stock is not None and (not isinstance(stock, int) or isinstance(stock, bool) or stock < 0):
            msg = f"backend.holder_stock: a count of 0 or more (0: no stock; null: backend.slots), not {stock!r}"
            raise ConfigError(msg)
        check_docker_host(self)

    def holder_stock_size(self) -> int:
        """The most ready holders kept (`holder_stock`, else as many as the daemon serves at once).

        >>> DockerBackendConfig(slots=8).holder_stock_size(), DockerBackendConfig(holder_stock=0).holder_stock_size()
        (8, 0)
        """
        if self.holder_stock is not None:
            return self.holder_stock
        return self.slots or DockerBackendConfig.slots  # slots 0: the pool's max_sandboxes bounds the burst

    def host_name(self) -> str | None:
        """The one place sandboxes go, or None for the local daemon of whichever Ray node runs the actor."""
        from harbor_ray.backends.docker.endpoint import check_docker_host, configured_host

        host, _ = configured_host(self)  # backend.host, else DOCKER_HOST
        if self.kind == "docker" and (not host or host.startswith("unix://")):
            return None

        return check_docker_host(self).url

    def target(self) -> str:
        """Where sandboxes are created, for reports."""
        from harbor_ray.backends.docker.endpoint import LOCAL_SOCKET, configured_host

        return configured_host(self)[0] or LOCAL_SOCKET

    def at_url(self, url: str) -> DockerBackendConfig:
        """The same settings for another daemon (a `pool.hosts` entry's url)."""
        if url.startswith("unix://"):
            return dataclasses.replace(self, host=url)
        return dataclasses.replace(self, kind="docker_remote", host=url)

    def builds_on_local_docker(self) -> bool:
        return False  # it builds on its own daemon
