"""The "gateway only" network on the real engine: the gateway answers inside the sandbox, nothing else does.

A real HTTP server on the host's docker0 address stands in for the model gateway; a second one listens on
0.0.0.0 (so on every host address) and must stay out of reach, as must the gateway's own address directly and an
external address. Every test's labels are checked for containers (run_label fixture) and networks.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from support.waiting import wait_released_holders

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxHandle, SandboxSpec
from harbor_ray.backends.docker import holders as H
from harbor_ray.backends.docker import network as N
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.egress import GATEWAY_HOSTNAME, GATEWAY_URL_ENV
from harbor_ray.backends.images import BASE_IMAGE
from harbor_ray.errors import ConfigError, SandboxStartError
from harbor_ray.ops import clean

pytestmark = pytest.mark.docker

# Tries each (host, port) at once, 1.5 s each; prints {"host:port": "open" | the error}.
PROBE = """
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.5).close()
        return target, "open"
    except OSError as e:
        return target, type(e).__name__
print(json.dumps(dict(ThreadPoolExecutor(16).map(probe, sys.argv[1:]))))
"""


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.body  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _serve(host: str, body: bytes) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer((host, 0), _Answer)
    server.body = body  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def backend() -> DockerBackend:
    # no stock: each sandbox's network holder is made at its start (tests/docker/test_network_holders.py: stock)
    return DockerBackend(DockerBackendConfig(holder_stock=0))


@pytest.fixture(scope="module")
def bridge_ip(backend: DockerBackend) -> str:
    return N.host_address(backend.client)


@pytest.fixture(scope="module")
def gateway_port(bridge_ip: str) -> Iterator[int]:
    yield from _serve(bridge_ip, b"gateway-says-hi")


@pytest.fixture(scope="module")
def other_port() -> Iterator[int]:
    yield from _serve("0.0.0.0", b"must-not-be-reached")


def _networks_of_run(backend: DockerBackend, run_label: str, wait_s: float = 10) -> list[str]:
    """The run's networks, after waiting up to `wait_s` for the background removals of destroyed sandboxes."""
    deadline = time.monotonic() + wait_s
    while True:
        left = [n["Name"] for n in backend.client.api.networks(filters={"label": f"{L.RUN}={run_label}"})]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _relays(backend: DockerBackend, run_label: str) -> list[dict]:
    return backend.client.api.containers(all=True, filters={"label": [f"{L.RUN}={run_label}", f"{L.KIND}=relay"]})


@pytest.fixture
def no_networks_left(backend: DockerBackend, run_label: str) -> Iterator[None]:
    yield
    left = _networks_of_run(backend, run_label)
    assert not left, f"networks labeled {L.RUN}={run_label} left: {left}"


def _host_ipv4s() -> list[str]:
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == 2]


def _spec(run_label: str, **kw: object) -> SandboxSpec:
    return SandboxSpec(run_label=run_label, image=BASE_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600, **kw)  # type: ignore[arg-type]


def _probe(backend: DockerBackend, handle: SandboxHandle, targets: list[str]) -> dict[str, str]:
    result = backend.exec(handle, ["python3", "-c", PROBE, *targets], timeout_s=60)
    assert result.return_code == 0, result.stderr
    return json.loads(result.stdout)


def _get(backend: DockerBackend, handle: SandboxHandle, url_expr: str) -> str:
    code = f"import os, urllib.request; print(urllib.request.urlopen({url_expr}, timeout=10).read().decode())"
    result = backend.exec(handle, ["python3", "-c", code], timeout_s=60)
    assert result.return_code == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.usefixtures("no_networks_left")
