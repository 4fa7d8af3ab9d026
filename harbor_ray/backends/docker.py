"""The Docker backend: one container per sandbox, on the local daemon or a remote one over TLS.

Everything goes through the docker SDK. Containers are hardened (caps dropped, no new privileges,
pids/memory/cpu limits, no network unless asked), labeled, and auto-removed when PID 1 (a `sleep`
of the TTL) ends, so a sandbox outlives every process of ours by at most its TTL.
"""

from __future__ import annotations

import builtins
import functools
import logging
import os
import shutil
import ssl
import struct
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harbor_ray import labels as L
from harbor_ray.backends.base import ExecResult, SandboxHandle, SandboxSpec, upload_paths
from harbor_ray.backends.docker_config import DockerBackendConfig
from harbor_ray.backends.docker_host import check_docker_host, connection_error, make_client
from harbor_ray.errors import (
    ExecTimeout,
    HarborRayError,
    ImageBuildError,
    SandboxGone,
    SandboxStartError,
    TransferError,
)
from harbor_ray.images import KeyedLocks, env_image_tag

if TYPE_CHECKING:
    import docker

log = logging.getLogger(__name__)

_PID_DIR = "/tmp/.harbor-ray"
_BUILD_LOCKS = KeyedLocks()
_LOG_TAIL_LINES = 15
# String commands run under bash like Harbor's own environments; images without bash fall back to sh.
_SHELL_OR_BASH = 'if command -v bash >/dev/null 2>&1; then exec bash -c "$1"; else exec sh -c "$1"; fi'


class ExecFrames:
    """Iterate (stream, bytes) frames of a non-tty exec stream, raising TimeoutError at the deadline.

    It reads through http.client's buffered reader, not the socket beneath it: output that arrived in
    the same packet as the response headers is already in that buffer (the SDK's own raw-socket
    reader loses it, which a remote daemon makes common).
    """

    def __init__(self, exec_socket: Any, deadline: float | None) -> None:
        """`exec_socket` is what `exec_start(socket=True)` returns: the SDK keeps the HTTP response on it."""
        self.stream = exec_socket._response.raw._fp.fp  # urllib3 response -> http.client response -> BufferedReader
        self.deadline = deadline
        self.pending = bytearray()
        self.eof = False

    def _fill(self, need: int) -> bool:
        while len(self.pending) < need and not self.eof:
            timeout = None if self.deadline is None else self.deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                raise TimeoutError
            self.stream.raw._sock.settimeout(timeout)  # a socket timeout is a TimeoutError too
            chunk = self.stream.read1(65536)
            if not chunk:
                self.eof = True
            self.pending.extend(chunk)
        return len(self.pending) >= need

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        while self._fill(8):
            stream, size = self.pending[0], struct.unpack(">I", self.pending[4:8])[0]
            if not self._fill(8 + size):
                return
            data = bytes(self.pending[8 : 8 + size])
            del self.pending[: 8 + size]
            yield stream, data


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


