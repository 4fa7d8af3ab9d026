"""The Kubernetes backend: one pod per sandbox, over the official `kubernetes` client.

Each backend instance loads its kubeconfig (or the in-cluster config) once into a private
`Configuration` + `ApiClient` (never the global default: concurrent global loads once sent pods to the
wrong cluster), so instances for different clusters can live in one process and be used from many
threads. Pods are labeled, unprivileged, and bounded by `activeDeadlineSeconds` = the TTL; start is
awaited with a watch; exec and file transfer go through `pods/exec` (see `exec`; the command wrapper and
the archives are the backends' shared `shell` and `transfer`).
"""

from __future__ import annotations

import logging
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from harbor_ray import labels as L
from harbor_ray.backends import shell, transfer
from harbor_ray.backends.base import ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.backends.kubernetes import api
from harbor_ray.backends.kubernetes import exec as X
from harbor_ray.backends.kubernetes import netpol as NP
from harbor_ray.backends.kubernetes import pods as P
from harbor_ray.backends.kubernetes import runtime as R
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.errors import (
    BackendUnavailable,
    ConfigError,
    ExecTimeout,
    SandboxGone,
    SandboxStartError,
    TransferError,
)
from harbor_ray.runtimes.recipes import recipe, runtime_tag

log = logging.getLogger(__name__)

_DESTROY_CONFIRM_S = 30.0
_CONNECT_TIMEOUT_S = 60.0  # the websocket handshake (through the API server to the kubelet)


