"""A real kube-apiserver + etcd on loopback, with the test kubelet (support/kubelet.py), for tests and benches.

The binaries come from `scripts/k8s_harness.sh prepare` (built once per machine, cached outside the
checkout). Everything runs on ports picked at start, in a private work dir, with a CA made for the
session: the apiserver's serving cert and the kubelet's are signed by it and the kubeconfig trusts it
(the apiserver also verifies the kubelet with it). Authorization is RBAC: the admin token is in
system:masters; a second, "limited" token has no bindings at all, for checks that must fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from support.certs import kubernetes_pki
from support.procs import HarnessError, die_with_parent, free_port, stop, wait_ready

ROOT = Path(__file__).resolve().parents[2]
BUSYBOX = "harbor-ray/busybox:latest"  # both built by scripts/images.sh
BASE = "harbor-ray/base:bookworm"
# The label on every container the test kubelet makes (= node name): kubelet.py's MARKER. Not imported from
# there: the kubelet is a script with the Docker and aiohttp imports of its own.
KUBELET_MARKER = "harbor-ray-test/kubelet"


CONTROL_PLANE = ("KUBE_APISERVER", "ETCD")
REAL_NODE = (*CONTROL_PLANE, "KUBELET", "KUBE_SCHEDULER", "KUBE_CONTROLLER_MANAGER", "KUBECTL", "PAUSE_IMAGE")


def prepare_binaries(scope: str = "control-plane") -> dict[str, str]:
    """Run `scripts/k8s_harness.sh prepare <scope>` and return its NAME=path lines as a dict.

    control-plane: etcd + kube-apiserver (the test-kubelet tier); all: also the real node's binaries,
    kubectl and the pause image.
    """
    r = subprocess.run(
        [str(ROOT / "scripts" / "k8s_harness.sh"), "prepare", scope],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if r.returncode != 0:
        msg = f"scripts/k8s_harness.sh prepare failed ({r.returncode}):\n{r.stderr[-3000:]}"
        raise HarnessError(msg)
    env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    for key in REAL_NODE if scope == "all" else CONTROL_PLANE:
        if key != "PAUSE_IMAGE" and not os.access(env.get(key, ""), os.X_OK):
            msg = f"scripts/k8s_harness.sh prepare gave no executable {key}: {r.stdout!r}"
            raise HarnessError(msg)
    return env


def write_kubeconfig(path: Path, server: str, ca: Path, token: str, namespace: str) -> Path:
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "harbor-ray-test",
        "clusters": [{"name": "harbor-ray-test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [
            {"name": "harbor-ray-test", "context": {"cluster": "harbor-ray-test", "user": "u", "namespace": namespace}}
        ],
    }
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


@dataclass
class Cluster:
    """The running test cluster, and a few raw HTTP helpers that do not go through the code under test."""

    server: str
    ca_file: Path
    admin_token: str
    limited_token: str
    kubeconfig: Path
    limited_kubeconfig: Path
    namespace: str
    node: str
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    real: bool = False  # a real kubelet (support/real_node.py), not the test kubelet

    def config(self, **kw: Any) -> K8sBackendConfig:
        base: dict[str, Any] = {
            "kubeconfig": str(self.kubeconfig),
            "namespace": self.namespace,
            "start_timeout_s": 60.0,
        }
        base.update(kw)
        return K8sBackendConfig(**base)

    def request(self, method: str, path: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.server + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token or self.admin_token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
                raw, code = r.read(), r.status
        except urllib.error.HTTPError as e:
            raw, code = e.read(), e.code
        try:
            return code, json.loads(raw) if raw else {}
        except ValueError:
            return code, raw

    def pods(self, label_selector: str, namespace: str | None = None) -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        code, body = self.request("GET", f"{path}?labelSelector={quote(label_selector)}")
        assert code == 200, body
        return list(body["items"])

    def create_pod(self, name: str, labels: dict[str, str], image: str) -> None:
        """A pod made without the backend (a decoy for cleanup tests)."""
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "restartPolicy": "Never",
                "activeDeadlineSeconds": 300,
                # `sleep` as PID 1 ignores SIGTERM: without this the real kubelet waits the default 30 s to kill
                # a deleted decoy's container, past the leak check's 15 s (a force delete keeps the pod's grace)
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {"name": "c", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sleep", "300"]}
                ],
            },
        }
        code, body = self.request("POST", f"/api/v1/namespaces/{self.namespace}/pods", pod)
        assert code == 201, body

    def delete_pod(self, name: str) -> None:
        code, body = self.request(
            "DELETE",
            f"/api/v1/namespaces/{self.namespace}/pods/{name}",
            {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
        )
        assert code in (200, 202, 404), body

    def request_counts(self) -> dict[tuple[str, str, str, str], float]:
        """apiserver_request_total summed by (verb, resource, subresource, scope)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(self.server + "/metrics", headers={"Authorization": f"Bearer {self.admin_token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
            text = r.read().decode()
        out: dict[tuple[str, str, str, str], float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_part, value = line[len("apiserver_request_total{") :].rsplit("} ", 1)
            lab = {k: v.strip('"') for k, v in (kv.split("=", 1) for kv in labels_part.split('",') if "=" in kv)}
            key = (lab.get("verb", ""), lab.get("resource", ""), lab.get("subresource", ""), lab.get("scope", ""))
            out[key] = out.get(key, 0.0) + float(value)
        return out


def etcd_argv(etcd: str, data_dir: Path, client_port: int, peer_port: int) -> list[str]:
    """A one-member etcd on loopback, as both harnesses (test kubelet and real node) run it."""
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    return [
        etcd,
        "--name",
        "default",
        "--data-dir",
        str(data_dir),
        "--listen-client-urls",
        client,
        "--advertise-client-urls",
        client,
        "--listen-peer-urls",
        peer,
        "--initial-advertise-peer-urls",
        peer,
        "--initial-cluster",
        f"default={peer}",
    ]


@contextlib.contextmanager
def running_cluster(workdir: Path, binaries: dict[str, str], *, hollow: bool = False) -> Iterator[Cluster]:
    """Start etcd, kube-apiserver and the test kubelet in workdir; stop them and remove the kubelet's containers.

    hollow: the kubelet runs no containers and reports every pod Running at once (a hollow node).
    """
    import docker

    wd = workdir
    session = secrets.token_hex(4)
    kubernetes_pki(wd)
    admin, limited = secrets.token_hex(16), secrets.token_hex(16)
    (wd / "tokens.csv").write_text(f'{admin},admin,admin-uid,"system:masters"\n{limited},limited,limited-uid\n')
    (wd / "admin.token").write_text(admin)
    etcd_port, peer_port, api_port, kubelet_port = (free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    namespace, node = f"hrt-{session}", f"harbor-ray-test-{session}"
    cluster = Cluster(
        server,
        wd / "ca.crt",
        admin,
        limited,
        write_kubeconfig(wd / "kubeconfig", server, wd / "ca.crt", admin, namespace),
        write_kubeconfig(wd / "limited.kubeconfig", server, wd / "ca.crt", limited, namespace),
        namespace,
        node,
        wd,
    )
    logs = {name: wd / f"{name}.log" for name in ("etcd", "apiserver", "kubelet")}

    def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with logs[name].open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=wd, preexec_fn=die_with_parent)
        cluster.procs[name] = proc
        return proc

    try:
        etcd = spawn(
            "etcd",
            etcd_argv(binaries["ETCD"], wd / "etcd", etcd_port, peer_port),
        )
        wait_ready(
            "etcd",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=2).status == 200,
            30,
            etcd,
            logs["etcd"],
        )
        api = spawn(
            "apiserver",
            [
                binaries["KUBE_APISERVER"],
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--tls-cert-file={wd / 'apiserver.crt'}",
                f"--tls-private-key-file={wd / 'apiserver.key'}",
                f"--cert-dir={wd / 'certs'}",
                f"--token-auth-file={wd / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={wd / 'sa.key'}",
                f"--service-account-signing-key-file={wd / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--disable-admission-plugins=ServiceAccount",
                f"--kubelet-certificate-authority={wd / 'ca.crt'}",
                "--kubelet-preferred-address-types=InternalIP",
                "--profiling=false",
            ],
        )
        wait_ready("kube-apiserver", lambda: cluster.request("GET", "/readyz")[0] == 200, 90, api, logs["apiserver"])
        kubelet = spawn(
            "kubelet",
            [
                sys.executable,
                str(Path(__file__).with_name("kubelet.py")),
                "--api",
                server,
                "--token-file",
                str(wd / "admin.token"),
                "--ca",
                str(wd / "ca.crt"),
                "--cert",
                str(wd / "kubelet.crt"),
                "--key",
                str(wd / "kubelet.key"),
                "--port",
                str(kubelet_port),
                "--node",
                node,
                "--ready-file",
                str(wd / "kubelet.ready"),
                *(["--hollow"] if hollow else []),
            ],
        )
        wait_ready("test kubelet", lambda: (wd / "kubelet.ready").exists(), 60, kubelet, logs["kubelet"])
        code, body = cluster.request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        )
        if code != 201:
            msg = f"creating namespace {namespace}: {code} {body}"
            raise HarnessError(msg)
        yield cluster
    finally:
        for name in ("kubelet", "apiserver", "etcd"):
            if name in cluster.procs:
                stop(cluster.procs[name], 20)
        client = docker.DockerClient(base_url="unix:///var/run/docker.sock", timeout=120)
        for c in client.api.containers(all=True, filters={"label": f"{KUBELET_MARKER}={node}"}):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(c["Id"], force=True)
        client.close()


@contextlib.contextmanager
def faulty_proxy(cluster: Cluster, fault: Callable[[str, str], tuple[str, int] | None]) -> Iterator[str]:
    """An HTTPS proxy in front of the apiserver that injects API errors; yields its URL.

    fault(method, path) returns None (forward), ("instead", status) (answer status, apiserver never sees
    it), or ("after", status) (forward, then answer status: a response lost on the way back).
    """
    import asyncio
    import threading

    import aiohttp
    from aiohttp import web

    port = free_port()
    ready = threading.Event()
    state: dict[str, Any] = {}
    upstream_ssl = ssl.create_default_context(cafile=str(cluster.ca_file))
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ssl.load_cert_chain(cluster.workdir / "apiserver.crt", cluster.workdir / "apiserver.key")

    def status(code: int) -> web.Response:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": "TooManyRequests" if code == 429 else "InternalError",
            "message": f"injected {code}",
        }
        return web.json_response(body, status=code, headers={"Retry-After": "0"})

    async def handle(req: web.Request) -> web.StreamResponse:
        decision = fault(req.method, req.path)
        if decision and decision[0] == "instead":
            return status(decision[1])
        headers = {k: v for k, v in req.headers.items() if k.lower() not in ("host", "content-length")}
        session: aiohttp.ClientSession = state["session"]
        async with session.request(
            req.method,
            cluster.server + req.path_qs,
            headers=headers,
            data=await req.read(),
            skip_auto_headers=("Content-Type",),
        ) as up:
            if decision and decision[0] == "after":
                await up.read()
                return status(decision[1])
            resp = web.StreamResponse(
                status=up.status,
                headers={
                    k: v
                    for k, v in up.headers.items()
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")
                },
            )
            await resp.prepare(req)
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
            return resp

    async def serve() -> None:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_ssl), timeout=aiohttp.ClientTimeout(total=None)
        )
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=server_ssl).start()
        state["stop"] = asyncio.Event()
        ready.set()
        await state["stop"].wait()
        await state["session"].close()
        await runner.cleanup()

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    ready.wait(10)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(state["stop"].set)
        thread.join(10)