def _first_line(e: BaseException) -> str:
    text = getattr(e, "explanation", None) or str(e)
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__


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
            msg = f"build of {spec.build_context} failed: {_first_line(e)}"
            raise ImageBuildError(msg) from e
        log.info("built %s from %s in %.1fs", tag, spec.build_context, time.monotonic() - started)
        if replaced and replaced != self._image_id(tag):
            try:
                self.client.api.remove_image(replaced, noprune=False)
            except docker.errors.APIError as e:  # still used by a running sandbox: it goes with the next clean
                log.debug("kept replaced image %s: %s", replaced[:19], _first_line(e))

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
            "entrypoint": ["sleep"],
            "command": [str(int(spec.ttl_s))],
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
            "working_dir": spec.workdir or "/",
            "environment": dict(spec.env),
        }
        if spec.read_only_root:
            kwargs["tmpfs"] = {"/tmp": "rw,exec,size=512m"}
        if spec.network:
            kwargs["network_mode"] = "bridge"
        else:
            kwargs["network_mode"] = "none"
        try:
            # create + start, not run(): run() would try to pull a missing image from a registry.
            container = self.client.containers.create(image, **kwargs)
            container.start()
        except docker.errors.ImageNotFound as e:
            msg = f"image {image}: not on the daemon at {self.endpoint.url}; build it first (ensure_image)"
            raise SandboxStartError(msg) from e
        except (requests.ConnectionError, docker.errors.DockerException) as e:
            self._remove_quietly(name)
            if isinstance(e, requests.ConnectionError):
                raise self._unavailable(e) from e
            msg = f"container {name} from {image} did not start: {_first_line(e)}"
            raise SandboxStartError(msg) from e
        return SandboxHandle("docker", container.id, name, self.endpoint.url, image, labels)

    @_typed_connection_errors
    def destroy(self, handle: SandboxHandle) -> None:
        self._remove_quietly(handle.id)

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
        found = self.client.containers.list(all=True, filters={"label": [f"{k}={v}" for k, v in labels.items()]})
        return [
            SandboxHandle("docker", c.id, c.name, self.endpoint.url, (c.image.tags or [c.image.id])[0], c.labels)
            for c in found
        ]

    @_typed_connection_errors
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
        argv = [_SHELL_OR_BASH, "sh", cmd] if isinstance(cmd, str) else list(cmd)
        token = uuid.uuid4().hex[:12]
        # Record the command's pid so a timeout can kill it (and its process group: docker exec makes
        # every exec'd process a group leader) for real.
        wrapped = [
            "/bin/sh",
            "-c",
            f'mkdir -p {_PID_DIR} 2>/dev/null; echo $$ > {_PID_DIR}/{token} 2>/dev/null; exec "$@"',
            "sh",
            *(["/bin/sh", "-c", *argv] if isinstance(cmd, str) else argv),
        ]
        exec_id = self._exec_create(handle, wrapped, cwd=cwd, env=env, user=user)
        deadline = None if not timeout_s else time.monotonic() + timeout_s
        try:
            out, err, truncated = self._read_exec(handle, exec_id, deadline)
        except TimeoutError as e:
            self._kill_exec(handle, token)
            shown = cmd if isinstance(cmd, str) else " ".join(cmd)
            msg = f"command timed out after {timeout_s:g}s and was killed: {shown[:200]}"
            raise ExecTimeout(msg) from e
        code = self.client.api.exec_inspect(exec_id).get("ExitCode")
        if code is None:
            code = -1
        return ExecResult(out, err, int(code), truncated)

    def _exec_create(
        self,
        handle: SandboxHandle,
        argv: builtins.list[str],
        *,
        cwd: str | None,
        env: dict[str, str] | None,
        user: str | None,
    ) -> str:
        import docker.errors
        import requests

        try:
            return str(
                self.client.api.exec_create(
                    handle.id, argv, stdout=True, stderr=True, workdir=cwd, environment=env or None, user=user or ""
                )["Id"]
            )
        except docker.errors.NotFound as e:
            msg = f"sandbox {handle.name}: the container is gone"
            raise SandboxGone(msg) from e
        except docker.errors.APIError as e:
            if e.status_code == 409:  # container not running
                msg = f"sandbox {handle.name}: the container is not running ({_first_line(e)})"
                raise SandboxGone(msg) from e
            raise self._unavailable(e) from e
        except requests.ConnectionError as e:
            raise self._unavailable(e) from e

    def _read_exec(self, handle: SandboxHandle, exec_id: str, deadline: float | None) -> tuple[str, str, bool]:
        sock = self.client.api.exec_start(exec_id, socket=True)
        # The SDK's own frame reader has no deadline and can lose early output; read the stream ourselves.
        reader = ExecFrames(sock, deadline)
        limit = self.output_limit_bytes
        buffers = {1: bytearray(), 2: bytearray()}
        dropped = 0
        try:
            for stream, data in reader:
                buf = buffers.get(stream, buffers[1])
                room = max(0, limit - len(buf))
                buf.extend(data[:room])
                dropped += len(data) - min(room, len(data))
        finally:
            sock.close()
        texts = []
        for buf in buffers.values():
            text = buf.decode(errors="replace")
            if len(buf) >= limit and dropped:
                text += f"\n[harbor-ray: output capped at {limit} bytes, {dropped} bytes dropped]"
            texts.append(text)
        return texts[0], texts[1], dropped > 0

    def _kill_exec(self, handle: SandboxHandle, token: str) -> None:
        pidfile = f"{_PID_DIR}/{token}"
        script = (
            f'p=$(cat {pidfile} 2>/dev/null) && [ -n "$p" ] && {{ kill -9 -"$p"; kill -9 "$p"; }} 2>/dev/null; '
            f"rm -f {pidfile}"
        )
        try:
            exec_id = self.client.api.exec_create(handle.id, ["/bin/sh", "-c", script], user="0")["Id"]
            self.client.api.exec_start(exec_id)
        except Exception as e:  # the sandbox may be gone already, which also ends the command
            log.debug("kill after timeout in %s: %s", handle.name, e)

    # -- files ------------------------------------------------------------------------------------

    @_typed_connection_errors
    def upload(self, handle: SandboxHandle, local_path: str, remote_path: str) -> None:
        import docker.errors

        src, target = upload_paths(local_path, remote_path)
        with tempfile.SpooledTemporaryFile(max_size=64 << 20) as buf:
            with tarfile.open(fileobj=buf, mode="w") as tar:
                # Members carry the full target path, so extracting at "/" creates missing parents.
                tar.add(str(src), arcname=str(target).lstrip("/") or ".", recursive=True)
            buf.seek(0)
            try:
                ok = self.client.api.put_archive(handle.id, "/", buf.read())
            except docker.errors.NotFound as e:
                msg = f"sandbox {handle.name}: the container is gone"
                raise SandboxGone(msg) from e
            except docker.errors.APIError as e:
                msg = f"upload to {handle.name}:{remote_path} failed: {_first_line(e)}"
                raise TransferError(msg) from e
        if not ok:
            msg = f"upload to {handle.name}:{remote_path} was refused by the daemon"
            raise TransferError(msg)

    @_typed_connection_errors
    def download(self, handle: SandboxHandle, remote_path: str, local_path: str) -> None:
        import docker.errors

        try:
            stream, stat = self.client.api.get_archive(handle.id, remote_path)
        except docker.errors.NotFound as e:
            msg = f"download: {handle.name}:{remote_path} does not exist"
            raise TransferError(msg) from e
        except docker.errors.APIError as e:
            msg = f"download from {handle.name}:{remote_path} failed: {_first_line(e)}"
            raise TransferError(msg) from e
        dest = Path(local_path)
        with tempfile.TemporaryDirectory(prefix="harbor-ray-dl-") as tmp:
            archive = Path(tmp) / "a.tar"
            with archive.open("wb") as f:
                for chunk in stream:
                    f.write(chunk)
            with tarfile.open(archive) as tar:
                tar.extractall(Path(tmp) / "x", filter="tar")
            extracted = Path(tmp) / "x" / stat["name"]
            dest.parent.mkdir(parents=True, exist_ok=True)
            if extracted.is_dir() and not extracted.is_symlink():
                shutil.copytree(extracted, dest, symlinks=True, dirs_exist_ok=True)
            else:
                if dest.is_dir():
                    shutil.rmtree(dest)
                shutil.copy2(extracted, dest, follow_symlinks=False)
        os.utime(dest)
