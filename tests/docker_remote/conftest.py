"""Session fixtures for remote Docker: certs made with openssl, a mutual-TLS listener and a plain one.

Both listeners are `support/tls_proxy.py` subprocesses on free 127.0.0.1 ports in front of the real
engine's unix socket, so the backend goes through the docker SDK's real TLS + client-cert path. The
certs (good/, server/, expired/, other-ca/, per session) are `support.certs.docker_tls`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from support.certs import Certs, docker_tls
from support.procs import Listener
from support.tls_proxy import command

from harbor_ray.backends.docker.config import DockerBackendConfig, TLSFiles


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return docker_tls(tmp_path_factory.mktemp("docker-tls"))


@pytest.fixture(scope="session")
def tls_listener(tls_certs: Certs) -> Iterator[Listener]:
    """Mutual TLS in front of the engine, like a daemon on :2376 with --tlsverify."""
    listener = Listener(command("--certs", str(tls_certs.dir("server"))))
    yield listener
    listener.stop()


@pytest.fixture(scope="session")
def plain_listener() -> Iterator[Listener]:
    """Plain text in front of the engine, like a daemon on :2375."""
    listener = Listener(command("--plain"))
    yield listener
    listener.stop()


@pytest.fixture
def start_listener() -> Iterator[Callable[..., Listener]]:
    """Start listeners of this test's own (e.g. to kill one mid-trial); all are stopped at teardown."""
    started: list[Listener] = []

    def start(*args: str) -> Listener:
        started.append(Listener(command(*args)))
        return started[-1]

    yield start
    for listener in started:
        listener.stop()


@pytest.fixture
def remote_config(tls_listener: Listener, tls_certs: Certs) -> DockerBackendConfig:
    """A docker_remote config for the TLS listener with the good client cert."""
    return DockerBackendConfig(
        kind="docker_remote", host=tls_listener.url, tls=TLSFiles(cert_path=str(tls_certs.dir("good"))), timeout_s=30
    )
