"""Docker host strings and TLS: validate them, make a client that trusts only what the config says,
and turn connection/TLS failures into one line that names the field and the fix.

`tcp://…:2375` or TLS off is refused unless `allow_insecure: true`, because plain-text access to a
Docker daemon is root on that host. The client never takes its CA from REQUESTS_CA_BUNDLE or
CURL_CA_BUNDLE: requests would silently prefer those over the TLS config's CA.

With `backend.host` empty, `DOCKER_HOST` wins over the default socket, as in the docker SDK and CLI
(`DockerEndpoint.origin` says which one was used).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.errors import BackendUnavailable, ConfigError, HarborRayError

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

LOCAL_SOCKET = "unix:///var/run/docker.sock"
TLS_PORT, PLAIN_PORT = 2376, 2375
INSECURE_WARNING = (
    "backend.allow_insecure=true: the Docker API at {url} is reached {how}; anyone on that network has "
    "root-equivalent access to that host. Use only on an isolated test network."
)
_DROPPED = ("connection aborted", "remote end closed", "reset by peer", "eof occurred", "broken pipe")
_FILE_NAMES = {"ca_cert": "ca.pem", "client_cert": "cert.pem", "client_key": "key.pem"}


@dataclass(frozen=True)
class DockerEndpoint:
    """Where and how to connect: the URL, the TLS files (ca, cert, key) and whether it is insecure."""

    url: str
    tls: tuple[str, str, str] | None  # (ca, cert, key) when TLS is on
    insecure: bool  # plain text (or TLS without verifying the daemon) allowed by allow_insecure
    verify: bool = True
    origin: str = "backend.host"  # where the URL came from: backend.host, DOCKER_HOST or the default socket

    @property
    def is_local(self) -> bool:
        return self.url.startswith("unix://")

    @property
    def mode(self) -> str:
        """A short description for reports: 'unix socket', 'mutual TLS', 'plain text (insecure)', …"""
        if self.is_local:
            return "unix socket"
        if self.tls is None:
            return "plain text (insecure)"
        return "mutual TLS" if self.verify else "TLS without verifying the daemon (insecure)"


def _tls_files(cfg: DockerBackendConfig) -> tuple[str, str, str] | None:
    cert_path = cfg.tls.cert_path or os.environ.get("DOCKER_CERT_PATH", "")
    where = "backend.tls.cert_path" if cfg.tls.cert_path else "DOCKER_CERT_PATH"
    if cert_path and not Path(cert_path).is_dir():
        msg = f"{where}={cert_path}: no such directory; point it at the dir holding ca.pem, cert.pem and key.pem"
        raise ConfigError(msg)
    files = {}
    for key, default_name in _FILE_NAMES.items():
        files[key] = getattr(cfg.tls, key) or (str(Path(cert_path) / default_name) if cert_path else "")
    if not any(files.values()):
        return None
    for key, value in files.items():
        if not value:
            msg = (
                f"backend.tls.{key}: missing; mutual TLS needs ca_cert, client_cert and client_key "
                "(or backend.tls.cert_path, a dir with ca.pem, cert.pem, key.pem)"
            )
            raise ConfigError(msg)
        if not Path(value).is_file():
            origin = f" (from {where})" if not getattr(cfg.tls, key) else ""
            msg = f"backend.tls.{key}={value}{origin}: file not found; point it at the PEM file"
            raise ConfigError(msg)
    return files["ca_cert"], files["client_cert"], files["client_key"]


def configured_host(cfg: DockerBackendConfig) -> tuple[str, str]:
    """(host, where it came from): backend.host, else $DOCKER_HOST (as the docker SDK), else ("", default)."""
    host = (cfg.host or "").strip()
    if host:
        return host, "backend.host"
    env = os.environ.get("DOCKER_HOST", "").strip()
    if env and cfg.kind == "docker":
        return env, "DOCKER_HOST"
    return "", "the default socket"


def check_docker_host(cfg: DockerBackendConfig) -> DockerEndpoint:
    """Validate host, port and TLS settings (no I/O beyond checking files exist)."""
    host, origin = configured_host(cfg)
    key = "DOCKER_HOST" if origin == "DOCKER_HOST" else "backend.host"
    if cfg.kind == "docker_remote" and not host:
        msg = "backend.host: docker_remote needs the daemon's address, e.g. tcp://10.0.0.5:2376"
        raise ConfigError(msg)
    if not host:
        return DockerEndpoint(LOCAL_SOCKET, None, False, origin=origin)
    if host.startswith("unix://"):
        return DockerEndpoint(host, None, False, origin=origin)
    if "://" not in host:
        msg = f"{key}={host!r}: give a URL, tcp://<host>:2376 (TLS) or unix:///var/run/docker.sock"
        raise ConfigError(msg)
    parsed = urlparse(host)
    if parsed.scheme not in ("tcp", "https", "http"):
        msg = f"{key}={host!r}: scheme {parsed.scheme!r} is not supported; use tcp://<host>:2376 with TLS"
        raise ConfigError(msg)
    try:
        port = parsed.port or TLS_PORT
    except ValueError as e:
        msg = f"{key}={host!r}: the port is not a number; use tcp://<host>:2376"
        raise ConfigError(msg) from e
    if not parsed.hostname:
        msg = f"{key}={host!r}: no host name; use tcp://<host>:2376"
        raise ConfigError(msg)
    tls = None if parsed.scheme == "http" else _tls_files(cfg)
    plain = tls is None or not cfg.tls.verify or port == PLAIN_PORT
    if plain and not cfg.allow_insecure:
        if port == PLAIN_PORT:
            why = "port 2375 is Docker's plain-text port"
        elif tls is None:
            why = "TLS is off (no CA/client cert given)"
        else:
            why = "backend.tls.verify=false does not check the daemon's certificate"
        msg = (
            f"{key}={host}: refused, {why}; use TLS on :2376 with backend.tls.cert_path "
            "(ca.pem, cert.pem, key.pem), or set backend.allow_insecure=true on an isolated test network"
        )
        raise ConfigError(msg)
    hostname = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname
    return DockerEndpoint(f"tcp://{hostname}:{port}", tls, plain, cfg.tls.verify, origin=origin)


def check_tls_material(endpoint: DockerEndpoint) -> None:
    """Load the TLS files as the client will, so a bad file fails here, naming its field."""
    if endpoint.tls is None:
        return
    ca, cert, key = endpoint.tls
    try:
        ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, ValueError) as e:
        msg = f"backend.tls.ca_cert={ca}: not a PEM CA certificate ({_ssl_reason(e)}); use the daemon's CA file"
        raise ConfigError(msg) from e
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as e:
        msg = (
            f"backend.tls.client_key={key}: does not load with backend.tls.client_cert={cert} ({_ssl_reason(e)}); "
            "give the PEM key that belongs to that certificate"
        )
        raise ConfigError(msg) from e
    expires = cert_not_after(cert)
    if expires is not None and expires < dt.datetime.now(dt.UTC):
        msg = (
            f"backend.tls.client_cert={cert}: expired on {expires:%Y-%m-%d}; "
            "issue a new client certificate from the daemon's CA"
        )
        raise ConfigError(msg)


def cert_not_after(cert_file: str) -> dt.datetime | None:
    """When a PEM certificate expires (None when the optional `cryptography` package is missing)."""
    try:
        from cryptography import x509
    except ImportError:  # optional: the daemon rejects an expired cert anyway (see connection_error)
        return None
    try:
        return x509.load_pem_x509_certificate(Path(cert_file).read_bytes()).not_valid_after_utc
    except ValueError as e:
        msg = f"backend.tls.client_cert={cert_file}: not a PEM certificate ({e}); give the client cert file"
        raise ConfigError(msg) from e


def first_line(e: BaseException) -> str:
    """The first line of a docker SDK error's explanation (or of the error itself)."""
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


