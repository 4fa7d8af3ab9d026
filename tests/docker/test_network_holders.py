"""Network holders on the real engine: the stock, its claim under races, its refill, the fallback, isolation, sweeps.

A "gateway only" sandbox joins the network namespace of a holder container (docs/network.md); these tests use a
stock (`backend.holder_stock`), tests/docker/test_network.py the holders made at each start. A real HTTP server on
the host's docker0 address stands in for the gateway.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from harbor_ray import labels as L
from harbor_ray.backends import egress
from harbor_ray.backends.base import SandboxHandle, SandboxSpec
from harbor_ray.backends.docker import holders as H
from harbor_ray.backends.docker import network as N
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.egress import GATEWAY_URL_ENV
from harbor_ray.backends.images import BASE_IMAGE
from harbor_ray.errors import ConfigError, SandboxStartError

pytestmark = pytest.mark.docker

STOCK = 6
PROBE = """
import json, socket, sys
def probe(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1.5).close()
        return "open"
    except OSError as e:
        return type(e).__name__
print(json.dumps({t: probe(t) for t in sys.argv[1:]}))
"""


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "15")
        self.end_headers()
        self.wfile.write(b"gateway-says-hi")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def backend() -> DockerBackend:
    return DockerBackend(DockerBackendConfig(holder_stock=STOCK))


@pytest.fixture(scope="module")
def gateway(backend: DockerBackend) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer((N.host_address(backend.client), 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"{server.server_address[0]}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _spec(run_label: str, gateway: str) -> SandboxSpec:
    return SandboxSpec(run_label=run_label, image=BASE_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600, gateway=gateway)


def _run(backend: DockerBackend, handle: SandboxHandle, code: str, *args: str) -> str:
    result = backend.exec(handle, ["python3", "-c", code, *args], timeout_s=60)
    assert result.return_code == 0, result.stderr
    return result.stdout.strip()


def _reaches_gateway(backend: DockerBackend, handle: SandboxHandle) -> bool:
    code = (
        f"import os, urllib.request; print(urllib.request.urlopen(os.environ[{GATEWAY_URL_ENV!r}], timeout=5).read())"
    )
    return "gateway-says-hi" in backend.exec(handle, ["python3", "-c", code], timeout_s=30).stdout


def _holders(backend: DockerBackend, run_label: str) -> dict[str, str]:
    """Running holders of the run: name -> id."""
    found = backend.client.api.containers(filters={"label": [f"{L.RUN}={run_label}", f"{L.KIND}=holder"]})
    return {c["Names"][0].lstrip("/"): c["Id"] for c in found}


def _stock(backend: DockerBackend, run_label: str) -> dict[str, str]:
    return {name: i for name, i in _holders(backend, run_label).items() if "-stock-" in name}


def _fill(backend: DockerBackend, run_label: str, gateway: str, n: int) -> int:
    spec = _spec(run_label, gateway)
    labels = L.sandbox_labels(run_label, pool="", owner=L.current_owner(), ttl_s=spec.ttl_s)
    return H.holders_of(backend.client).fill(labels, egress.endpoints(spec), spec.ttl_s, n)


def _wait(what: str, ok: object, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        time.sleep(0.2)


@pytest.fixture
def nothing_left(backend: DockerBackend, run_label: str) -> Iterator[None]:
    yield
    assert H.refills_done(60)  # this process's refills (one per start, a second later) are over
    H.drain(backend.client, run_label)  # the stock outlives its sandboxes by design; a run's end drains it

    def gone() -> bool:
        return not backend.client.api.networks(filters={"label": f"{L.RUN}={run_label}"})

    _wait("the run's networks are removed", gone, 15)


@pytest.mark.usefixtures("nothing_left")
def test_concurrent_starts_claim_distinct_holders_from_the_stock_which_refills(
    backend: DockerBackend, run_label: str, gateway: str
) -> None:
    assert _fill(backend, run_label, gateway, STOCK) == STOCK
    stock = _stock(backend, run_label)
    assert len(stock) == STOCK
    # each start its own client (as separate actor processes): the daemon's rename is the only lock
    backends = [DockerBackend(DockerBackendConfig(holder_stock=STOCK)) for _ in range(STOCK)]
    with ThreadPoolExecutor(STOCK) as pool:
        started = [pool.submit(b.create, _spec(run_label, gateway), BASE_IMAGE) for b in backends]
    handles = [f.result() for f in started if f.exception() is None]
    try:
        assert [f.exception() for f in started] == [None] * STOCK
        used = [h.labels[L.HOLDER] for h in handles]
        assert len(set(used)) == STOCK  # N starts, N distinct holders
        assert set(used) == set(stock.values())  # all from the stock: none had to be made on the spot
        for handle in handles:
            assert _reaches_gateway(backend, handle)
            users = backend.client.api.containers(filters={"label": f"{L.HOLDER}={handle.labels[L.HOLDER]}"})
            assert [c["Names"][0].lstrip("/") for c in users] == [handle.name]  # it serves this sandbox alone
        _wait("each holder is renamed for its sandbox", lambda: set(_holders(backend, run_label)) >= {
            f"{h.name}-net" for h in handles
        })  # fmt: skip
        # one more made per claim, a second later: the stock is back to its size
        _wait(f"the stock refills to {STOCK}", lambda: len(_stock(backend, run_label)) >= STOCK, 60)
    finally:
        for b, handle in zip(backends, handles, strict=False):
            b.destroy(handle)
    _wait("the claimed holders go with their sandboxes", lambda: set(_holders(backend, run_label)) <= {
        *_stock(backend, run_label)
    })  # fmt: skip


@pytest.mark.usefixtures("nothing_left")
def test_an_empty_stock_makes_the_holder_at_the_start(backend: DockerBackend, run_label: str, gateway: str) -> None:
    assert _stock(backend, run_label) == {}
    handle = backend.create(_spec(run_label, gateway), BASE_IMAGE)
    try:
        assert _reaches_gateway(backend, handle)
        holder = backend.client.api.inspect_container(handle.labels[L.HOLDER])
        assert time.time() - int(holder["Config"]["Labels"][L.CREATED]) < 60  # made for it, not from a stock
        _wait("one stock holder is made after the claim", lambda: len(_stock(backend, run_label)) == 1)
    finally:
        backend.destroy(handle)


@pytest.mark.usefixtures("nothing_left")
def test_a_sandbox_shares_only_the_network_and_reaches_no_other_sandbox(
    backend: DockerBackend, run_label: str, gateway: str
) -> None:
    _fill(backend, run_label, gateway, 2)
    first, second = (backend.create(_spec(run_label, gateway), BASE_IMAGE) for _ in range(2))
    try:
        # the holder's processes (its sleep outlives the TTL: 1260 s here) are not in the sandbox's pid namespace
        ps = "import os; print([open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') if p.isdigit()])"
        assert "1260" not in _run(backend, first, ps)
        info = backend.client.api.inspect_container(first.id)["HostConfig"]
        assert (info["PidMode"], info["IpcMode"], info["UTSMode"]) == ("", "private", "")
        # the second sandbox listens on 8080: it reaches itself there, the first reaches neither it nor the relay's
        # addresses on its network, on any port
        serve = "import subprocess; subprocess.Popen(['python3', '-m', 'http.server', '8080'], cwd='/tmp')"
        backend.exec(second, ["python3", "-c", serve], timeout_s=30)
        assert json.loads(_run(backend, second, PROBE, "127.0.0.1:8080")) == {"127.0.0.1:8080": "open"}
        found = backend.client.api.inspect_network(second.labels[L.EGRESS_NET])["Containers"].values()
        addresses = [c["IPv4Address"].split("/")[0] for c in found]
        assert len(addresses) == 2  # its holder (its address) and the relay
        port = gateway.rsplit(":", 1)[1]
        targets = [f"{a}:{p}" for a in addresses for p in (8080, port, 22)]
        reached = json.loads(_run(backend, first, PROBE, *targets))
        assert {t: r for t, r in reached.items() if r == "open"} == {}
        assert _reaches_gateway(backend, first)
        assert _reaches_gateway(backend, second)
    finally:
        backend.destroy(first)
        backend.destroy(second)


@pytest.mark.usefixtures("nothing_left")
def test_a_holder_that_died_or_serves_another_sandbox_fails_the_start_loud(
    backend: DockerBackend, run_label: str, gateway: str
) -> None:
    spec = _spec(run_label, gateway)
    holders = H.holders_of(backend.client)
    handle = backend.create(spec, BASE_IMAGE)
    try:
        claimed = H.Holder(handle.labels[L.HOLDER], "x", handle.labels[L.EGRESS_NET], [], [], run_label, 600)
        with pytest.raises(SandboxStartError, match="is shared by"):  # as if a second sandbox had claimed it
            holders.settle(claimed, "another-sandbox")
        backend.client.api.kill(handle.labels[L.HOLDER])  # its namespace's holder dies: the network is gone
        with pytest.raises(SandboxStartError, match="is not running: the sandbox would have no network"):
            holders.settle(claimed, handle.name)
        assert not _reaches_gateway(backend, handle)
    finally:
        backend.destroy(handle)


_MAKE_STOCK_THEN_DIE = """
import os, sys
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BASE_IMAGE
backend = DockerBackend(DockerBackendConfig(holder_stock=2))
spec = SandboxSpec(run_label=sys.argv[1], image=BASE_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600, gateway=sys.argv[2])
lost = backend.create(spec, BASE_IMAGE)
from harbor_ray.backends.docker import holders as H
from harbor_ray.backends import egress
from harbor_ray import labels as L
labels = L.sandbox_labels(sys.argv[1], pool="", owner=L.current_owner(), ttl_s=600)
H.holders_of(backend.client).fill(labels, egress.endpoints(spec), 600, 2)
backend.client.api.remove_container(lost.id, force=True)  # the sandbox is lost, its holder is not
print(lost.name, flush=True)
os._exit(0)  # ends as a killed actor: its stock and the lost sandbox's holder stay
"""


def test_the_sweep_takes_stock_of_ended_processes_and_holders_of_lost_sandboxes(
    backend: DockerBackend, run_label: str, gateway: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_STOCK_THEN_DIE, run_label, gateway],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lost = done.stdout.strip()
    _wait("the lost sandbox's holder is renamed", lambda: f"{lost}-net" in _holders(backend, run_label), 10)
    dead_stock = set(_stock(backend, run_label))
    assert len(dead_stock) >= 2
    alive = backend.create(_spec(run_label, gateway), BASE_IMAGE)  # claims one of the dead process's stock
    try:
        unclaimed = dead_stock & set(_holders(backend, run_label))
        assert len(unclaimed) == len(dead_stock) - 1
        swept = H.sweep(backend.client, run_label)
        assert set(swept) >= {f"{lost}-net", *unclaimed}  # the lost sandbox's holder, the ended maker's stock
        assert alive.labels[L.HOLDER] in _holders(backend, run_label).values()  # a live sandbox's holder stays
        assert _reaches_gateway(backend, alive)
    finally:
        backend.destroy(alive)
    assert H.refills_done(60)
    H.drain(backend.client, run_label)  # this process's refill
    _wait("nothing of the run is left", lambda: not backend.client.api.networks(
        filters={"label": f"{L.RUN}={run_label}"}
    ) and not _holders(backend, run_label), 15)  # fmt: skip


@pytest.mark.usefixtures("nothing_left")
def test_by_default_the_stock_grows_to_the_largest_burst_and_no_further(run_label: str, gateway: str) -> None:
    """The default size is the daemon's slots (16): the stock is what the bursts claimed, not 16 idle holders."""
    default = DockerBackendConfig()
    assert default.holder_stock is None
    assert default.holder_stock_size() == default.slots == 16
    looker = DockerBackend(default)

    def burst(n: int) -> tuple[list[str], list[str]]:
        """n concurrent starts, each its own client (as actor processes); their holders' ids and the stock's
        ids before, then everything destroyed."""
        before = list(_stock(looker, run_label).values())
        backends = [DockerBackend(default) for _ in range(n)]
        with ThreadPoolExecutor(n) as pool:
            started = [pool.submit(b.create, _spec(run_label, gateway), BASE_IMAGE) for b in backends]
        handles = [f.result() for f in started if f.exception() is None]
        try:
            assert [f.exception() for f in started] == [None] * n
            return [h.labels[L.HOLDER] for h in handles], before
        finally:
            for b, handle in zip(backends, handles, strict=False):
                b.destroy(handle)
            assert H.refills_done(60)

    used, before = burst(2)
    assert before == []  # an empty stock: both made at the start
    assert len(set(used)) == 2
    assert len(_stock(looker, run_label)) == 2  # each claim replaced, no more
    used, before = burst(2)
    assert set(used) == set(before)  # the second burst of 2 came from the stock
    assert len(_stock(looker, run_label)) == 2
    used, before = burst(3)  # a larger burst: 2 from the stock, 1 made; the stock grows to 3
    assert len(set(used) & set(before)) == 2
    assert len(_stock(looker, run_label)) == 3


def test_holder_stock_must_be_a_count() -> None:
    with pytest.raises(ConfigError, match=r"^backend\.holder_stock: a count of 0 or more") as e:
        DockerBackendConfig(holder_stock=-1).validate()
    assert "\n" not in str(e.value)
    for bad in (True, "auto", 2.5):
        with pytest.raises(ConfigError, match=r"^backend\.holder_stock: .*null: backend\.slots"):
            DockerBackendConfig(holder_stock=bad).validate()  # type: ignore[arg-type]
    DockerBackendConfig(holder_stock=None).validate()
    DockerBackendConfig(holder_stock=0).validate()