class KubernetesBackend:
    """Sandboxes as pods in one namespace of one cluster.

    >>> backend = KubernetesBackend(K8sBackendConfig(kubeconfig="~/.kube/config", namespace="rl"))  # doctest: +SKIP
    >>> backend.ping()  # doctest: +SKIP
    'v1.30.2'
    """

    kind = "k8s"

    def __init__(
        self,
        config: K8sBackendConfig | None = None,
        *,
        output_limit_bytes: int | None = None,
        local_builder: Callable[[SandboxSpec], str] | None = None,
        local_runtime_builder: Callable[[str], str] | None = None,
    ) -> None:
        """`local_builder` builds a spec's image on this machine's Docker daemon, `local_runtime_builder` an agent
        runtime's image there (for build_with_docker)."""
        self.config = config or K8sBackendConfig()
        self._local_builder = local_builder
        self._local_runtime_builder = local_runtime_builder
        self.namespace = self.config.namespace
        # Per stream of one exec; the keyword (the pool's setting) wins over the backend config's.
        self.output_limit_bytes = output_limit_bytes or self.config.exec_output_limit_bytes
        self._cfg = api.load_configuration(self.config)  # first: says which extra to install if the SDK is missing

        from kubernetes import client

        self.api_client = client.ApiClient(self._cfg)
        self._core = client.CoreV1Api(self.api_client)
        self._create_slots = threading.BoundedSemaphore(max(1, self.config.max_concurrent_creates))
        self._retrying = api.retrying()

    @property
    def host(self) -> str:
        return str(self._cfg.host)

    def close(self) -> None:
        self.api_client.close()

    # -- API calls ----------------------------------------------------------------------------------

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Call the API with retries on 409/429/5xx and connection errors; translate what is not the caller's."""
        return api.call(self._retrying, self.host, fn, *args, **kwargs)

    def ping(self) -> str:
        from kubernetes import client

        return str(self.call(client.VersionApi(self.api_client).get_code).git_version)

    def _read_pod(self, name: str) -> Any | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.call(self._core.read_namespaced_pod, name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    # -- images -------------------------------------------------------------------------------------

    def ensure_image(self, spec: SandboxSpec) -> str:
        """The image reference the cluster pulls. Kubernetes cannot build: it needs an image in a registry.

        An agent runtime's image is built first on this machine's daemon with build_with_docker (once per
        recipe content), else the nodes pull it (`runtime_image`)."""
        if spec.agent_runtime and self.config.build_with_docker:
            if self._local_runtime_builder is None:
                msg = "backend.build_with_docker=true: make the backend with harbor_ray.backends.make_backend"
                raise ConfigError(msg)
            self._local_runtime_builder(spec.agent_runtime)
        registry = self.config.image_registry.rstrip("/")
        if spec.image:
            ref = spec.image
        elif spec.build_context:
            if self.config.build_with_docker:
                if self._local_builder is None:
                    msg = "backend.build_with_docker=true: make the backend with harbor_ray.backends.make_backend"
                    raise ConfigError(msg)
                ref = self._local_builder(spec)  # built once per content hash, on the local daemon
            elif not registry:
                msg = (
                    f"k8s backend: the task's image must be built from {spec.build_context}, but a cluster only "
                    "pulls from registries; set docker_image in the task's task.toml, backend.image_registry to "
                    "a registry where the project's images are pushed, or backend.build_with_docker=true when "
                    "the nodes run images from this machine's Docker daemon"
                )
                raise ConfigError(msg)
            else:
                from harbor_ray.backends.images import env_image_tag

                ref = env_image_tag(spec.build_context)
        else:
            msg = "sandbox spec: give an image or a build_context (a directory with a Dockerfile)"
            raise SandboxStartError(msg)
        return self._pulled(ref)

    def runtime_image(self, name: str) -> str:
        """The image of agent runtime `name` as the nodes get it (backend.image_registry's prefix, if any)."""
        return self._pulled(runtime_tag(recipe(name)))

    def _pulled(self, ref: str) -> str:
        registry = self.config.image_registry.rstrip("/")
        first = ref.split("/", 1)[0]
        qualified = "/" in ref and ("." in first or ":" in first or first == "localhost")
        return ref if not registry or qualified else f"{registry}/{ref}"

    # -- lifecycle ----------------------------------------------------------------------------------

    def create(self, spec: SandboxSpec, image: str) -> SandboxHandle:
        from kubernetes.client.exceptions import ApiException

        L.check_prefix(spec.run_label)
        name = f"{spec.run_label}-{secrets.token_hex(5)}"
        owner = spec.owner or L.current_owner()
        # the extra labels (owning actor and process, host) that a pod can carry; the reaper reads them
        labels = L.sandbox_labels(spec.run_label, pool=spec.pool, owner=owner, ttl_s=spec.ttl_s) | L.valid_values(
            dict(spec.labels)
        )
        if spec.agent_runtime:
            labels[L.RUNTIME] = spec.agent_runtime  # exec reads it back from the handle (its PATH)
        body = P.pod_manifest(self.config, name, spec, image, labels)
        if spec.agent_runtime:  # a wrong node_selector arch -> ConfigError before anything exists
            R.apply_to_pod(body, spec.agent_runtime, self.runtime_image(spec.agent_runtime))
        allowed = NP.ip_endpoints(spec)  # a hostname -> ConfigError before anything exists
        NP.apply_to_pod(body, spec, allowed)  # labels the pod (and `labels`) harbor-ray/sandbox when restricted
        with self._create_slots:
            if L.SANDBOX in labels:  # "gateway only": the policy first, so it holds from the pod's start
                self._create_policy(NP.policy_manifest(name, labels, allowed))
            try:
                runtime = body["spec"].get("runtimeClassName", "")
                try:
                    self.call(self._core.create_namespaced_pod, self.namespace, body)
                except ApiException as e:
                    self._create_failed(name, labels, e, runtime)
                except BackendUnavailable as e:  # a 403: RBAC, or the RuntimeClass admission plugin's refusal
                    if runtime and isinstance(e.__cause__, ApiException) and "RuntimeClass" in str(e):
                        self._create_failed(name, labels, e.__cause__, runtime)
                    raise
                try:
                    self._wait_running(name, time.monotonic() + self.config.start_timeout_s)
                except BaseException:
                    self._delete(name, confirm=True, quiet=True)  # never leave a sandbox behind
                    raise
            except BaseException:
                self._delete_policy(name, labels, quiet=True)
                raise
        return SandboxHandle("k8s", name, name, self.namespace, image, labels)

    def _create_policy(self, body: dict[str, Any]) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            self.call(client.NetworkingV1Api(self.api_client).create_namespaced_network_policy, self.namespace, body)
        except ApiException as e:
            if e.status != 409:  # 409: a retried create of ours went through
                name = body["metadata"]["name"]
                msg = f"NetworkPolicy {self.namespace}/{name} rejected by the API ({e.status}: {api.api_message(e)})"
                raise SandboxStartError(msg) from e

    def _delete_policy(self, name: str, labels: dict[str, str], *, quiet: bool = False) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        if L.SANDBOX not in labels:
            return
        try:
            self.call(client.NetworkingV1Api(self.api_client).delete_namespaced_network_policy, name, self.namespace)
        except ApiException as e:
            if e.status != 404 and not quiet:
                raise
        except BackendUnavailable:
            if not quiet:
                raise

    def _create_failed(self, name: str, labels: dict[str, str], e: Any, runtime: str = "") -> None:
        """Adopt our own pod after a retried 409; otherwise raise the right one-line error."""
        if e.status == 409:
            pod = self._read_pod(name)
            if pod is not None and (pod.metadata.labels or {}) == labels:
                return  # an earlier attempt of ours went through before its response was lost
        if e.status == 404:
            msg = f"backend.namespace={self.namespace}: no such namespace at {self.host}; create it or pick another"
            raise ConfigError(msg)
        msg = f"pod {self.namespace}/{name} rejected by the API ({e.status}: {api.api_message(e)})"
        if runtime and "RuntimeClass" in msg:  # the RuntimeClass admission plugin refuses one it does not know
            msg = (
                f"sandbox.runtime={runtime}: no RuntimeClass {runtime} at {self.host}; create one whose handler the "
                f"nodes' container runtime knows (docs/kubernetes.md) or set sandbox.runtime='' ({msg})"
            )
            raise ConfigError(msg) from e
        raise SandboxStartError(msg)

    def _wait_running(self, name: str, deadline: float) -> None:
        """Watch the pod until it runs; SandboxStartError with the reason when it fails or times out."""
        last: Any = None
        for event in P.watch_pod(self._core, self.namespace, name, deadline):
            pod = last = event["object"]
            if event["type"] == "DELETED":
                msg = f"pod {self.namespace}/{name} was deleted while starting"
                raise SandboxStartError(msg)
            state = P.start_state(pod)
            if state == "running":
                return
            if state == "failed":
                msg = R.start_failure(pod) or f"pod {self.namespace}/{name} failed to start: {self._why(pod)}"
                raise SandboxStartError(msg)
        why = self._why(last) if last is not None else "the pod never appeared"
        runtime = R.start_failure(last) if last is not None else None
        msg = f"pod {self.namespace}/{name} not running after {self.config.start_timeout_s:g}s: {runtime or why}"
        raise SandboxStartError(msg)

    def _why(self, pod: Any) -> str:
        """Conditions, container states and the latest warning events, in one line."""
        try:
            events = self.call(
                self._core.list_namespaced_event,
                self.namespace,
                field_selector=f"involvedObject.name={pod.metadata.name}",
            ).items
        except Exception as e:  # events are a bonus; the pod's own status already says why
            log.debug("events of %s: %s", pod.metadata.name, e)
            events = []
        return P.describe(pod, events)

    def destroy(self, handle: SandboxHandle) -> None:
        self._delete(handle.id, confirm=True)
        self._delete_policy(handle.name, handle.labels)

    def settle(self, timeout_s: float) -> bool:
        return True  # destroy waits for everything it deletes

    def wait_gone(self, handle: SandboxHandle) -> None:
        """Block until the pod is deleted or no longer running: one watch on that pod, renewed every 5 min."""
        import urllib3
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        selector = f"metadata.name={handle.id}"
        while True:
            pods = self.call(self._core.list_namespaced_pod, self.namespace, field_selector=selector)
            if not pods.items or pods.items[0].status.phase in ("Succeeded", "Failed"):
                return
            try:
                for event in watch.Watch().stream(
                    self._core.list_namespaced_pod,
                    self.namespace,
                    field_selector=selector,
                    resource_version=pods.metadata.resource_version,
                    timeout_seconds=300,
                ):
                    if event["type"] == "DELETED" or event["object"].status.phase in ("Succeeded", "Failed"):
                        return
            except ApiException as e:
                if e.status != 410:  # 410: the resource version expired; list again
                    msg = f"k8s API at {self.host}: the watch of pod {handle.id} failed ({e.status})"
                    raise BackendUnavailable(msg) from e
            except (urllib3.exceptions.HTTPError, OSError) as e:
                msg = f"k8s API at {self.host}: the watch of pod {handle.id} was cut ({type(e).__name__})"
                raise BackendUnavailable(msg) from e

    def _delete(self, name: str, *, confirm: bool, quiet: bool = False) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.call(
                self._core.delete_namespaced_pod,
                name,
                self.namespace,
                grace_period_seconds=0,
                propagation_policy="Background",
            )
        except ApiException as e:
            if e.status == 404:
                return
            if not quiet:
                raise
        except BackendUnavailable:
            if not quiet:
                raise
            log.warning("could not delete pod %s/%s; its activeDeadlineSeconds ends it", self.namespace, name)
            return
        if confirm:
            self._wait_gone(name, time.monotonic() + _DESTROY_CONFIRM_S)

    def _wait_gone(self, name: str, deadline: float) -> None:
        def version() -> str | None:  # each watch starts from the pod as read now
            pod = self._read_pod(name)
            return None if pod is None else str(pod.metadata.resource_version)

        for event in P.watch_pod(self._core, self.namespace, name, deadline, since=version):
            if event["type"] == "DELETED":
                return
        msg = f"pod {self.namespace}/{name} still present {_DESTROY_CONFIRM_S:g}s after its deletion"
        raise BackendUnavailable(msg)

    def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        if not labels:
            msg = "list: an empty label selector would match every pod in the namespace"
            raise ConfigError(msg)
        selector = ",".join(f"{k}={v}" for k, v in labels.items())
        pods = self.call(self._core.list_namespaced_pod, self.namespace, label_selector=selector).items
        return [
            SandboxHandle(
                "k8s",
                p.metadata.name,
                p.metadata.name,
                self.namespace,
                p.spec.containers[0].image,
                dict(p.metadata.labels or {}),
            )
            for p in pods
        ]

    def state(self, handle: SandboxHandle) -> str:
        """The pod's phase (Running, Failed, …), or "gone"."""
        pod = self._read_pod(handle.id)
        return "gone" if pod is None else str(pod.status.phase)

    # -- exec and files -----------------------------------------------------------------------------

    def _stream(
        self, handle: SandboxHandle, argv: Sequence[str], *, deadline: float | None, **io: Any
    ) -> X.StreamResult:
        """Open `pods/exec` and pump it. A fresh ApiClient per call: `stream()` patches it while connecting."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException
        from kubernetes.stream import stream

        api_client = client.ApiClient(self._cfg)

        def connect() -> Any:
            return stream(
                client.CoreV1Api(api_client).connect_get_namespaced_pod_exec,
                handle.id,
                self.namespace,
                container=P.CONTAINER,
                command=list(argv),
                stdin=io.get("stdin") is not None,
                stdout=True,
                stderr=True,
                tty=False,
                binary=True,
                _preload_content=False,
            )

        left = _CONNECT_TIMEOUT_S if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            ws = X.connect_within(connect, min(left, _CONNECT_TIMEOUT_S), lambda w: w.close())
        except TimeoutError as e:
            api_client.close()
            msg = f"exec into {self.namespace}/{handle.name}: {e}"
            raise (BackendUnavailable(msg) if deadline is None else ExecTimeout(msg)) from e
        except ApiException as e:
            api_client.close()
            raise self._exec_failed(handle, str(e.reason or e)) from e
        try:
            result = X.pump(ws, deadline=deadline, limit=self.output_limit_bytes, **io)
        finally:
            ws.close()
            api_client.close()
        if result.return_code is None and not result.timed_out and result.failure.startswith("stream"):
            raise self._exec_failed(handle, result.failure)
        return result

    def _exec_failed(self, handle: SandboxHandle, reason: str) -> Exception:
        pod = self._read_pod(handle.id)
        if pod is None:
            return SandboxGone(f"sandbox {handle.name}: the pod is gone")
        if pod.status.phase != "Running":
            return SandboxGone(f"sandbox {handle.name}: the pod is {pod.status.phase} ({self._why(pod)})")
        return BackendUnavailable(f"exec into {self.namespace}/{handle.name} failed: {reason.splitlines()[0]}")

    def exec(
        self,
        handle: SandboxHandle,
        cmd: str | Sequence[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        user: str | None = None,
    ) -> ExecResult:
        """Run a command; a string runs through `bash -c` (`sh -c` if the image has no bash).

        With no timeout the command is still bounded by the pod's TTL (activeDeadlineSeconds).
        """
        token = shell.new_token()
        argv = shell.wrap_command(
            cmd, token=token, cwd=cwd, env=env, user=user, timeout_s=timeout_s, path_tail=R.path_tail(handle.labels)
        )
        started = time.monotonic()
        deadline = started + timeout_s + X.KILL_GRACE_S if timeout_s else None
        r = self._stream(handle, argv, deadline=deadline)
        elapsed = time.monotonic() - started
        if r.timed_out or (timeout_s and r.return_code in (124, 137) and elapsed >= timeout_s * 0.98):
            if r.timed_out:
                self._kill(handle, token)
            raise ExecTimeout(shell.timeout_message(cmd, timeout_s))
        stdout, stderr = r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")
        if r.return_code is None:  # the exec itself failed (e.g. no /bin/sh in the image)
            return ExecResult(stdout, stderr + r.failure, 126, r.dropped > 0)
        if r.dropped:
            note = f"\n[harbor-ray: output truncated at {self.output_limit_bytes} bytes per stream]"
            stdout, stderr = stdout + note, stderr + note
        return ExecResult(stdout, stderr, r.return_code, r.dropped > 0)

    def _kill(self, handle: SandboxHandle, token: str) -> None:
        try:
            self._stream(handle, shell.kill_command(token), deadline=time.monotonic() + 30)
        except Exception as e:  # the pod may be gone already, which also ends the command
            log.debug("kill after timeout in %s: %s", handle.name, e)

    def upload(self, handle: SandboxHandle, local_path: str, remote_path: str) -> None:
        archive, size = transfer.pack_for_target(local_path, remote_path, image_tar=self.config.image_tar)
        with archive:
            self.put_archive(handle, archive, size, what=f"upload to {handle.name}:{remote_path}")

    def put_archive(self, handle: SandboxHandle, archive: IO[bytes], size: int, *, what: str = "") -> None:
        """The image's own `tar` extracts it at '/' (as root): make it with `pack_for_target(image_tar=True)`."""
        deadline = time.monotonic() + self.config.transfer_timeout_s
        r = self._stream(handle, X.upload_command(size), deadline=deadline, stdin=archive)
        if r.timed_out or r.return_code != 0:
            msg = f"{what or f'upload to {handle.name}'} failed: {X.why_failed(r)}"
            raise TransferError(msg)

    def get_archive(self, handle: SandboxHandle, remote_path: str, sink: IO[bytes]) -> str:
        argv, member = X.download_command(remote_path)
        deadline = time.monotonic() + self.config.transfer_timeout_s
        r = self._stream(handle, argv, deadline=deadline, stdout_sink=sink)
        if r.timed_out or r.return_code != 0:
            msg = f"download of {handle.name}:{remote_path} failed: {X.why_failed(r)}"
            raise TransferError(msg)
        return member

    def download(self, handle: SandboxHandle, remote_path: str, local_path: str) -> None:
        with tempfile.TemporaryFile(prefix="harbor-ray-dl-") as f:
            member = self.get_archive(handle, remote_path, f)
            f.seek(0)
            transfer.extract_member(f, member, Path(local_path))