def _ssl_reason(e: BaseException) -> str:
    return getattr(e, "reason", None) or str(e).splitlines()[0]


def _chain_text(e: BaseException) -> str:
    """Every message in the exception chain (requests nests the ssl error several levels deep)."""
    parts, seen = [], set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return " | ".join(parts)


def _tls_alert(endpoint: DockerEndpoint, timeout_s: float = 3.0) -> str:
    """What the daemon says to a TLS connection that sends nothing, e.g. 'tlsv1 alert unknown ca'.

    With TLS 1.3 the client's handshake ends before the daemon has checked our certificate; its
    refusal (an alert, then a close) can reach a client that already wrote its request as a bare
    reset, the alert lost. A connection that only reads always receives the alert.
    """
    import socket

    assert endpoint.tls is not None
    ca, cert, key = endpoint.tls
    parsed = urlparse(endpoint.url.replace("tcp://", "https://", 1))
    host, port = parsed.hostname or "", parsed.port or TLS_PORT
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.check_hostname = endpoint.verify
        ctx.verify_mode = ssl.CERT_REQUIRED if endpoint.verify else ssl.CERT_NONE
        ctx.load_cert_chain(cert, key)
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with ctx.wrap_socket(raw, server_hostname=host) as tls:
                tls.recv(1)  # a daemon that accepted us waits for a request: this times out
    except TimeoutError:
        return "probe: the daemon kept a silent connection open"
    except (OSError, ValueError) as probe:  # ssl.SSLError is an OSError
        return f"probe: {type(probe).__name__}: {probe}"
    return "probe: the daemon closed the connection without an alert"


