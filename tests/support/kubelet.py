"""A small test kubelet (and scheduler) for the Kubernetes test tier: the only double in it.

It registers one Node (InternalIP 127.0.0.1, kubelet port = its HTTPS port) with a real kube-apiserver,
binds Pending pods whose nodeSelector it satisfies (else marks them Unschedulable), runs each pod's
single container on the real Docker engine (never pulling: a missing image leaves the pod Pending with
ErrImageNeverPull / ImagePullBackOff), reports status, enforces activeDeadlineSeconds, removes the
container when the pod is deleted, and serves `/exec/...` over the websocket protocol
(v5/v4.channel.k8s.io) with a real `docker exec`.

Every container it makes carries the pod's labels plus `harbor-ray-test/kubelet=<node name>`, and the
pids limit a real kubelet's podPidsLimit would give the pod (also served on `/configz`, as a real one does).

    python tests/support/kubelet.py --api https://127.0.0.1:6443 --token-file T --ca CA --cert C --key K --port P
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import docker
from aiohttp import WSMsgType, web

from harbor_ray.backends.docker.exec import ExecFrames
from harbor_ray.backends.kubernetes.runtime import node_arch

MARKER = "harbor-ray-test/kubelet"
POD_PIDS_LIMIT = 512  # as a real kubelet's podPidsLimit (support/real_node.py); served on /configz
log = logging.getLogger("test-kubelet")

_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def cpu_quantity(q: str) -> float:
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def mem_quantity(q: str) -> int:
    q = str(q)
    for suffix, mult in _SUFFIX.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * mult)
    return int(float(q))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigInvalid(Exception):
    """The pod's container config cannot be honoured (CreateContainerConfigError)."""


