"""The "gateway only" network through a remote daemon (mutual TLS): the relay is made on that daemon.

The relay, the sandbox's network and their removal go through the TLS client like everything else, including
the removal requests `destroy()` sends without waiting for their answer (docs/network.md). The TLS listener
fronts this machine's engine, so "remote" here is the client path, not a second engine.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator

import pytest

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker import network as N
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.egress import GATEWAY_URL_ENV
from harbor_ray.backends.images import BASE_IMAGE

pytestmark = pytest.mark.docker


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def gateway(remote_config: DockerBackendConfig) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((N.host_address(DockerBackend(remote_config).client), 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"{server.server_address[0]}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_gateway_through_a_tls_daemon_shares_one_relay_and_leaves_nothing(
    remote_config: DockerBackendConfig, run_label: str, gateway: str
) -> None:
    backend = DockerBackend(remote_config)
    spec = SandboxSpec(run_label=run_label, image=BASE_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600, gateway=gateway)
    handles = [backend.create(spec, BASE_IMAGE) for _ in range(2)]
    try:
        code = f"import os, urllib.request; print(urllib.request.urlopen(os.environ[{GATEWAY_URL_ENV!r}]).read())"
        for handle in handles:
            assert "hi" in backend.exec(handle, ["python3", "-c", code], timeout_s=60).stdout
        relays = backend.client.api.containers(filters={"label": [f"{L.RUN}={run_label}", f"{L.KIND}=relay"]})
        assert len(relays) == 1
    finally:
        for handle in handles:
            backend.destroy(handle)
    deadline = time.monotonic() + 10
    while backend.client.api.networks(filters={"label": f"{L.RUN}={run_label}"}) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert backend.client.api.networks(filters={"label": f"{L.RUN}={run_label}"}) == []
