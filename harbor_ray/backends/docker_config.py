"""Config of the Docker backend (local socket or a remote daemon over TLS)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TLSFiles:
    """Client-side TLS material. Empty fields fall back to DOCKER_CERT_PATH's ca.pem/cert.pem/key.pem."""

    ca_cert: str = ""
    client_cert: str = ""
    client_key: str = ""
    cert_path: str = ""
    verify: bool = True


@dataclass
class DockerBackendConfig:
    """`kind` is docker (the local daemon) or docker_remote (a daemon over TLS, normally tcp://host:2376)."""

    kind: str = "docker"
    host: str = ""  # "" -> unix:///var/run/docker.sock
    tls: TLSFiles = field(default_factory=TLSFiles)
    allow_insecure: bool = False  # permit tcp://…:2375 or TLS off (root-equivalent access to that host!)
    slots: int = 16  # sandboxes this daemon serves at once
    timeout_s: float = 60.0  # per API call
    build_timeout_s: float = 1800.0
    max_concurrent_creates: int = 4
