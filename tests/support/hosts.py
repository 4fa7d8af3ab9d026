"""Several hosts on one machine: network namespaces, each with its own dockerd and its own Ray worker node.

    from support.hosts import TestHosts

    with TestHosts(n=2, slots=2, local_slots=2, runtimes={"h2": {"runsc": str(runsc_wrapper(d))}}) as hosts:
        hosts.connect()                       # ray.init on the head (root namespace, the bridge's address)
        h1 = hosts["h1"]                       # TestHost: address, docker_url (unix), tls_url (tcp://<addr>:2376)
        h1.client().containers.list()          # that host's own daemon
        hosts.pool_hosts()                     # pool.hosts entries: local + every host over TLS
        h1.cut(); h1.restore()                 # the host drops off the network (Ray and daemon), and back
        h1.kill_raylet(); h1.start_ray()       # its Ray node dies (the GCS sees a lost node), and a new one joins

Layout: the head node (root namespace, `harbor-ray/host=local`, the machine's main daemon, `local_slots`
units of `sandbox_slot`) at the bridge's address; host `h<i>` in namespace `hrh-<id>-h<i>` at `10.214.N.(10+i)`
with its dockerd (unix socket and mutual TLS on :2376, `support.dockerd`) and a Ray node
(`harbor-ray/host=h<i>`, `slots` units of `sandbox_slot`, metrics on :`METRICS_PORT`) whose processes have
DOCKER_HOST at that daemon's socket, so a sandbox actor on it uses its own host's daemon.

Only loopback, the bridge's and the namespaces' addresses are contacted. Names carry the instance's id, so
runs side by side never meet; `close()` (also on a failed start) removes the Ray nodes, dockerds, their
directories, namespaces, veths, bridge and iptables rule; at start, what dead instances left is swept.
Needs root, iproute2, nsenter, iptables. Start it from the main thread (its children die with that thread).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE
from support.certs import CLIENT, make_ca, make_leaf
from support.dockerd import Dockerd, main_storage_driver, remove_tree
from support.netns import PREFIX, Network, leftover_idents, sweep
from support.procs import HarnessError, tail
from support.raynode import HEALTH_ENV, RayNode, node_env

HOST_LABEL = "harbor-ray/host"  # the Ray node label naming a test host
RESOURCE = "sandbox_slot"
METRICS_PORT = 9400  # each host node's Ray metrics endpoint, http://<address>:9400/metrics (its own namespace)
WORK = Path("/tmp")  # short: unix socket paths (dockerd's, Ray's) are limited to 107 bytes
_NODE_TIMEOUT_S = 120.0


class TestHost:
    """One test host: a namespace with its dockerd and its Ray node."""

    __test__ = False  # not a pytest class

    def __init__(self, owner: TestHosts, name: str, index: int, dockerd: Dockerd | None, node: RayNode) -> None:
        self.owner = owner
        self.name = name
        self.index = index
        self.dockerd = dockerd
        self.node = node
        self.address = node.address

    @property
    def ns(self) -> str:
        assert self.dockerd is not None, "the local host has no namespace"
        return self.dockerd.ns

    @property
    def docker_url(self) -> str:
        return self.dockerd.url if self.dockerd else "unix:///var/run/docker.sock"

    @property
    def tls_url(self) -> str:
        assert self.dockerd is not None, "the local host's daemon has no TLS listener"
        return self.dockerd.tls_url

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.owner.metrics_port(self)}/metrics"

    def client(self, timeout: float = 60.0) -> Any:
        """A docker SDK client on this host's daemon (its unix socket)."""
        import docker

        return docker.DockerClient(base_url=self.docker_url, timeout=int(timeout))

    def pool_entry(self, slots: int | None = None, **extra: Any) -> dict[str, Any]:
        """This host as a `pool.hosts` entry: a remote daemon over TLS whose actors run on the host's own Ray node
        (the local host: its node's own daemon). Actors of a url entry without node labels would spread over
        every node offering `sandbox_slot`, taking the units a node-local host counts on."""
        slots = slots or self.owner.slots_of(self)
        labels = {"node_labels": {HOST_LABEL: self.name}}
        if self.dockerd is None:
            return {"name": self.name, **labels, "slots": slots, **extra}
        return {"name": self.name, "url": self.tls_url, **labels, "slots": slots, **extra}

    def node_entry(self, slots: int | None = None) -> dict[str, Any]:
        """This host as a `pool.hosts` entry of its Ray node's own daemon (node labels, no url)."""
        return {"name": self.name, "node_labels": {HOST_LABEL: self.name}, "slots": slots or self.owner.slots_of(self)}

    # -- faults ----------------------------------------------------------------------------------------------

    def cut(self) -> None:
        """The host drops off the network, both ways (Ray node and daemon alike)."""
        self.owner.network.cut(self.name)

    def restore(self) -> None:
        self.owner.network.restore(self.name)

    def block_daemon(self) -> None:
        """The daemon's TLS port drops every packet (connections hang); Ray still reaches the host."""
        self.owner.network.block_port(self.name, 2376)

    def unblock_daemon(self) -> None:
        self.owner.network.unblock_port(self.name, 2376)

    def stop_docker(self) -> None:
        """A clean stop of the host's dockerd (its containers stop; auto-remove ones go)."""
        self._daemon().stop()

    def kill_docker(self) -> None:
        """SIGKILL the host's dockerd and containerd (its containers' shims live on until `start_docker`)."""
        self._daemon().kill()

    def freeze_docker(self) -> None:
        """The host's dockerd stops answering (SIGSTOP) while its sockets still accept; `thaw_docker` ends it."""
        self._daemon().freeze()

    def thaw_docker(self) -> None:
        self._daemon().thaw()

    def start_docker(self) -> None:
        self._daemon().start()

    def kill_raylet(self) -> None:
        """The host's Ray node dies at once (SIGKILL to its raylet; its workers and agents follow)."""
        self.node.kill_raylet()

    def stop_ray(self) -> None:
        self.node.stop()

    def start_ray(self) -> str:
        """A fresh Ray node for this host (after `kill_raylet`, or after a cut got it marked dead); its id."""
        self.node.stop()  # whatever is left of the old one
        self.node.start()
        return self.owner.wait_node(self, exclude={self.node.node_id})

    def _daemon(self) -> Dockerd:
        assert self.dockerd is not None, "the local host's daemon is the machine's own; it is not ours to stop"
        return self.dockerd