@dataclass
class PodState:
    ns: str
    name: str
    uid: str
    container: str = ""  # the pod's container name
    container_id: str = ""
    start_time: str = ""
    terminal: bool = False
    deleting: bool = False
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class Kubelet:
    def __init__(
        self, api: str, token: str, ca: str, node: str, port: int, cert: str, key: str, hollow: bool = False
    ) -> None:
        self.api, self.token, self.node, self.port = api.rstrip("/"), token, node, port
        self.hollow = hollow  # report pods Running without running containers (for API-scale benches)
        self.client_ssl = ssl.create_default_context(cafile=ca)
        self.server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_ssl.load_cert_chain(cert, key)
        self.docker = docker.DockerClient(base_url="unix:///var/run/docker.sock", max_pool_size=64, timeout=120)
        # as a real kubelet labels its node (its OS and GOARCH: the engine's, this machine's)
        self.node_labels = {
            "kubernetes.io/hostname": node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": node_arch(),
            "harbor-ray-test/node": "1",
        }
        self.pods: dict[str, PodState] = {}  # uid -> state, for pods bound to this node
        self.seen_unschedulable: set[str] = set()
        self.binding: set[str] = set()
        self.tasks: set[asyncio.Future[Any]] = set()  # strong references: the loop keeps only weak ones
        self.stopping = asyncio.Event()
        self.session: aiohttp.ClientSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- apiserver client ------------------------------------------------------------------------

    async def req(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> tuple[int, Any]:
        assert self.session is not None
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": ctype} if body is not None else {}
        async with self.session.request(method, self.api + path, data=data, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text) if text else {}
            except json.JSONDecodeError:
                return r.status, {"message": text}

    async def patch_status(self, st: PodState, status: dict[str, Any]) -> None:
        code, body = await self.req(
            "PATCH",
            f"/api/v1/namespaces/{st.ns}/pods/{st.name}/status",
            {"status": status},
            "application/merge-patch+json",
        )
        if code >= 300 and code != 404:
            log.warning("status of %s/%s: %s %s", st.ns, st.name, code, body.get("message"))

    async def register_node(self) -> None:
        status = {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "test kubelet",
                    "lastHeartbeatTime": now(),
                    "lastTransitionTime": now(),
                }
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.20.2-harbor-ray-test",
                "containerRuntimeVersion": "docker://20.10",
                "operatingSystem": "linux",
                "architecture": "amd64",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
                "kernelVersion": "",
                "osImage": "",
                "kubeProxyVersion": "",
            },
        }
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.node, "labels": self.node_labels}}
        code, body = await self.req("POST", "/api/v1/nodes", node)
        if code not in (201, 409):
            msg = f"node registration: {code} {body}"
            raise RuntimeError(msg)
        code, body = await self.req(
            "PATCH", f"/api/v1/nodes/{self.node}/status", {"status": status}, "application/merge-patch+json"
        )
        if code != 200:
            msg = f"node status: {code} {body}"
            raise RuntimeError(msg)

    # -- watch: scheduling and pod lifecycle -----------------------------------------------------

    async def watch_pods(self) -> None:
        rv = ""
        while not self.stopping.is_set():
            try:
                if not rv:
                    code, body = await self.req("GET", "/api/v1/pods")
                    if code != 200:
                        msg = f"list pods: {code}"
                        raise RuntimeError(msg)
                    for pod in body.get("items", []):
                        await self.handle("ADDED", pod)
                    rv = body["metadata"]["resourceVersion"]
                assert self.session is not None
                url = f"{self.api}/api/v1/pods?watch=1&resourceVersion={rv}&timeoutSeconds=240"
                async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=300)) as r:
                    async for line in r.content:
                        if not line.strip():
                            continue
                        ev = json.loads(line)
                        obj = ev["object"]
                        if ev["type"] == "ERROR":
                            rv = "" if obj.get("code") == 410 else rv
                            break
                        rv = obj["metadata"].get("resourceVersion", rv)
                        try:
                            await self.handle(ev["type"], obj)
                        except Exception:  # one odd pod must not stop the node
                            log.exception("handling %s of %s", ev["type"], obj["metadata"].get("name"))
            except (aiohttp.ClientError, RuntimeError, TimeoutError) as e:
                if self.stopping.is_set():
                    return
                log.warning("pod watch: %s; re-listing", e)
                rv = ""
                await asyncio.sleep(0.5)

    async def handle(self, etype: str, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        uid = meta["uid"]
        if etype == "DELETED" or meta.get("deletionTimestamp"):
            st = self.pods.get(uid)
            if st is not None:
                await self.forget(st)
            graceful = (meta.get("deletionGracePeriodSeconds") or 0) > 0
            if etype != "DELETED" and graceful and spec.get("nodeName") in (None, "", self.node):
                # Graceful deletion: the kubelet confirms once the containers are gone (with a grace
                # period of 0 the apiserver removes the pod by itself).
                opts = {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": uid},
                }
                await self.req("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}", opts)
            return
        if not spec.get("nodeName"):
            if spec.get("schedulerName", "default-scheduler") == "default-scheduler" and uid not in self.binding:
                await self.schedule(pod)
            return
        if spec["nodeName"] == self.node and uid not in self.pods:
            st = PodState(meta["namespace"], meta["name"], uid, spec["containers"][0]["name"])
            self.pods[uid] = st
            self.spawn(self.start(st, pod))

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def schedule(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        wanted = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in wanted.items()):
            if meta["uid"] not in self.seen_unschedulable:
                self.seen_unschedulable.add(meta["uid"])
                st = PodState(meta["namespace"], meta["name"], meta["uid"])
                await self.patch_status(
                    st,
                    {
                        "phase": "Pending",
                        "conditions": [
                            {
                                "type": "PodScheduled",
                                "status": "False",
                                "reason": "Unschedulable",
                                "lastTransitionTime": now(),
                                # the 1.20 scheduler's wording
                                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity.",
                            }
                        ],
                    },
                )
            return
        self.binding.add(meta["uid"])
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node},
        }
        code, body = await self.req(
            "POST", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/binding", binding
        )
        if code not in (201, 409, 404):
            log.warning("bind %s: %s %s", meta["name"], code, body.get("message"))
            self.binding.discard(meta["uid"])

    async def start(self, st: PodState, pod: dict[str, Any]) -> None:
        spec = pod["spec"]
        c = spec["containers"][0]
        st.start_time = now()
        ads = spec.get("activeDeadlineSeconds")
        if ads:
            st.timers.append(asyncio.get_running_loop().call_later(float(ads), lambda: self.spawn(self.deadline(st))))
        image, policy = c["image"], c.get("imagePullPolicy", "IfNotPresent")
        backoff = False
        while not self.hollow and not await asyncio.to_thread(self.has_image, image):
            if st.deleting or st.terminal:
                return
            if policy == "Never":
                reason = "ErrImageNeverPull"
                message = f'Container image "{image}" is not present with pull policy of Never'
            else:
                reason = "ImagePullBackOff" if backoff else "ErrImagePull"
                message = f'Back-off pulling image "{image}"' if backoff else f'pull access denied for "{image}"'
            backoff = True
            await self.patch_status(st, self.pending_status(st, c, reason, message))
            await asyncio.sleep(2.0)
        if st.deleting or st.terminal:
            return
        try:
            cid, ip = ("", "127.0.0.1") if self.hollow else await asyncio.to_thread(self.run_container, pod)
        except ConfigInvalid as e:
            await self.patch_status(st, self.pending_status(st, c, "CreateContainerConfigError", str(e)))
            return
        except docker.errors.DockerException as e:
            await self.patch_status(st, self.pending_status(st, c, "CreateContainerError", str(e)[:300]))
            return
        st.container_id = cid
        if st.deleting or st.terminal:  # deleted while we were starting it
            await asyncio.to_thread(self.remove_container, cid)
            return
        cond = [
            {"type": t, "status": "True", "lastTransitionTime": now()}
            for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
        ]
        await self.patch_status(
            st,
            {
                "phase": "Running",
                "hostIP": "127.0.0.1",
                "podIP": ip,
                "podIPs": [{"ip": ip}],
                "startTime": st.start_time,
                "conditions": cond,
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": image,
                        "imageID": f"docker://{image}",
                        "containerID": f"docker://{cid}",
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": now()}},
                    }
                ],
            },
        )

    def pending_status(self, st: PodState, c: dict[str, Any], reason: str, message: str) -> dict[str, Any]:
        return {
            "phase": "Pending",
            "hostIP": "127.0.0.1",
            "startTime": st.start_time,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "ContainersNotReady",
                    "message": f"containers with unready status: [{c['name']}]",
                    "lastTransitionTime": now(),
                },
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }

    async def deadline(self, st: PodState) -> None:
        if st.terminal or st.deleting:
            return
        st.terminal = True
        if st.container_id:
            await asyncio.to_thread(self.kill_container, st.container_id)
        await self.patch_status(
            st,
            {
                "phase": "Failed",
                "reason": "DeadlineExceeded",
                "message": "Pod was active on the node longer than the specified deadline",
            },
        )

    def on_die(self, cid: str, code: int) -> None:
        for st in self.pods.values():
            if st.container_id == cid and not st.terminal and not st.deleting:
                st.terminal = True
                self.spawn(
                    self.patch_status(
                        st,
                        {
                            "phase": "Succeeded" if code == 0 else "Failed",
                            "conditions": [
                                {
                                    "type": "Ready",
                                    "status": "False",
                                    "reason": "PodCompleted",
                                    "lastTransitionTime": now(),
                                }
                            ],
                            "containerStatuses": [
                                {
                                    "name": st.container,
                                    "image": "",
                                    "imageID": "",
                                    "ready": False,
                                    "restartCount": 0,
                                    "containerID": f"docker://{cid}",
                                    "state": {
                                        "terminated": {
                                            "exitCode": code,
                                            "finishedAt": now(),
                                            "reason": "Completed" if code == 0 else "Error",
                                        }
                                    },
                                }
                            ],
                        },
                    )
                )

    async def forget(self, st: PodState) -> None:
        st.deleting = True
        for t in st.timers:
            t.cancel()
        self.pods.pop(st.uid, None)
        self.binding.discard(st.uid)
        if st.container_id:
            await asyncio.to_thread(self.remove_container, st.container_id)

    # -- docker ------------------------------------------------------------------------------------

    def has_image(self, image: str) -> bool:
        try:
            self.docker.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def run_container(self, pod: dict[str, Any]) -> tuple[str, str]:
        meta, spec = pod["metadata"], pod["spec"]
        c = spec["containers"][0]
        sc = c.get("securityContext") or {}
        psc = spec.get("securityContext") or {}
        limits = (c.get("resources") or {}).get("limits") or {}
        caps = sc.get("capabilities") or {}
        labels = dict(meta.get("labels") or {})
        labels.update(
            {
                MARKER: self.node,
                "io.kubernetes.pod.name": meta["name"],
                "io.kubernetes.pod.namespace": meta["namespace"],
                "io.kubernetes.pod.uid": meta["uid"],
                "io.kubernetes.container.name": c["name"],
            }
        )
        kwargs: dict[str, Any] = {
            "name": f"k8s_{c['name']}_{meta['name']}_{meta['namespace']}_{meta['uid'][:8]}",
            "labels": labels,
            "detach": True,
            "pids_limit": POD_PIDS_LIMIT,
            "environment": {e["name"]: e.get("value", "") for e in c.get("env") or []},
            "cap_drop": caps.get("drop") or None,
            "cap_add": caps.get("add") or None,
            "read_only": bool(sc.get("readOnlyRootFilesystem")),
        }
        if c.get("command"):
            kwargs["entrypoint"] = c["command"]
        if c.get("args"):
            kwargs["command"] = c["args"]
        if c.get("workingDir"):
            kwargs["working_dir"] = c["workingDir"]
        if sc.get("allowPrivilegeEscalation") is False:
            kwargs["security_opt"] = ["no-new-privileges"]
        if "cpu" in limits:
            kwargs["nano_cpus"] = int(cpu_quantity(limits["cpu"]) * 1e9)
        if "memory" in limits:
            kwargs["mem_limit"] = kwargs["memswap_limit"] = mem_quantity(limits["memory"])
        uid = sc.get("runAsUser", psc.get("runAsUser"))
        if uid is not None:
            kwargs["user"] = f"{uid}:{sc.get('runAsGroup', psc.get('runAsGroup', uid))}"
        elif sc.get("runAsNonRoot", psc.get("runAsNonRoot")):
            user = self.docker.images.get(c["image"]).attrs["Config"].get("User") or "0"
            if user.split(":")[0] in ("", "0", "root"):
                msg = "container has runAsNonRoot and image will run as root"
                raise ConfigInvalid(msg)
        container = self.docker.containers.run(c["image"], **kwargs)
        container.reload()
        return container.id, container.attrs["NetworkSettings"].get("IPAddress") or "127.0.0.1"

    def remove_container(self, cid: str) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.docker.api.remove_container(cid, force=True)

    def kill_container(self, cid: str) -> None:
        with contextlib.suppress(docker.errors.APIError):
            self.docker.api.kill(cid)

    def watch_docker_events(self, stream: Any) -> None:
        assert self.loop is not None
        for ev in stream:
            if ev.get("status") == "die":
                code = int(ev.get("Actor", {}).get("Attributes", {}).get("exitCode", "0"))
                self.loop.call_soon_threadsafe(self.on_die, ev["id"], code)

    # -- exec (websocket, v5/v4.channel.k8s.io) ---------------------------------------------------

    def find_container(self, ns: str, pod: str, container: str) -> str | None:
        found = self.docker.containers.list(
            filters={
                "label": [
                    f"{MARKER}={self.node}",
                    f"io.kubernetes.pod.namespace={ns}",
                    f"io.kubernetes.pod.name={pod}",
                    f"io.kubernetes.container.name={container}",
                ]
            }
        )
        return found[0].id if found else None

    async def exec_handler(self, req: web.Request) -> web.StreamResponse:
        ns, pod, container = req.match_info["ns"], req.match_info["pod"], req.match_info["container"]
        q = req.query
        cmd = q.getall("command", [])
        want_stdin = q.get("input") == "1" or q.get("stdin") in ("1", "true")
        cid = await asyncio.to_thread(self.find_container, ns, pod, container)
        if cid is None or not cmd:
            return web.Response(status=404, text=f"container {container} of {ns}/{pod} not found")
        try:
            exec_id = (
                await asyncio.to_thread(
                    self.docker.api.exec_create, cid, cmd, stdin=want_stdin, stdout=True, stderr=True, tty=False
                )
            )["Id"]
            sock = await asyncio.to_thread(self.docker.api.exec_start, exec_id, socket=True)
        except docker.errors.APIError as e:
            return web.Response(status=500, text=str(e))
        raw: socket.socket = getattr(sock, "_sock", sock)
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"), max_msg_size=0)
        await ws.prepare(req)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()

        def reader() -> None:
            try:
                for stream, data in ExecFrames(sock, deadline=None):
                    loop.call_soon_threadsafe(queue.put_nowait, (stream, data))
            except OSError:
                pass
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=reader, daemon=True).start()

        async def feed() -> None:
            async for msg in ws:
                if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                    continue
                data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
                if data[:1] == b"\x00" and want_stdin:
                    await asyncio.to_thread(raw.sendall, data[1:])
                elif data[:2] == b"\xff\x00" and ws.ws_protocol == "v5.channel.k8s.io":
                    with contextlib.suppress(OSError):
                        raw.shutdown(socket.SHUT_WR)

        feeder = asyncio.ensure_future(feed())
        client_gone = False
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait({getter, feeder}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:  # the client closed the websocket: drop the stream (the process lives on)
                getter.cancel()
                client_gone = True
                break
            item = getter.result()
            if item is None:
                break
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(bytes([item[0]]) + item[1])
        with contextlib.suppress(OSError):
            sock.close()
        if not client_gone:
            rc = await self.exit_code(exec_id)
            status = (
                {"metadata": {}, "status": "Success"}
                if rc == 0
                else {
                    "metadata": {},
                    "status": "Failure",
                    "reason": "NonZeroExitCode",
                    "message": f"command terminated with non-zero exit code: exit status {rc}",
                    "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]},
                }
            )
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(b"\x03" + json.dumps(status).encode())
        feeder.cancel()
        await ws.close()
        return ws

    async def exit_code(self, exec_id: str) -> int:
        for _ in range(100):
            info = await asyncio.to_thread(self.docker.api.exec_inspect, exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            await asyncio.sleep(0.02)
        return -1

    # -- main ---------------------------------------------------------------------------------------

    async def run(self, ready_file: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.set_default_executor(ThreadPoolExecutor(max_workers=128, thread_name_prefix="kubelet"))
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl, limit=64),
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=aiohttp.ClientTimeout(total=60),
        )
        app = web.Application()
        app.router.add_route("*", "/exec/{ns}/{pod}/{container}", self.exec_handler)
        app.router.add_route("*", "/exec/{ns}/{pod}/{uid}/{container}", self.exec_handler)
        app.router.add_get("/healthz", lambda _r: web.Response(text="ok"))
        app.router.add_get(
            "/configz", lambda _r: web.json_response({"kubeletconfig": {"podPidsLimit": POD_PIDS_LIMIT}})
        )
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, ssl_context=self.server_ssl).start()
        await self.register_node()
        events = self.docker.events(
            decode=True, filters={"type": "container", "event": "die", "label": f"{MARKER}={self.node}"}
        )
        threading.Thread(target=self.watch_docker_events, args=(events,), daemon=True).start()
        watcher = asyncio.ensure_future(self.watch_pods())
        if ready_file:
            with open(ready_file, "w") as f:
                f.write("ready\n")
        log.info("test kubelet %s serving on 127.0.0.1:%d", self.node, self.port)
        await self.stopping.wait()
        watcher.cancel()
        events.close()
        await asyncio.to_thread(self.remove_all)
        await self.session.close()
        await runner.cleanup()

    def remove_all(self) -> None:
        for c in self.docker.containers.list(all=True, filters={"label": f"{MARKER}={self.node}"}):
            self.remove_container(c.id)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--api", required=True)
    p.add_argument("--token-file", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--node", default="harbor-ray-test-node")
    p.add_argument("--ready-file")
    p.add_argument("--hollow", action="store_true", help="no containers: pods are reported Running at once")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    with open(a.token_file) as f:
        token = f.read().strip()
    kubelet = Kubelet(a.api, token, a.ca, a.node, a.port, a.cert, a.key, hollow=a.hollow)

    async def amain() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, kubelet.stopping.set)
        await kubelet.run(a.ready_file)

    asyncio.run(amain())


if __name__ == "__main__":
    main()
