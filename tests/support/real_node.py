"""A real single-node Kubernetes 1.20 cluster on this machine, for the k8s_real tier and the benches.

etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kubelet (its built-in dockershim on the
local Docker Engine), all built by `scripts/k8s_harness.sh prepare` from Debian's `kubernetes` source.
Ports are picked at start, the PKI is made for the session (one CA; serving certs for the apiserver and
the kubelet; a client cert per component; the admin and "limited" bearer tokens of `k8s_cluster`), and
`running_real_node` yields the same `Cluster` as the test-kubelet harness, so a test runs against either.

What it does to the shared machine, and how it is kept harmless:
- the node's address is docker0's (the kubelet refuses a loopback node IP; docker0 is local to this
  machine and not on its outside network); the kubelet's port there requires client certs;
- image GC is off and the eviction thresholds are out of reach (a few KiB free), so this kubelet never
  deletes an image or evicts because of what other users do with the engine;
- one real node per machine at a time (a flock): a second dockershim kubelet on the same engine would
  treat the first one's containers as orphans and kill them;
- teardown removes only this kubelet's containers (see `_our_containers`) and mounts (under its root
  dir), and the pod log dirs of its pods. The 1.20 kubelet still writes to the fixed host paths
  /var/lib/kubelet/device-plugins, /var/log/pods and /var/log/containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from support.certs import openssl
from support.k8s_cluster import Cluster, etcd_argv, write_kubeconfig
from support.procs import HarnessError, die_with_parent, free_port, stop, tail, wait_ready

# The kubelet's pod pids limit on this node (KubeletConfiguration.podPidsLimit): the sandbox's default
# pids_limit, which a 1.20 pod spec has no field for.
POD_PIDS_LIMIT = 512
NAMESPACE_PREFIX = "hrr-"  # every pod of this harness lives in a namespace hrr-<session>
NODE_LABELS = {"harbor-ray-test/node": "1", "harbor-ray-test/real": "1"}
LOCK = Path(os.environ.get("HARBOR_RAY_CACHE", Path.home() / ".cache" / "harbor_ray")) / "k8s-real-node.lock"
LOCK_WAIT_S = 900.0
DOCKERSHIM_TYPE = "io.kubernetes.docker.type"  # on every container a dockershim kubelet makes


def audit_counts(cluster: Cluster) -> dict[str, int]:
    """The admin user's requests so far, from the real node's audit log: {"<verb> <resource>[/<sub>]": n}."""
    out: dict[str, int] = {}
    log = cluster.workdir / "audit.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        ev = json.loads(line)
        ref = ev.get("objectRef") or {}
        key = f"{ev['verb']} {ref.get('resource', ev.get('requestURI', ''))}" + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        out[key] = out.get(key, 0) + 1
    return out


def docker0_ip() -> str:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, check=False)
    m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out.stdout)
    if not m:
        msg = f"no IPv4 address on docker0 (the real node's address): {out.stdout or out.stderr}"
        raise HarnessError(msg)
    return m.group(1)


def _cert(d: Path, name: str, subject: str, usage: str, san: str = "") -> None:
    ext = f"basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n" + (f"subjectAltName={san}\n" if san else "")
    (d / f"{name}.ext").write_text(ext)
    openssl(
        d, "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", f"{name}.key", "-out", f"{name}.csr"
    )
    openssl(d, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")  # fmt: skip


def real_node_pki(d: Path, node: str, node_ip: str) -> None:
    """ca; serving certs for the apiserver and the kubelet; client certs for the components; sa.key."""
    openssl(d, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=harbor-ray-real-ca",
            "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    names = "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    _cert(d, "apiserver", "/CN=kube-apiserver", "serverAuth", f"IP:127.0.0.1,IP:10.96.0.1,{names}")
    _cert(d, "kubelet-serving", f"/CN={node}", "serverAuth", f"IP:{node_ip},IP:127.0.0.1,DNS:localhost,DNS:{node}")
    _cert(d, "apiserver-kubelet-client", "/CN=kube-apiserver-kubelet-client/O=system:masters", "clientAuth")
    _cert(d, "kubelet", f"/CN=system:node:{node}/O=system:nodes", "clientAuth")
    _cert(d, "kcm", "/CN=system:kube-controller-manager", "clientAuth")
    _cert(d, "scheduler", "/CN=system:kube-scheduler", "clientAuth")
    openssl(d, "genrsa", "-out", "sa.key", "2048")


def _cert_kubeconfig(path: Path, server: str, d: Path, user: str) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(d / "ca.crt")}}],
        "users": [{"name": "u", "user": {"client-certificate": str(d / f"{user}.crt"),
                                         "client-key": str(d / f"{user}.key")}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }  # fmt: skip
    path.write_text(json.dumps(cfg))
    return path


def kubelet_config(d: Path, node_ip: str, port: int, healthz: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node_ip,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz,
        "tlsCertFile": str(d / "kubelet-serving.crt"),
        "tlsPrivateKeyFile": str(d / "kubelet-serving.key"),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(d / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        # The engine is shared: never garbage-collect its images, never evict for what others use.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "1Mi",
            "nodefs.available": "1Ki",
            "nodefs.inodesFree": "1",
            "imagefs.available": "1Ki",
            "imagefs.inodesFree": "1",
        },
        "podPidsLimit": POD_PIDS_LIMIT,
        "serializeImagePulls": False,
        "syncFrequency": "10s",
        "fileCheckFrequency": "20s",
        "nodeStatusUpdateFrequency": "10s",
    }


def remove_pod_logs(ours: Callable[[str], bool], uids: Collection[str] = ()) -> None:
    """The 1.20 kubelet's pod logs, /var/log/pods/<ns>_<pod>_<uid>/, linked from /var/log/containers/
    <pod>_<ns>_<container>-<id>.log: those of namespaces `ours` accepts, or of the given pod UIDs."""
    pods, links = Path("/var/log/pods"), Path("/var/log/containers")
    for d in pods.iterdir() if pods.is_dir() else []:
        ns, _, rest = d.name.partition("_")
        if ours(ns) or rest.rpartition("_")[2] in uids:
            subprocess.run(["rm", "-rf", str(d)], check=False)
    for link in links.iterdir() if links.is_dir() else []:
        parts = link.name.split("_")
        if link.is_symlink() and len(parts) >= 3 and ours(parts[1]):
            with contextlib.suppress(OSError):
                link.unlink()


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """One real node per machine: wait (LOCK_WAIT_S at most) for another session's to end."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with LOCK.open("a+") as f:
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"another session's real node held {LOCK} for {LOCK_WAIT_S:g}s"
                    raise HarnessError(msg) from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class RealNode:
    """The processes and bookkeeping of one real node; `cluster` is what tests use."""

    def __init__(self, workdir: Path, binaries: dict[str, str]) -> None:
        self.wd, self.bin = workdir, binaries
        self.session = secrets.token_hex(4)
        self.node = f"harbor-ray-real-{self.session}"
        self.namespace = f"{NAMESPACE_PREFIX}{self.session}"
        self.root = workdir / "kubelet-root"
        self.shim_root = workdir / "dockershim"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.pod_uids: set[str] = set()
        self.cluster: Cluster | None = None
        self.started_s = 0.0

    # -- start ---------------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.wd / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.wd, preexec_fn=die_with_parent)
        self.procs[name] = proc
        return proc

    def start(self) -> Cluster:
        t0 = time.monotonic()
        wd, b = self.wd, self.bin
        node_ip = docker0_ip()
        real_node_pki(wd, self.node, node_ip)
        admin, limited = secrets.token_hex(16), secrets.token_hex(16)
        (wd / "tokens.csv").write_text(f'{admin},admin,admin-uid,"system:masters"\n{limited},limited,limited-uid\n')
        etcd_port, peer, api_port, kubelet_port, healthz, kcm_port, sched_port = (free_port() for _ in range(7))
        server = f"https://127.0.0.1:{api_port}"
        ca = wd / "ca.crt"
        self.cluster = cluster = Cluster(
            server,
            ca,
            admin,
            limited,
            write_kubeconfig(wd / "kubeconfig", server, ca, admin, self.namespace),
            write_kubeconfig(wd / "limited.kubeconfig", server, ca, limited, self.namespace),
            self.namespace,
            self.node,
            wd,
            self.procs,
            real=True,
        )
        self.sweep_previous_sessions()
        etcd = self.spawn(
            "etcd",
            etcd_argv(b["ETCD"], wd / "etcd", etcd_port, peer),
        )
        etcd_up = f"http://127.0.0.1:{etcd_port}/health"
        wait_ready("etcd", lambda: urllib.request.urlopen(etcd_up, timeout=2).status == 200, 30, etcd, wd / "etcd.log")
        api = self.spawn(
            "apiserver",
            [
                b["KUBE_APISERVER"],
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                "--insecure-port=0",
                "--tls-cert-file=apiserver.crt",
                "--tls-private-key-file=apiserver.key",
                "--client-ca-file=ca.crt",
                "--token-auth-file=tokens.csv",
                "--kubelet-client-certificate=apiserver-kubelet-client.crt",
                "--kubelet-client-key=apiserver-kubelet-client.key",
                "--kubelet-certificate-authority=ca.crt",
                "--kubelet-preferred-address-types=InternalIP",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-account-key-file=sa.key",
                "--service-account-signing-key-file=sa.key",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--profiling=false",
                f"--audit-policy-file={self.audit_policy()}",
                f"--audit-log-path={wd / 'audit.log'}",
                "--audit-log-format=json",
            ],
        )
        wait_ready("kube-apiserver", lambda: cluster.request("GET", "/readyz")[0] == 200, 90, api, wd / "apiserver.log")
        kcm_cfg = _cert_kubeconfig(wd / "kcm.kubeconfig", server, wd, "kcm")
        self.spawn(
            "controller-manager",
            [
                b["KUBE_CONTROLLER_MANAGER"],
                f"--kubeconfig={kcm_cfg}",
                f"--authentication-kubeconfig={kcm_cfg}",
                f"--authorization-kubeconfig={kcm_cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={kcm_port}",
                "--port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                "--service-account-private-key-file=sa.key",
                "--root-ca-file=ca.crt",
                "--cluster-signing-cert-file=ca.crt",
                "--cluster-signing-key-file=ca.key",
                "--controllers=*,-nodeipam,-route,-cloud-node-lifecycle",
            ],
        )
        sched_cfg = _cert_kubeconfig(wd / "scheduler.kubeconfig", server, wd, "scheduler")
        self.spawn(
            "scheduler",
            [
                b["KUBE_SCHEDULER"],
                f"--kubeconfig={sched_cfg}",
                f"--authentication-kubeconfig={sched_cfg}",
                f"--authorization-kubeconfig={sched_cfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={sched_port}",
                "--port=0",
                "--leader-elect=false",
            ],
        )
        self.root.mkdir()
        (wd / "kubelet-config.json").write_text(json.dumps(kubelet_config(wd, node_ip, kubelet_port, healthz)))
        kubelet = self.spawn(
            "kubelet",
            [
                b["KUBELET"],
                f"--config={wd / 'kubelet-config.json'}",
                f"--kubeconfig={_cert_kubeconfig(wd / 'kubelet.kubeconfig', server, wd, 'kubelet')}",
                f"--root-dir={self.root}",
                f"--cert-dir={wd / 'kubelet-certs'}",
                f"--hostname-override={self.node}",
                f"--node-ip={node_ip}",
                "--container-runtime=docker",
                "--docker-endpoint=unix:///var/run/docker.sock",
                f"--pod-infra-container-image={b['PAUSE_IMAGE']}",
                f"--experimental-dockershim-root-directory={self.shim_root}",
                "--node-labels=" + ",".join(f"{k}={v}" for k, v in NODE_LABELS.items()),
                # dead containers of deleted pods go at the kubelet's next container GC (once a minute)
                "--maximum-dead-containers-per-container=0",
                "--minimum-container-ttl-duration=0s",
            ],
        )
        wait_ready("kubelet (node Ready)", self.node_ready, 120, kubelet, wd / "kubelet.log")
        code, body = cluster.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}},
        )
        if code != 201:
            msg = f"creating namespace {self.namespace}: {code} {body}"
            raise HarnessError(msg)
        for ns in ("default", self.namespace):  # the ServiceAccount admission refuses pods until it exists
            wait_ready(
                f"default ServiceAccount of {ns}",
                lambda ns=ns: cluster.request("GET", f"/api/v1/namespaces/{ns}/serviceaccounts/default")[0] == 200,
                60,
                self.procs["controller-manager"],
                wd / "controller-manager.log",
            )
        self.started_s = time.monotonic() - t0
        return cluster

    def audit_policy(self) -> Path:
        """Every request of the admin user (the tests' and benches' token; components use their own certs), once."""
        policy = {
            "apiVersion": "audit.k8s.io/v1",
            "kind": "Policy",
            "omitStages": ["RequestReceived", "ResponseStarted"],
            "rules": [{"level": "Metadata", "users": ["admin"]}, {"level": "None"}],
        }
        path = self.wd / "audit-policy.json"
        path.write_text(json.dumps(policy))
        return path

    def node_ready(self) -> bool:
        assert self.cluster is not None
        code, body = self.cluster.request("GET", f"/api/v1/nodes/{self.node}")
        if code != 200:
            return False
        return any(c["type"] == "Ready" and c["status"] == "True" for c in body["status"].get("conditions") or [])

    # -- which containers are ours ---------------------------------------------------------------

    def _our_containers(self, client: Any) -> list[str]:
        """dockershim containers of THIS kubelet: a bind from its root dir (app containers), a sandbox
        checkpoint in its dockershim dir (pause containers), or a pod UID this session has seen."""
        checkpoints = {p.name for p in (self.shim_root / "sandbox").glob("*")} if self.shim_root.exists() else set()
        ours: list[str] = []
        for c in client.api.containers(all=True, filters={"label": DOCKERSHIM_TYPE}):
            labels = c.get("Labels") or {}
            binds = [m.get("Source", "") for m in c.get("Mounts") or []]
            if (
                any(src.startswith(f"{self.root}/") for src in binds)
                or c["Id"] in checkpoints
                or labels.get("io.kubernetes.pod.uid") in self.pod_uids
                or labels.get("io.kubernetes.pod.namespace") == self.namespace
            ):
                ours.append(c["Id"])
        return ours

    def record_pod_uids(self) -> None:
        if self.cluster is None:
            return
        with contextlib.suppress(Exception):
            code, body = self.cluster.request("GET", "/api/v1/pods")
            if code == 200:
                self.pod_uids |= {p["metadata"]["uid"] for p in body["items"]}

    def sweep_previous_sessions(self) -> None:
        """Containers of an earlier session of this harness that died without its teardown (we hold the lock:
        no other real node runs): their pods' namespace is hrr-<session>, never ours."""
        import docker

        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
        try:
            for c in client.api.containers(all=True, filters={"label": DOCKERSHIM_TYPE}):
                ns = (c.get("Labels") or {}).get("io.kubernetes.pod.namespace", "")
                if self.earlier_session(ns):
                    with contextlib.suppress(docker.errors.NotFound):
                        client.api.remove_container(c["Id"], force=True)
        finally:
            client.close()
        remove_pod_logs(self.earlier_session)

    def earlier_session(self, namespace: str) -> bool:
        return bool(re.fullmatch(rf"{NAMESPACE_PREFIX}[0-9a-f]{{8}}", namespace)) and namespace != self.namespace

    # -- stop ------------------------------------------------------------------------------------

    def stop(self) -> None:
        import docker

        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
        try:
            self.record_pod_uids()
            if self.cluster is not None and "apiserver" in self.procs and self.procs["apiserver"].poll() is None:
                with contextlib.suppress(Exception):  # the kubelet stops the pods' containers
                    code, body = self.cluster.request("GET", "/api/v1/pods")
                    for p in body.get("items", []) if code == 200 else []:
                        meta = p["metadata"]
                        self.cluster.request(
                            "DELETE",
                            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
                        )
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    mine = set(self._our_containers(client))
                    if not [c for c in client.api.containers(filters={"label": DOCKERSHIM_TYPE}) if c["Id"] in mine]:
                        break
                    time.sleep(0.5)
            mine = set(self._our_containers(client))  # before the kubelet stops: it knows its checkpoints
            for name in ("kubelet", "scheduler", "controller-manager", "apiserver", "etcd"):
                if name in self.procs:
                    stop(self.procs[name], 20)
            for cid in mine | set(self._our_containers(client)):
                with contextlib.suppress(docker.errors.NotFound):
                    client.api.remove_container(cid, force=True)
        finally:
            client.close()
        remove_pod_logs(lambda ns: ns == self.namespace, self.pod_uids)
        # The kubelet bind-mounts its root dir on itself and mounts tmpfs for secret volumes under it.
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for m in sorted((m for m in mounts if m == str(self.root) or m.startswith(f"{self.root}/")), reverse=True):
            subprocess.run(["umount", m], capture_output=True, check=False)

    def logs(self) -> str:
        return "\n".join(f"--- {n}.log\n{tail(self.wd / f'{n}.log')}" for n in ("kubelet", "controller-manager"))


@contextlib.contextmanager
def running_real_node(workdir: Path, binaries: dict[str, str]) -> Iterator[Cluster]:
    """Start the real node in workdir; at exit remove its pods' containers and mounts, and stop it."""
    with machine_lock():
        node = RealNode(workdir, binaries)
        try:
            yield node.start()
        finally:
            node.stop()
