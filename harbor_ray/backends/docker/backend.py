"""The Docker backend: one container per sandbox, on the local daemon or a remote one over TLS.

Everything goes through the docker SDK. Containers are hardened (caps dropped, no new privileges,
pids/memory/cpu limits, no network unless asked), labeled, and auto-removed when PID 1 (a `sleep`
of the TTL) ends, so a sandbox outlives every process of ours by at most its TTL.
"""

from __future__ import annotations

import builtins
import functools
import logging
import ssl
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harbor_ray import labels as L
from harbor_ray.backends import egress, transfer
from harbor_ray.backends.base import ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.backends.docker import exec as X
from harbor_ray.backends.docker import holders as H
from harbor_ray.backends.docker import network as N
from harbor_ray.backends.docker import runtime as R
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.docker.endpoint import check_docker_host, connection_error, first_line, make_client
from harbor_ray.backends.images import KeyedLocks, env_image_tag
from harbor_ray.errors import HarborRayError, ImageBuildError, SandboxGone, SandboxStartError, TransferError

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

_BUILD_LOCKS = KeyedLocks()
_LOG_TAIL_LINES = 15


def _typed_connection_errors[F: Callable[..., Any]](method: F) -> F:
    """A lost connection mid-call (daemon gone, network dropped) becomes BackendUnavailable, one line."""

    @functools.wraps(method)
    def wrapper(self: DockerBackend, *args: Any, **kwargs: Any) -> Any:
        import requests

        try:
            return method(self, *args, **kwargs)
        except HarborRayError:
            raise
        except (requests.ConnectionError, requests.Timeout, ConnectionError, ssl.SSLError) as e:
            raise self._unavailable(e) from e

    return wrapper  # type: ignore[return-value]