def connection_error(endpoint: DockerEndpoint, e: BaseException, *, first_contact: bool = False) -> HarborRayError:
    """One readable line for a failure to reach the daemon; harbor_ray errors pass through unchanged.

    `first_contact`: the very first request of a new client, when a dropped TLS connection most likely
    means the daemon refused our client certificate without saying why.
    """
    if isinstance(e, HarborRayError):
        return e
    text = _chain_text(e)
    if first_contact and endpoint.tls is not None and any(s in text.lower() for s in _DROPPED):
        text += " | " + _tls_alert(endpoint)
    low = text.lower()
    ca, cert, _ = endpoint.tls or ("", "", "")
    host = endpoint.url.split("://", 1)[1].rsplit(":", 1)[0]
    if "certificate verify failed" in low:
        if "mismatch" in low or "not valid for" in low or "doesn't match" in low:
            reason = (
                f"TLS handshake failed: the server's certificate is not valid for {host!r} (hostname/IP "
                f"verification is on); connect by a name in its subjectAltName, or reissue it with SAN for {host}"
            )
        elif "expired" in low:
            reason = "TLS handshake failed: the daemon's server certificate has expired; renew it on the daemon host"
        else:
            reason = (
                "TLS handshake failed: certificate verify failed (the server's certificate is not signed by "
                f"backend.tls.ca_cert={ca}); set backend.tls.ca_cert (or tls.cert_path/ca.pem) to the daemon's CA"
            )
    elif "alert certificate expired" in low:
        reason = (
            f"TLS handshake failed: the daemon refused our client certificate as expired (backend.tls.client_cert="
            f"{cert}); issue a new client certificate from the daemon's CA"
        )
    elif any(s in low for s in ("alert unknown ca", "alert bad certificate", "alert decrypt error")):
        reason = (
            f"TLS handshake failed: the daemon does not trust our client certificate (backend.tls.client_cert={cert} "
            "is not signed by the CA the daemon trusts); use a client certificate issued by the daemon's CA"
        )
    elif "certificate required" in low or "alert handshake failure" in low:
        reason = (
            "TLS handshake failed: the daemon requires a client certificate; set backend.tls.client_cert and "
            "backend.tls.client_key (or tls.cert_path with cert.pem and key.pem)"
        )
    elif "wrong version number" in low or "record layer failure" in low or "http_request" in low:
        reason = (
            "TLS handshake failed: the daemon on this port speaks plain HTTP, not TLS (Docker's :2375 kind); "
            "use the daemon's TLS port (2376, dockerd --tlsverify)"
        )
    elif endpoint.tls is None and not endpoint.is_local and ("remote end closed" in low or "reset by peer" in low):
        reason = (
            "the daemon closed the plain-text connection, it probably expects TLS; "
            "set backend.tls.cert_path (a dir with ca.pem, cert.pem, key.pem)"
        )
    elif "connection refused" in low:
        reason = "connection refused; is the daemon running and listening there? (check backend.host)"
    elif "name or service not known" in low or "name resolution" in low or "nodename nor servname" in low:
        reason = f"cannot resolve {host!r}; check backend.host"
    elif "timed out" in low or "timeout" in type(e).__name__.lower():
        reason = "timed out; check backend.host, the network path and firewalls (or raise backend.timeout_s)"
    elif endpoint.is_local and ("no such file" in low or "filenotfound" in low):
        reason = "the socket does not exist; is the Docker daemon running on this machine?"
    elif endpoint.is_local and "permission denied" in low:
        reason = "permission denied on the socket; run as a member of the docker group"
    elif first_contact and endpoint.tls is not None and any(s in low for s in _DROPPED):
        reason = (
            "the daemon dropped the TLS connection at the first request, most likely refusing our client "
            f"certificate (backend.tls.client_cert={cert}); check it is issued by the daemon's CA and not expired"
        )
    elif any(s in low for s in _DROPPED):
        reason = "the connection was lost (daemon restarted or network dropped); retry, or check the daemon"
    else:
        reason = str(getattr(e, "explanation", None) or e).strip().splitlines()[0][:300] or type(e).__name__
    if endpoint.origin == "DOCKER_HOST":
        return BackendUnavailable(
            f"docker at {endpoint.url} (DOCKER_HOST): {reason.replace('backend.host', 'DOCKER_HOST')}"
        )
    return BackendUnavailable(f"docker at {endpoint.url}: {reason}")