def test_sandbox_reaches_the_gateway_and_nothing_else(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, other_port: int
) -> None:
    handle = backend.create(_spec(run_label, gateway=f"{bridge_ip}:{gateway_port}"), BASE_IMAGE)
    try:
        assert _get(backend, handle, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
        assert _get(backend, handle, f"'http://{GATEWAY_HOSTNAME}:{gateway_port}/v1/models'") == "gateway-says-hi"
        resolve = f"import socket; print(socket.gethostbyname({GATEWAY_HOSTNAME!r}))"
        relay = backend.exec(handle, ["python3", "-c", resolve]).stdout.strip()
        targets = [f"{ip}:{port}" for ip in _host_ipv4s() for port in (gateway_port, other_port)]
        targets += [f"{relay}:{other_port}", f"{relay}:22", "1.1.1.1:443", "8.8.8.8:53"]
        reached = _probe(backend, handle, targets)
        assert set(reached) == set(targets)
        assert {t: r for t, r in reached.items() if r == "open"} == {}
        # the same probe does see the gateway through its name: the probe itself can succeed
        assert _probe(backend, handle, [f"{GATEWAY_HOSTNAME}:{gateway_port}"]) == {
            f"{GATEWAY_HOSTNAME}:{gateway_port}": "open"
        }
        assert [h.name for h in backend.list(L.selector(run_label))] == [handle.name]  # a relay is no sandbox
        (relay,) = _relays(backend, run_label)
        on_network = backend.client.api.inspect_network(handle.labels[L.EGRESS_NET])["Containers"]
        # the sandbox is in its holder's namespace: the holder and the relay are all the network holds
        holder = f"{handle.name}-net"
        assert sorted(c["Name"] for c in on_network.values()) == sorted([holder, relay["Names"][0][1:]])
        assert backend.client.api.inspect_container(handle.id)["HostConfig"]["NetworkMode"] == (
            f"container:{handle.labels[L.HOLDER]}"
        )
    finally:
        backend.destroy(handle)
    assert not backend.client.api.containers(all=True, filters={"label": f"{L.SANDBOX}={handle.name}"})
    assert _networks_of_run(backend, run_label) == []  # the network went in the background; the relay stays
    assert len(_relays(backend, run_label)) == 1


@pytest.mark.usefixtures("no_networks_left")
def test_default_sandbox_reaches_nothing(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, other_port: int
) -> None:
    handle = backend.create(_spec(run_label), BASE_IMAGE)
    try:
        assert backend.exec(handle, "ls /sys/class/net").stdout.split() == ["lo"]
        targets = [f"{ip}:{port}" for ip in _host_ipv4s() for port in (gateway_port, other_port)]
        assert "open" not in _probe(backend, handle, [*targets, f"{GATEWAY_HOSTNAME}:{gateway_port}"]).values()
        assert GATEWAY_URL_ENV not in backend.exec(handle, "env").stdout
    finally:
        backend.destroy(handle)


@pytest.mark.usefixtures("no_networks_left")
def test_clean_removes_what_a_lost_sandbox_left(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    handle = backend.create(_spec(run_label, gateway=f"{bridge_ip}:{gateway_port}"), BASE_IMAGE)
    backend.client.api.remove_container(handle.id, force=True)  # the sandbox went, its companions did not
    left = N.clean_networks(backend.client, run_label, dry_run=True)
    (relay,) = _relays(backend, run_label)
    expected = [("holder", f"{handle.name}-net"), ("network", handle.labels[L.EGRESS_NET])]
    assert sorted(left) == [*expected, ("relay", relay["Names"][0][1:])]
    assert clean.main([f"run_label={run_label}"]) == 0  # `python -m harbor_ray clean` takes them
    assert N.clean_networks(backend.client, run_label, dry_run=True) == []


@pytest.mark.parametrize("gateway", ["127.0.0.1:8000", "localhost:8000", "172.17.0.1", "172.17.0.1:0", ":80"])
def test_bad_gateway_is_one_error_line_and_leaves_nothing(
    backend: DockerBackend, run_label: str, gateway: str, no_networks_left: None
) -> None:
    with pytest.raises(ConfigError, match=r"^sandbox\.gateway=") as e:
        backend.create(_spec(run_label, gateway=gateway), BASE_IMAGE)
    assert "\n" not in str(e.value)


def test_failed_sandbox_start_takes_its_network_away(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, no_networks_left: None
) -> None:
    # the relay and the network are made before the sandbox; a sandbox that cannot start takes them away
    with pytest.raises(SandboxStartError, match="not on the daemon"):
        backend.create(_spec(run_label, gateway=f"{bridge_ip}:{gateway_port}"), "harbor-ray/no-such-image:none")


@pytest.mark.usefixtures("no_networks_left")
def test_full_network_keeps_the_gateway_name(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    handle = backend.create(_spec(run_label, network=True, gateway=f"{bridge_ip}:{gateway_port}"), BASE_IMAGE)
    try:
        assert L.EGRESS_NET not in handle.labels  # the default bridge: no network or relay of its own
        assert _get(backend, handle, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
    finally:
        backend.destroy(handle)


@pytest.mark.unit
def test_harbor_network_policies_map_onto_the_modes() -> None:
    from harbor.models.task.config import NetworkMode, NetworkPolicy

    from harbor_ray.harbor.spec import network_from_policy

    assert network_from_policy(NetworkPolicy(network_mode=NetworkMode.PUBLIC)) == (True, ())
    assert network_from_policy(NetworkPolicy(network_mode=NetworkMode.NO_NETWORK)) == (False, ())
    allow = NetworkPolicy(network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["api.example.com", "pypi.org"])
    assert network_from_policy(allow) == (False, ("api.example.com:443", "pypi.org:443"))
    # Harbor adds an in-sandbox agent's inference host: the gateway's own name gets no relay of its :443
    with_gateway = NetworkPolicy(
        network_mode=NetworkMode.ALLOWLIST, allowed_hosts=["gateway.harbor-ray.internal", "pypi.org"]
    )
    assert network_from_policy(with_gateway) == (False, ("pypi.org:443",))


@pytest.mark.usefixtures("no_networks_left")
def test_egress_hostnames_are_reached_by_their_own_name(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, other_port: int
) -> None:
    # what a Harbor allowlist becomes: HOSTNAME:PORT, resolved by its relay (host.docker.internal: the host)
    spec = _spec(run_label, gateway=f"{bridge_ip}:{gateway_port}", egress=(f"{N.HOST_ALIAS}:{other_port}",))
    handle = backend.create(spec, BASE_IMAGE)
    try:
        assert _get(backend, handle, f"'http://{N.HOST_ALIAS}:{other_port}/'") == "must-not-be-reached"
        assert _get(backend, handle, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
        # each name leads to its own endpoint only: the egress name on the gateway's port reaches nothing
        assert _probe(backend, handle, [f"{N.HOST_ALIAS}:{gateway_port}"]) != {f"{N.HOST_ALIAS}:{gateway_port}": "open"}
    finally:
        backend.destroy(handle)


@pytest.mark.ray
@pytest.mark.usefixtures("no_networks_left")
async def test_pool_lease_carries_the_gateway_and_release_removes_its_network(
    ray_local: None, backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    from harbor_ray.backends.docker.config import DockerBackendConfig
    from harbor_ray.config import PoolConfig
    from harbor_ray.pool import SandboxPool

    pool = SandboxPool(
        DockerBackendConfig(), PoolConfig(name=f"pool-{run_label}", reap_interval_s=0), run_label=run_label
    )
    try:
        async with pool.lease(_spec(run_label, gateway=f"{bridge_ip}:{gateway_port}")) as sandbox:
            code = f"import os, urllib.request; print(urllib.request.urlopen(os.environ[{GATEWAY_URL_ENV!r}]).read())"
            assert "gateway-says-hi" in (await sandbox.exec(["python3", "-c", code])).stdout
            assert backend.client.api.networks(filters={"label": f"{L.RUN}={run_label}"})
            own = sandbox.handle.labels[L.EGRESS_NET]
        deadline = time.monotonic() + 10  # the release's holder and network go in the background
        while own in _networks_of_run(backend, run_label, wait_s=0):
            assert time.monotonic() < deadline, f"{own} outlived its sandbox"
            time.sleep(0.1)
    finally:
        await pool.shutdown()
    # the actor's stock of ready holders (made while it ran) outlives it; its maker gone, a sweep takes it
    assert all("-stock-" in n for n in _networks_of_run(backend, run_label, wait_s=0))
    deadline = time.monotonic() + 15  # the actor's process may take a moment to end after its kill
    while H.sweep(backend.client, run_label) or _networks_of_run(backend, run_label, wait_s=0):
        assert time.monotonic() < deadline, f"left: {_networks_of_run(backend, run_label, wait_s=0)}"
        time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.parametrize("keep_actors_s", [600.0, 0.0], ids=["idle-actor", "actor-ended-at-release"])
async def test_a_pool_shut_down_right_after_a_release_leaves_no_network_of_it(
    ray_local: None, backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, keep_actors_s: float
) -> None:
    """A released holder ends a second after its sandbox and its network after it, in the actor's process: an
    actor ended at once (the pool's shutdown, or one not recycled) settles first, so no sweep is needed."""
    from harbor_ray.backends.docker.config import DockerBackendConfig
    from harbor_ray.config import PoolConfig
    from harbor_ray.pool import SandboxPool

    config = PoolConfig(name=f"pool-{run_label}", reap_interval_s=0, keep_actors_s=keep_actors_s)
    pool = SandboxPool(DockerBackendConfig(holder_stock=0), config, run_label=run_label)
    try:
        async with pool.lease(_spec(run_label, gateway=f"{bridge_ip}:{gateway_port}")) as sandbox:
            own = sandbox.handle.labels[L.EGRESS_NET]
            assert own in _networks_of_run(backend, run_label, wait_s=0)
    finally:
        await pool.shutdown()
    # no sweep: what the actors did before they were ended (a killed process's removal would never come)
    assert wait_released_holders(backend.client, run_label) == []
    assert _networks_of_run(backend, run_label, wait_s=5) == []


def _addresses(backend: DockerBackend, network: str) -> dict[str, str]:
    """Container name -> its IPv4 address on `network`."""
    found = backend.client.api.inspect_network(network)["Containers"].values()
    return {c["Name"]: c["IPv4Address"].split("/")[0] for c in found}


@pytest.mark.usefixtures("no_networks_left")
def test_one_relay_serves_many_sandboxes_that_cannot_reach_each_other(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, other_port: int
) -> None:
    spec = _spec(run_label, gateway=f"{bridge_ip}:{gateway_port}")
    handles: list[SandboxHandle] = []
    try:
        with ThreadPoolExecutor(4) as pool:  # four first creates at once race for the relay's name: one makes it
            started = [pool.submit(backend.create, spec, BASE_IMAGE) for _ in range(4)]
        handles += [f.result() for f in started if f.exception() is None]
        assert [f.exception() for f in started] == [None] * 4
        (relay,) = _relays(backend, run_label)
        for handle in handles:
            assert _get(backend, handle, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
        # another endpoint set on the same daemon (a second gateway's port) gets a relay of its own
        handles.append(backend.create(_spec(run_label, gateway=f"{bridge_ip}:{other_port}"), BASE_IMAGE))
        assert _get(backend, handles[-1], f"os.environ[{GATEWAY_URL_ENV!r}]") == "must-not-be-reached"
        assert len(_relays(backend, run_label)) == 2
        # from the first sandbox: every other sandbox, and the shared relay on their networks, are out of reach
        targets = []
        for other in handles[1:]:
            on_its_network = _addresses(backend, other.labels[L.EGRESS_NET])
            holder = f"{other.name}-net"  # the sandbox's address is its holder's (one network namespace)
            targets += [f"{on_its_network[holder]}:{port}" for port in (22, 8080)]
            targets += [f"{ip}:{gateway_port}" for name, ip in on_its_network.items() if name != holder]
        reached = _probe(backend, handles[0], targets)
        assert len(reached) == len(targets) == 12
        assert {t: r for t, r in reached.items() if r == "open"} == {}
        assert relay["Labels"][L.RUN] == run_label
    finally:
        for handle in handles:
            backend.destroy(handle)


@pytest.mark.usefixtures("no_networks_left")
def test_a_killed_relay_is_made_again_and_heals_the_sandboxes_it_served(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    spec = _spec(run_label, gateway=f"{bridge_ip}:{gateway_port}")
    gateway = f"{GATEWAY_HOSTNAME}:{gateway_port}"
    first = backend.create(spec, BASE_IMAGE)
    second = None
    try:
        (relay,) = _relays(backend, run_label)
        backend.client.api.kill(relay["Id"])  # dies: auto-removed, the first sandbox is cut off from its gateway
        deadline = time.monotonic() + 10
        while _relays(backend, run_label) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _probe(backend, first, [gateway]) != {gateway: "open"}
        second = backend.create(spec, BASE_IMAGE)  # finds no relay: makes it, and it joins every network again
        (again,) = _relays(backend, run_label)
        assert again["Id"] != relay["Id"]
        assert _get(backend, second, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
        # healed: the first sandbox reaches it again, once its kernel retries the address it failed to resolve
        deadline = time.monotonic() + 20
        while _probe(backend, first, [gateway]) != {gateway: "open"} and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _get(backend, first, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
    finally:
        for handle in (first, second):
            if handle is not None:
                backend.destroy(handle)


@pytest.mark.usefixtures("no_networks_left")
def test_sweep_takes_the_networks_of_lost_sandboxes_only(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    spec = _spec(run_label, gateway=f"{bridge_ip}:{gateway_port}")
    lost, alive = backend.create(spec, BASE_IMAGE), backend.create(spec, BASE_IMAGE)
    try:
        backend.client.api.remove_container(lost.id, force=True)  # its process died before the holder went
        assert H.sweep(backend.client, run_label) == [f"{lost.name}-net"]  # with its network
        assert _networks_of_run(backend, run_label, wait_s=0) == [alive.labels[L.EGRESS_NET]]
        assert _get(backend, alive, f"os.environ[{GATEWAY_URL_ENV!r}]") == "gateway-says-hi"
    finally:
        backend.destroy(alive)


def test_an_idle_relay_ends_by_itself(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    from harbor_ray.backends.docker.relay import Relays
    from harbor_ray.backends.egress import Endpoint

    relays = Relays(backend.client, idle_s=2)
    relay = relays.ensure(run_label, Endpoint(GATEWAY_HOSTNAME, bridge_ip, gateway_port), 600)  # no network joins
    assert relays.ensure(run_label, Endpoint(GATEWAY_HOSTNAME, bridge_ip, gateway_port), 600) == relay
    deadline = time.monotonic() + 30
    while _relays(backend, run_label) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _relays(backend, run_label) == []


_DESTROY_THEN_DIE = """
import os, sys
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker import holders as H
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BASE_IMAGE
from harbor_ray.backends.docker.config import DockerBackendConfig
backend = DockerBackend(DockerBackendConfig(holder_stock=0))
spec = SandboxSpec(run_label=sys.argv[1], image=BASE_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600, gateway=sys.argv[2])
backend.destroy(backend.create(spec, BASE_IMAGE))
os._exit(0)  # at once, as ray.kill ends an idle actor right after its release: no thread of it runs on
"""


@pytest.mark.usefixtures("no_networks_left")
def test_a_process_ending_right_after_destroy_leaves_its_network_to_the_next_sweep(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int
) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _DESTROY_THEN_DIE, run_label, f"{bridge_ip}:{gateway_port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # the daemon carries out the holder's stop it was sent (after a second's linger; then auto-removal); the
    # network's removal waited for it in a thread that died: the next sweep takes it at once (its maker is
    # gone), and the relay is off it
    deadline = time.monotonic() + 10
    while backend.client.api.containers(all=True, filters={"label": [f"{L.RUN}={run_label}", f"{L.KIND}=holder"]}):
        assert time.monotonic() < deadline, "the holder outlived its sandbox"
        time.sleep(0.1)
    H.sweep(backend.client, run_label)
    assert _networks_of_run(backend, run_label) == []
    (relay,) = _relays(backend, run_label)
    assert list(backend.client.api.inspect_container(relay["Id"])["NetworkSettings"]["Networks"]) == ["bridge"]


def test_a_relay_that_never_comes_up_fails_the_start_loud_and_leaves_nothing(
    backend: DockerBackend, run_label: str, bridge_ip: str, gateway_port: int, no_networks_left: None
) -> None:
    from harbor_ray.backends.docker.relay import relay_name
    from harbor_ray.backends.egress import Endpoint
    from harbor_ray.backends.images import BUSYBOX_IMAGE

    # something else holds the relay's name, runs a moment and never listens: the start must say so, not hang
    name = relay_name(run_label, Endpoint(GATEWAY_HOSTNAME, bridge_ip, gateway_port), 600)
    squatter = backend.client.api.create_container(
        BUSYBOX_IMAGE, name=name, command=["sleep", "2"], labels={L.RUN: run_label}
    )
    backend.client.api.start(squatter["Id"])
    try:
        with pytest.raises(SandboxStartError, match=f"relay {name} did not come up") as e:
            backend.create(_spec(run_label, gateway=f"{bridge_ip}:{gateway_port}"), BASE_IMAGE)
        assert "\n" not in str(e.value)
        assert [h.name for h in backend.list(L.selector(run_label))] == [name]  # the squatter only: no sandbox
    finally:
        backend.client.api.remove_container(squatter["Id"], force=True)