class TestHosts:
    """N hosts (namespaces with a dockerd and a Ray node each) plus the head node; a context manager."""

    __test__ = False

    def __init__(
        self,
        n: int = 2,
        *,
        slots: int = 2,
        local_slots: int = 2,
        runtimes: dict[str, dict[str, str]] | None = None,
        images: tuple[str, ...] = (BUSYBOX_IMAGE, BASE_IMAGE),
        head_cpus: int = 2,
    ) -> None:
        self.n = n
        self.slots = slots
        self.local_slots = local_slots
        self.runtimes = runtimes or {}
        self.images = images
        self.head_cpus = head_cpus
        self.ident = secrets.token_hex(3)[:5]
        self.root = WORK / f"{PREFIX}-{self.ident}"
        self.network: Network
        self.hosts: dict[str, TestHost] = {}
        self.head_address = ""
        self._head_ports: dict[str, int] = {}
        self._started = False

    # -- access ----------------------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> TestHost:
        return self.hosts[name]

    @property
    def local(self) -> TestHost:
        return self.hosts["local"]

    @property
    def remote(self) -> list[TestHost]:
        """The namespace hosts (not the head's local one)."""
        return [h for h in self.hosts.values() if h.dockerd is not None]

    def slots_of(self, host: TestHost) -> int:
        return self.local_slots if host.dockerd is None else self.slots

    def metrics_port(self, host: TestHost) -> int:
        return self._head_ports["metrics-export-port"] if host.dockerd is None else METRICS_PORT

    def pool_hosts(self, *, local: bool = True) -> list[dict[str, Any]]:
        """`pool.hosts`: the local daemon (the head node's) and every namespace host's daemon over TLS."""
        hosts = [self.local] if local and self.local_slots else []
        return [h.pool_entry() for h in [*hosts, *self.remote]]

    @property
    def client_certs(self) -> Path:
        """ca.pem, cert.pem, key.pem of a client every host's daemon trusts (`backend.tls.cert_path`)."""
        return self.root / "tls" / "client"

    # -- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> TestHosts:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        sweep_stale()
        self.root.mkdir(mode=0o700)
        (self.root / "owner").write_text(f"{os.getpid()} {psutil.Process().create_time()}\n")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        from support.procs import free_port

        missing = [ref for ref in self.images if not _has_image(ref)]
        if missing:
            msg = f"images {missing} are not on the main daemon; run `python -m harbor_ray images`"
            raise HarnessError(msg)
        self.network = Network(self.ident)
        tls = self._certs()
        temp = self.root / "ray"
        head_port = free_port()
        self.head_address = f"{self.network.gateway}:{head_port}"
        flags = ("node-manager-port", "object-manager-port", "ray-client-server-port", "dashboard-agent-listen-port",
                 "dashboard-agent-grpc-port", "runtime-env-agent-port", "metrics-export-port")  # fmt: skip
        self._head_ports = {flag: free_port() for flag in flags}
        head = RayNode(
            "local", self.root / "ray-local.log", head=self.head_address, address=self.network.gateway, ns=None,
            labels={HOST_LABEL: "local"}, resources={RESOURCE: self.local_slots} if self.local_slots else {},
            num_cpus=self.head_cpus, object_store_mb=200, temp_dir=temp, ports=self._head_ports,
            env=node_env(**HEALTH_ENV),
        )  # fmt: skip
        head.start()
        self.hosts["local"] = TestHost(self, "local", 0, None, head)
        driver = main_storage_driver()
        for i in range(1, self.n + 1):
            name = f"h{i}"
            member = self.network.add(name, i)
            dockerd = Dockerd(
                self.root / name, member.ns, member.address, tls / name, storage_driver=driver,
                runtimes=self.runtimes.get(name),
            )  # fmt: skip
            node = RayNode(
                name, self.root / f"ray-{name}.log", head=self.head_address, address=member.address, ns=member.ns,
                labels={HOST_LABEL: name}, resources={RESOURCE: self.slots}, num_cpus=0, object_store_mb=80,
                temp_dir=temp, ports={"metrics-export-port": METRICS_PORT}, env=node_env(DOCKER_HOST=dockerd.url),
            )  # fmt: skip
            self.hosts[name] = TestHost(self, name, i, dockerd, node)
        for host in self.remote:  # from this thread: a child gets SIGTERM when the thread that started it ends
            assert host.dockerd is not None
            host.dockerd.start()
        with ThreadPoolExecutor(max(1, self.n)) as pool:
            list(pool.map(lambda h: h.dockerd.load_images(list(self.images)), self.remote))
        self.connect()
        self.wait_node(self.local)
        for host in self.remote:  # one at a time: nodes on one machine pick their socket names racily
            host.node.start()
            self.wait_node(host)

    def _certs(self) -> Path:
        """One CA; a client cert (client/); per host a server cert for its address (h<i>/), in dockerd's names."""
        d = self.root / "tls"
        raw = d / "raw"
        raw.mkdir(parents=True)
        make_ca(raw, "ca", cn=f"harbor-ray-hosts-{self.ident}")
        make_leaf(raw, "client", "ca", CLIENT)
        layout = {"client": {"ca.pem": "ca.crt", "cert.pem": "client.crt", "key.pem": "client.key"}}
        for i in range(1, self.n + 1):
            address = f"{self.network.subnet}.{10 + i}"
            make_leaf(raw, f"h{i}", "ca", f"subjectAltName=IP:{address}\nextendedKeyUsage=serverAuth\n")
            layout[f"h{i}"] = {"ca.pem": "ca.crt", "server-cert.pem": f"h{i}.crt", "server-key.pem": f"h{i}.key"}
        for sub, files in layout.items():
            (d / sub).mkdir()
            for dest, src in files.items():
                shutil.copy(raw / src, d / sub / dest)
        return d

    def connect(self) -> None:
        """This process's Ray driver on the head (again, if another fixture moved it to another cluster)."""
        import ray

        if ray.is_initialized():
            if ray.get_runtime_context().gcs_address == self.head_address:
                return
            ray.shutdown()
        ray.init(address=self.head_address, _node_ip_address=self.network.gateway, log_to_driver=False, namespace=None)

    def wait_node(self, host: TestHost, exclude: Collection[str] = (), timeout: float = _NODE_TIMEOUT_S) -> str:
        """Wait until an alive Ray node of `host` (by address and label) is in the node table; its id."""
        import ray

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            host.node.check()
            for node in ray.nodes():
                labels = node.get("Labels") or {}
                if (
                    node.get("Alive")
                    and node.get("NodeManagerAddress") == host.address
                    and labels.get(HOST_LABEL) == host.name
                    and node["NodeID"] not in exclude
                ):
                    host.node.node_id = node["NodeID"]
                    return str(node["NodeID"])
            time.sleep(0.5)
        msg = f"the Ray node of {host.name} did not join within {timeout:.0f}s:\n{tail(host.node.log)}"
        raise HarnessError(msg)

    def node_alive(self, host: TestHost) -> bool:
        """Does the GCS hold the host's current node alive?"""
        import ray

        return any(n["NodeID"] == host.node_id and n.get("Alive") for n in ray.nodes())

    def close(self) -> None:
        """Remove everything: Ray nodes, dockerds (and all their containers), directories, network."""
        if not self._started:
            return
        self._started = False
        import ray

        if ray.is_initialized() and self.head_address and _gcs(ray) == self.head_address:
            with contextlib.suppress(Exception):
                ray.shutdown()
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(Exception):
                host.node.stop()
        keep = os.environ.get("HARBOR_RAY_HOSTS_LOGS")  # a directory to copy the logs to, for a post-mortem
        if keep:
            _copy_logs(self.root, Path(keep) / self.ident)
        for host in self.remote:
            with contextlib.suppress(Exception):
                host.restore()
            with contextlib.suppress(Exception):
                assert host.dockerd is not None
                host.dockerd.remove()
        if hasattr(self, "network"):
            self.network.close()
        remove_tree(self.root)
        sweep(self.ident)