def make_client(cfg: DockerBackendConfig) -> docker.DockerClient:
    """A DockerClient for the configured daemon, TLS exactly as configured (never from the environment).

    The API version is negotiated only after `trust_env` is off: the SDK's own `version="auto"`
    would make its first request from the constructor, when REQUESTS_CA_BUNDLE still wins.
    """
    import docker
    from docker.constants import MINIMUM_DOCKER_API_VERSION
    from docker.tls import TLSConfig

    endpoint = check_docker_host(cfg)
    if endpoint.insecure:
        how = "in plain text, without TLS" if endpoint.tls is None else "over TLS without verifying the daemon"
        log.warning(INSECURE_WARNING.format(url=endpoint.url, how=how))
    tls_config = None
    if endpoint.tls:
        check_tls_material(endpoint)
        ca, cert, key = endpoint.tls
        tls_config = TLSConfig(client_cert=(cert, key), ca_cert=ca, verify=cfg.tls.verify)
    try:
        client = docker.DockerClient(
            base_url=endpoint.url,
            tls=tls_config or False,
            timeout=int(cfg.timeout_s),
            version=MINIMUM_DOCKER_API_VERSION,  # placeholder, no request yet; negotiated below
        )
    except docker.errors.DockerException as e:
        msg = f"docker at {endpoint.url}: cannot set up the client ({str(e).splitlines()[0]}); check backend.host"
        raise BackendUnavailable(msg) from e
    # requests prefers REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE over the session's CA when trust_env is on.
    client.api.trust_env = False
    try:
        client.api._version = str(client.api.version(api_version=False)["ApiVersion"])
    except Exception as e:
        client.close()
        raise connection_error(endpoint, e, first_contact=True) from e
    return client