def sandbox_container(client: Any, pod_name: str, running: bool = True) -> Any:
    """The Docker container of a pod's sandbox container, as either kubelet names it (io.kubernetes.* labels)."""
    found = client.containers.list(
        all=not running,
        filters={"label": [f"io.kubernetes.pod.name={pod_name}", "io.kubernetes.container.name=sandbox"]},
    )
    assert len(found) == 1, f"containers of pod {pod_name}: {[c.name for c in found]}"
    return found[0]


def leftovers(cluster: Cluster, client: Any, label: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Pods labeled harbor-run=<label>, and containers of such pods that still count as left behind.

    A container counts while it runs; an exited one only when no dockershim kubelet will collect it. A
    real kubelet stops a deleted pod's containers and leaves them (and the pause container, the only one
    that carries the pod's labels) to its container GC, once a minute: they hold no process and no
    resources, and the real-node harness removes its own at teardown. The test kubelet removes its
    containers itself, so on its node an exited container is a leak.
    """
    from harbor_ray import labels as L

    pods = cluster.pods(f"{L.RUN}={label}")
    seen: dict[str, dict[str, Any]] = {}
    for c in client.api.containers(all=True, filters={"label": f"{L.RUN}={label}"}):  # no inspect: no race
        seen[c["Id"]] = c
    for c in client.api.containers(all=True, filters={"label": f"io.kubernetes.pod.namespace={cluster.namespace}"}):
        if (c.get("Labels") or {}).get("io.kubernetes.pod.name", "").startswith(f"{label}-"):
            seen[c["Id"]] = c
    left = [c for c in seen.values() if c["State"] == "running" or "io.kubernetes.docker.type" not in c["Labels"]]
    return pods, left


def assert_nothing_left(cluster: Cluster, client: Any, label: str, test: str) -> None:
    """Fail the test if a pod labeled harbor-run=<label>, or a container of one, remains (see `leftovers`)."""
    import docker
    import pytest

    deadline = time.monotonic() + 15  # either kubelet stops a deleted pod's containers asynchronously
    while True:
        pods, containers = leftovers(cluster, client, label)
        if (not pods and not containers) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not pods and not containers:
        return
    for p in pods:  # do not leak into the next test, but fail this one
        cluster.delete_pod(p["metadata"]["name"])
    for c in containers:
        with contextlib.suppress(docker.errors.NotFound):
            client.api.remove_container(c["Id"], force=True)
    pytest.fail(
        f"leaked after {test}: pods {[p['metadata']['name'] for p in pods]}, "
        f"containers {[c['Names'] for c in containers]}"
    )