class DockerBackend:
    """Sandboxes as containers of one Docker daemon.

    >>> backend = DockerBackend(DockerBackendConfig())   # the local daemon
    >>> backend.ping()  # doctest: +SKIP
    '20.10.24+dfsg1'
    """

    kind = "docker"

    def __init__(self, config: DockerBackendConfig | None = None, *, output_limit_bytes: int = 1_000_000) -> None:
        self.config = config or DockerBackendConfig()
        self.endpoint = check_docker_host(self.config)
        self.output_limit_bytes = output_limit_bytes
        self._client: docker.DockerClient | None = None

    # -- connection -------------------------------------------------------------------------------

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = make_client(self.config)
        return self._client

    def _unavailable(self, e: BaseException) -> HarborRayError:
        return connection_error(self.endpoint, e)

    @_typed_connection_errors
    def ping(self) -> str:
        import docker.errors
        import requests

        try:
            self.client.ping()
            return str(self.client.version()["Version"])
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise self._unavailable(e) from e

    # -- images -----------------------------------------------------------------------------------

    @_typed_connection_errors
    def ensure_image(self, spec: SandboxSpec) -> str:
        if spec.agent_runtime:  # built (and its volume filled) once per daemon, before the task's image
            R.ensure_runtime(self.client, self.endpoint.url, spec.agent_runtime, self.build_runtime)
        return self._ensure_task_image(spec)

    @_typed_connection_errors
    def ensure_runtime_image(self, name: str) -> str:
        """Agent runtime `name`'s image on this daemon, built once (for Kubernetes nodes that run its images)."""
        return R.ensure_runtime_image(self.client, self.endpoint.url, name, self.build_runtime)

    def build_runtime(self, context: str, tag: str) -> None:
        """Build an agent runtime's image from its context, as task images are built (labels, timeout, log tail)."""
        self._build(SandboxSpec(run_label=L.RUNTIME_RUN, build_context=context), tag)

    def _ensure_task_image(self, spec: SandboxSpec) -> str:
        import docker.errors

        if not spec.build_context:
            if not spec.image:
                msg = "sandbox spec: give an image or a build_context (a directory with a Dockerfile)"
                raise SandboxStartError(msg)
            try:
                self.client.images.get(spec.image)
            except docker.errors.ImageNotFound as e:
                where = self.endpoint.url
                msg = f"image {spec.image}: not on the daemon at {where} and nothing can be pulled; build it"
                raise SandboxStartError(msg) from e
            return spec.image
        tag = env_image_tag(spec.build_context)
        with _BUILD_LOCKS.hold(f"{self.endpoint.url}|{tag}"):
            if not spec.force_build and self._has_image(tag):
                return tag
            self._build(spec, tag)
        return tag

    def _has_image(self, tag: str) -> bool:
        return self._image_id(tag) is not None

    def _build(self, spec: SandboxSpec, tag: str) -> None:
        import docker.errors

        lines: list[str] = []
        image_labels = {L.RUN: spec.run_label, L.KIND: "image", L.CREATED: str(int(time.time()))}
        replaced = self._image_id(tag)  # a forced rebuild leaves the old image untagged: remove it after
        started = time.monotonic()
        try:
            for chunk in self.client.api.build(
                path=str(spec.build_context),
                tag=tag,
                labels=image_labels,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
                timeout=int(self.config.build_timeout_s),
            ):
                if "stream" in chunk:
                    lines.extend(chunk["stream"].splitlines())
                if "error" in chunk:
                    lines.append(chunk["error"])
                    tail = " | ".join(line.strip() for line in lines[-_LOG_TAIL_LINES:] if line.strip())
                    msg = f"build of {spec.build_context} failed: {tail}"
                    raise ImageBuildError(msg)
        except docker.errors.APIError as e:
            msg = f"build of {spec.build_context} failed: {first_line(e)}"
            raise ImageBuildError(msg) from e
        log.info("built %s from %s in %.1fs", tag, spec.build_context, time.monotonic() - started)
        if replaced and replaced != self._image_id(tag):
            try:
                self.client.api.remove_image(replaced, noprune=False)
            except docker.errors.APIError as e:  # still used by a running sandbox: it goes with the next clean
                log.debug("kept replaced image %s: %s", replaced[:19], first_line(e))

    def _image_id(self, tag: str) -> str | None:
        import docker.errors

        try:
            return str(self.client.api.inspect_image(tag)["Id"])
        except docker.errors.ImageNotFound:
            return None

    # -- lifecycle --------------------------------------------------------------------------------

    @_typed_connection_errors
    def create(self, spec: SandboxSpec, image: str) -> SandboxHandle:
        import docker.errors
        import requests

        name = f"{spec.run_label}-{uuid.uuid4().hex[:10]}"
        labels = L.sandbox_labels(
            spec.run_label, pool=spec.pool, owner=spec.owner or L.current_owner(), ttl_s=spec.ttl_s
        ) | dict(spec.labels)
        kwargs: dict[str, Any] = {
            "name": name,
            "hostname": name[:63],
            "labels": labels,
            # The image's ENTRYPOINT stays (Harbor only replaces CMD): an entrypoint that ends in `exec "$@"`
            # then runs the sleep; without one, the sleep is PID 1's child under init.
            "command": ["sleep", str(int(spec.ttl_s))],
            "auto_remove": True,  # when PID 1's TTL runs out, the container goes too
            "init": True,  # a real PID 1 that reaps zombies and forwards signals
            "nano_cpus": int(spec.cpus * 1e9),
            "mem_limit": f"{spec.memory_mb}m",
            "memswap_limit": f"{spec.memory_mb}m",
            "pids_limit": spec.pids_limit,
            "cap_drop": ["ALL"],
            "cap_add": list(spec.cap_add),
            "security_opt": ["no-new-privileges"] if spec.no_new_privileges else [],
            "privileged": False,
            "read_only": spec.read_only_root,
            "environment": dict(spec.env),
        }
        if spec.agent_runtime:
            kwargs["volumes"], kwargs["environment"]["PATH"] = R.mount(spec.agent_runtime, self.client, image)
        if spec.workdir:  # else the image's WORKDIR, as Harbor's Docker environment
            kwargs["working_dir"] = spec.workdir
        if spec.runtime:  # else the daemon's default runtime (runc)
            kwargs["runtime"] = spec.runtime
        if spec.gpus:
            kwargs["device_requests"] = [_gpu_request(spec.gpus)]
        if spec.read_only_root:
            kwargs["tmpfs"] = {"/tmp": "rw,exec,size=512m"}
        if spec.network:
            kwargs["network_mode"] = "bridge"
        else:
            kwargs["network_mode"] = "none"
        endpoints = egress.endpoints(spec)  # bad HOST:PORT -> ConfigError before anything exists
        kwargs["environment"] |= egress.sandbox_env(spec)
        holder: H.Holder | None = None
        if egress.restricted(spec):
            # the network namespace of a holder (from the stock, else made now): docs/network.md
            holders = H.holders_of(self.client)
            holder = holders.take(name, labels, endpoints, spec.ttl_s, self.config.holder_stock_size())
            labels[L.EGRESS_NET], labels[L.RELAYS] = holder.network, ",".join(holder.relays)
            labels[L.HOLDER] = holder.id
            # hostname, /etc/hosts and DNS are the holder's: Docker refuses them with a container: network
            del kwargs["hostname"]
            kwargs["network_mode"] = f"container:{holder.id}"
        elif spec.network and spec.gateway:  # full network: the same gateway name, straight to it
            kwargs["extra_hosts"] = {egress.GATEWAY_HOSTNAME: N.resolve_for_hosts(endpoints[0])}
        try:
            # create + start, not run(): run() would try to pull a missing image from a registry.
            container = self.client.containers.create(image, **kwargs)
            container.start()
        except docker.errors.ImageNotFound as e:
            self._abandon_holder(holder)
            msg = f"image {image}: not on the daemon at {self.endpoint.url}; build it first (ensure_image)"
            raise SandboxStartError(msg) from e
        except (requests.ConnectionError, docker.errors.DockerException) as e:
            self._remove_quietly(name)
            self._abandon_holder(holder)
            if isinstance(e, requests.ConnectionError):
                raise self._unavailable(e) from e
            msg = f"container {name} from {image} did not start: {first_line(e)}"
            if spec.runtime and "unknown runtime" in str(e).lower():  # Docker's words for an unregistered one
                msg = f"{self.runtime_fix(spec.runtime)} (container {name}: {first_line(e)})"
            raise SandboxStartError(msg) from e
        if holder is not None:
            try:
                # the holder runs, serves this sandbox alone, its relays are on its network: never cut off silently
                H.holders_of(self.client).settle(holder, name)
            except BaseException:
                self._remove_quietly(name)
                self._abandon_holder(holder)
                raise
        return SandboxHandle("docker", container.id, name, self.endpoint.url, image, labels)

    def runtimes(self) -> list[str]:
        """The OCI runtimes registered on this daemon (`docker info`), e.g. ['runc', 'runsc']."""
        return sorted(self.client.info().get("Runtimes") or {})

    def runtime_fix(self, runtime: str) -> str:
        """How to make `runtime` (sandbox.runtime) usable on this daemon, naming what it has."""
        try:
            have = ", ".join(self.runtimes()) or "none"
        except Exception:  # the error being explained is the one to show
            have = "?"
        return (
            f"sandbox.runtime={runtime}: the daemon at {self.endpoint.url} runs {have}; register {runtime} there "
            f"(daemon.json \"runtimes\" or dockerd --add-runtime, docs/config.md) or set sandbox.runtime=''"
        )

    def _abandon_holder(self, holder: H.Holder | None) -> None:
        if holder is not None:  # never given to another sandbox: it goes with its network
            N.remove_container(self.client, holder.id)
            N.remove_egress(self.client, holder.network)

    @_typed_connection_errors
    def destroy(self, handle: SandboxHandle) -> None:
        network, holder = handle.labels.get(L.EGRESS_NET), handle.labels.get(L.HOLDER)
        if holder and network:  # the sandbox goes (waited for), its holder and network after it (sent)
            self._remove_quietly(handle.id)
            H.release(self.client, holder, network)
            return
        relays = [r for r in handle.labels.get(L.RELAYS, "").split(",") if r]
        if network:  # on its own network (before holders): the relays leave it while the container goes
            N.unplug(self.client, network, relays)
        self._remove_quietly(handle.id)
        if network:
            N.drop(self.client, network)

    def settle(self, timeout_s: float) -> bool:
        """The networks of the holders this process released (removed a second later, `holders.release`) and
        the stock refills it started: over within `timeout_s`, or left to a sweep (False)."""
        deadline = time.monotonic() + timeout_s
        refilled = H.refills_done(timeout_s)
        return N.removals_done(max(0.0, deadline - time.monotonic())) and refilled

    def wait_gone(self, handle: SandboxHandle) -> None:
        """Block until the container is no longer running (exited, killed or removed).

        The wait holds one of the client's pooled connections for the sandbox's life; other calls use others.
        """
        import docker.errors
        import requests

        try:
            self.client.api.wait(handle.id, timeout=None)
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.RequestException, OSError) as e:
            raise self._unavailable(e) from e

    def _remove_quietly(self, ref: str) -> None:
        import docker.errors

        try:
            self.client.api.remove_container(ref, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise self._unavailable(e) from e
            # 409: removal (auto-remove) already in progress; return only once the container is gone.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    self.client.api.inspect_container(ref)
                except docker.errors.NotFound:
                    return
                time.sleep(0.1)

    @_typed_connection_errors
    def list(self, labels: dict[str, str]) -> list[SandboxHandle]:
        return [
            SandboxHandle("docker", c["Id"], c["Names"][0].lstrip("/"), self.endpoint.url, c["Image"], c["Labels"])
            for c in self.containers(labels)
            if (c.get("Labels") or {}).get(L.KIND) not in L.COMPANION_KINDS
        ]

    @_typed_connection_errors
    def sweep_networks(self, prefix: str, *, dry_run: bool = False) -> builtins.list[str]:
        """Remove (or list) the network holders and sandbox networks of run `prefix` that serve no sandbox any
        more (the reaper calls it)."""
        return H.sweep(self.client, prefix, dry_run=dry_run)

    def containers(self, labels: dict[str, str], *, running_only: bool = False) -> builtins.list[dict[str, Any]]:
        """The daemon's one-call listing (id, names, image, labels, state) of the containers with these labels.

        One call on purpose: the SDK's `containers.list` inspects each container after listing them, and
        on a shared daemon another run's container can go in between (NotFound).
        """
        filters: dict[str, Any] = {"label": [f"{k}={v}" if v else k for k, v in labels.items()]}
        if running_only:
            filters["status"] = "running"
        return list(self.client.api.containers(all=not running_only, filters=filters))

    # -- exec -------------------------------------------------------------------------------------

    @_typed_connection_errors
    def exec(
        self,
        handle: SandboxHandle,
        cmd: str | builtins.list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        user: str | None = None,
    ) -> ExecResult:
        return X.run(
            self.client.api,
            self.endpoint,
            handle,
            cmd,
            cwd=cwd,
            env=env,
            timeout_s=timeout_s,
            user=user,
            limit=self.output_limit_bytes,
        )

    # -- files ------------------------------------------------------------------------------------

    @_typed_connection_errors
    def upload(self, handle: SandboxHandle, local_path: str, remote_path: str) -> None:
        archive, size = transfer.pack_for_target(local_path, remote_path)
        with archive:
            self.put_archive(handle, archive, size, what=f"upload to {handle.name}:{remote_path}")

    @_typed_connection_errors
    def put_archive(self, handle: SandboxHandle, archive: IO[bytes], size: int, *, what: str = "") -> None:
        what = what or f"upload to {handle.name}"
        gone = SandboxGone(f"sandbox {handle.name}: the container is gone")
        with _archive_errors(gone, f"{what} failed"):
            ok = self.client.api.put_archive(handle.id, "/", _SizedBody(archive, size))
        if not ok:
            msg = f"{what} was refused by the daemon"
            raise TransferError(msg)

    @_typed_connection_errors
    def get_archive(self, handle: SandboxHandle, remote_path: str, sink: IO[bytes]) -> str:
        missing = TransferError(f"download: {handle.name}:{remote_path} does not exist")
        with _archive_errors(missing, f"download from {handle.name}:{remote_path} failed"):
            stream, stat = self.client.api.get_archive(handle.id, remote_path)
            for chunk in stream:
                sink.write(chunk)
        return str(stat["name"])

    @_typed_connection_errors
    def download(self, handle: SandboxHandle, remote_path: str, local_path: str) -> None:
        with tempfile.TemporaryFile(prefix="harbor-ray-dl-") as f:
            member = self.get_archive(handle, remote_path, f)
            f.seek(0)
            transfer.extract_member(f, member, Path(local_path))


class _SizedBody:
    """An archive as a request body of known length: requests then streams it (8 KiB reads) under a
    Content-Length, where Docker 20.10 refuses a chunked body; `read` stops at `size` whatever follows."""

    def __init__(self, archive: IO[bytes], size: int) -> None:
        self._archive, self._left = archive, size
        self._size = size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1 << 16):
            yield chunk

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._archive.read(n)
        self._left -= len(data)
        return data


def _gpu_request(count: int) -> Any:
    """The NVIDIA device request Harbor's Docker environment makes for a task's GPUs."""
    import docker.types

    return docker.types.DeviceRequest(driver="nvidia", count=count, capabilities=[["gpu"]])


@contextmanager
def _archive_errors(not_found: HarborRayError, failed: str) -> Iterator[None]:
    """An archive call's 404 becomes `not_found`, any other API error a TransferError `failed: <why>`."""
    import docker.errors

    try:
        yield
    except docker.errors.NotFound as e:
        raise not_found from e
    except docker.errors.APIError as e:
        msg = f"{failed}: {first_line(e)}"
        raise TransferError(msg) from e