def _copy_logs(root: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for log in [*root.glob("*.log"), *root.glob("h*/dockerd.log"), *root.glob("ray/session_latest/logs/*")]:
        with contextlib.suppress(OSError):
            if log.is_file():
                shutil.copy(log, dest / (f"{log.parent.name}-{log.name}" if log.name == "dockerd.log" else log.name))


def _gcs(ray: Any) -> str:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return ""


def _has_image(ref: str) -> bool:
    import docker
    import docker.errors

    try:
        docker.from_env().images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def sweep_stale() -> list[str]:
    """Remove what harness instances whose process is gone left behind (dirs, processes, mounts, network)."""
    swept = []
    dirs = {p.name.split("-", 1)[1]: p for p in WORK.glob(f"{PREFIX}-*") if p.is_dir()}
    for ident, path in dirs.items():
        if _owner_alive(path / "owner"):
            continue
        remove_tree(path)
        sweep(ident)
        swept.append(ident)
    for ident in leftover_idents() - set(dirs):
        sweep(ident)  # its directory is gone, so its owner finished or never got far
        swept.append(ident)
    return swept


def _owner_alive(owner: Path) -> bool:
    """Is the process that made this instance still there? (A directory without its owner file yet is
    an instance being made right now, unless it is old.)"""
    if not owner.exists():
        return time.time() - owner.parent.stat().st_mtime < 300
    try:
        pid, started = owner.read_text().split()
        return abs(psutil.Process(int(pid)).create_time() - float(started)) < 1.0
    except (OSError, ValueError, psutil.Error):
        return False
