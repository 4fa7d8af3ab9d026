"""One sandbox, one Ray actor: `Sandbox` is the plain handle users hold; `_SandboxActor` stays private.

The actor may be started idle, ahead of demand (its process start and SDK import are the slow part),
then creates its one sandbox when `start(spec)` is called. It destroys the sandbox on `stop()` and
on graceful exit (`__ray_shutdown__`, atexit). A hard kill (`ray.kill`, a lost node) runs no hook:
the caller's `Sandbox` then destroys the container itself from the handle it kept, and the reaper
(`harbor_ray.reaper`) finds any remaining orphan by its `harbor-ray/actor` label.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO, Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from harbor_ray import errors
from harbor_ray import labels as L
from harbor_ray.backends import BackendConfig, make_backend
from harbor_ray.backends.base import ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.backends.transfer import copy_into, pack_bounded, pack_into, unpack_then
from harbor_ray.errors import HarborRayError, SandboxGone, SandboxStartError, TransferError

log = logging.getLogger(__name__)

_CHUNK_BYTES = 4 << 20  # uploads and downloads cross Ray in pieces this big, never whole


@dataclass(frozen=True)
class SandboxLimits:
    """Bounds every sandbox actor applies, whatever the backend: the `sandbox.*` keys of the same names.

    `exec_timeout_s` bounds each exec whose caller gives no timeout; `output_limit_bytes` caps each exec
    stream; `download_limit_bytes` caps the file content one download brings back (tails kept).
    """

    exec_timeout_s: float = 600.0
    output_limit_bytes: int = 1_000_000
    download_limit_bytes: int = 50_000_000

    @classmethod
    def from_config(cls, sandbox: Any) -> SandboxLimits:
        """From a `SandboxConfig` (the `sandbox` section of the config)."""
        return cls(
            exec_timeout_s=float(sandbox.exec_timeout_s),
            output_limit_bytes=int(sandbox.output_limit_bytes),
            download_limit_bytes=int(sandbox.download_limit_bytes),
        )


class _SandboxActor:
    """The Ray actor body. Backend calls run in threads, so exec calls overlap and never block the loop."""

    def __init__(self, backend_config: BackendConfig, limits: SandboxLimits | None = None) -> None:
        self._limits = limits or SandboxLimits()
        self._backend = make_backend(backend_config, output_limit_bytes=self._limits.output_limit_bytes)
        self._handle: SandboxHandle | None = None
        self._stopped = False
        self._lifecycle = asyncio.Lock()
        self._actor_id = ray.get_runtime_context().get_actor_id() or ""
        self._uploads: dict[str, IO[bytes]] = {}  # upload id -> the pieces received so far
        atexit.register(self._destroy_now)

    def ready(self) -> str:
        """Connect now so a later `start` pays only for the container; returns the daemon/API version."""
        return self._backend.ping()

    async def start(self, spec: SandboxSpec) -> SandboxHandle:
        if self._handle is not None or self._stopped:
            msg = "this SandboxActor already owns (or owned) a sandbox; start a new actor for a new sandbox"
            raise SandboxStartError(msg)
        # The actor's id and its worker process are what a reaper checks to prove the sandbox orphaned.
        own = ((L.ACTOR, self._actor_id), (L.PROCESS, L.process_id()))
        spec = replace(spec, owner=spec.owner or L.current_owner(), labels=(*spec.labels, *own))
        async with self._lifecycle:
            image = await asyncio.to_thread(self._backend.ensure_image, spec)
            self._handle = await asyncio.to_thread(self._backend.create, spec, image)
            return self._handle

    def _require(self) -> SandboxHandle:
        if self._handle is None or self._stopped:
            msg = "the sandbox is not started or already stopped"
            raise SandboxGone(msg)
        return self._handle

    async def exec(self, cmd: str | list[str], **kwargs: Any) -> ExecResult:
        kwargs["timeout_s"] = kwargs.get("timeout_s") or self._limits.exec_timeout_s  # no exec runs unbounded
        return await asyncio.to_thread(self._backend.exec, self._require(), cmd, **kwargs)

    async def upload_part(self, upload_id: str, data: bytes, remote_path: str | None = None) -> None:
        """One piece of a tar made by `pack`; the last one (with `remote_path`) unpacks it into the sandbox."""
        handle = self._require()
        part = self._uploads.get(upload_id)
        if part is None:
            part = self._uploads[upload_id] = tempfile.NamedTemporaryFile(prefix="harbor-ray-up-")  # noqa: SIM115
        await asyncio.to_thread(part.write, data)
        if remote_path is None:
            return
        del self._uploads[upload_id]
        with part:
            part.flush()
            archive = Path(part.name)
            await asyncio.to_thread(unpack_then, archive, lambda p: self._backend.upload(handle, p, remote_path))

    async def download_stream(self, remote_path: str) -> AsyncIterator[bytes]:
        """The download as a tar (capped at `download_limit_bytes`), in pieces: call with num_returns="streaming"."""
        handle = self._require()
        with tempfile.TemporaryDirectory(prefix="harbor-ray-actor-") as tmp:
            target = Path(tmp) / "tree" / (PurePosixPath(remote_path).name or "root")
            archive = Path(tmp) / "download.tar"
            await asyncio.to_thread(self._backend.download, handle, remote_path, str(target))
            limit = self._limits.download_limit_bytes
            dropped = await asyncio.to_thread(pack_bounded, target, limit, archive)
            if dropped:
                log.warning("download %s:%s capped at %d bytes (%d dropped)", handle.name, remote_path, limit, dropped)
            with archive.open("rb") as f:
                while chunk := await asyncio.to_thread(f.read, _CHUNK_BYTES):
                    yield chunk

    async def health(self) -> bool:
        """True when the sandbox answers a trivial command."""
        try:
            result = await asyncio.to_thread(self._backend.exec, self._require(), ["true"], timeout_s=30)
        except HarborRayError:
            return False
        return result.return_code == 0

    def info(self) -> dict[str, Any]:
        return {
            "handle": self._handle,
            "stopped": self._stopped,
            "actor_id": self._actor_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
        }

    async def stop(self) -> None:
        async with self._lifecycle:  # a start still creating the container finishes first, then is undone
            await asyncio.to_thread(self._destroy_now)

    def detach(self) -> None:
        """Keep the sandbox when this actor ends (Harbor's delete=false): it lives until its TTL or a clean."""
        self._stopped = True

    def _destroy_now(self) -> None:
        if self._handle is not None and not self._stopped:
            self._stopped = True
            try:
                self._backend.destroy(self._handle)
            except HarborRayError as e:
                log.warning("could not destroy %s: %s", self._handle.name, e)
        self._stopped = True

    def __ray_shutdown__(self) -> None:
        self._destroy_now()


def actor_class(*, num_cpus: float = 0, resources: dict[str, float] | None = None, **options: Any) -> Any:
    """The Ray actor class with its scheduling options (async, so calls overlap)."""
    return ray.remote(_SandboxActor).options(
        num_cpus=num_cpus, resources=resources or {}, max_concurrency=64, max_restarts=0, **options
    )


class Sandbox:
    """A started sandbox owned by a Ray actor. Errors arrive as harbor_ray errors, one line each.

    >>> sandbox = await Sandbox.create(DockerBackendConfig(), SandboxSpec(run_label="demo", image=BUSYBOX_IMAGE))
    >>> (await sandbox.exec("echo hi")).stdout  # doctest: +SKIP
    'hi\\n'
    """

    def __init__(self, actor: Any, handle: SandboxHandle, backend_config: BackendConfig) -> None:
        self.actor = actor
        self.handle = handle
        self._backend_config = backend_config
        self._stopped = False

    @classmethod
    async def create(
        cls,
        backend_config: BackendConfig,
        spec: SandboxSpec,
        *,
        actor: Any = None,
        limits: SandboxLimits | None = None,
        **actor_options: Any,
    ) -> Sandbox:
        """Start an actor (or use an idle one) and create its sandbox; on failure nothing is left behind."""
        if actor is None:
            actor = actor_class(**actor_options).remote(backend_config, limits or SandboxLimits())
        try:
            handle = await call_actor(actor.start.remote(spec), "start")
        except BaseException:
            # A cancelled or failed start may still be creating the container: stop() waits for it and
            # destroys it, then the actor goes.
            try:
                await asyncio.wait_for(asyncio.shield(call_actor(actor.stop.remote(), "stop")), timeout=30)
            except BaseException as e:  # the actor may be dead already; the reaper is the backstop
                log.debug("stop after failed start: %s", e)
            await _stop_actor(actor)
            raise
        return cls(actor, handle, backend_config)

    @property
    def id(self) -> str:
        return self.handle.id

    async def exec(
        self,
        cmd: str | list[str],
        *,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        user: str | None = None,
    ) -> ExecResult:
        return await self._call("exec", cmd, cwd=cwd, env=env, timeout_s=timeout_s, user=user)

    async def upload(self, local_path: str | Path, remote_path: str) -> None:
        src = Path(local_path)
        if not src.exists():
            msg = f"upload: {src} does not exist"
            raise TransferError(msg)
        upload_id = uuid.uuid4().hex
        with tempfile.TemporaryFile(prefix="harbor-ray-up-") as f:
            await asyncio.to_thread(pack_into, src, f)
            f.seek(0)
            chunk = await asyncio.to_thread(f.read, _CHUNK_BYTES)
            while True:  # in pieces, so neither side holds a large upload whole
                following = await asyncio.to_thread(f.read, _CHUNK_BYTES)
                await self._call("upload_part", upload_id, chunk, None if following else remote_path)
                if not following:
                    return
                chunk = following

    async def download(self, remote_path: str, local_path: str | Path) -> None:
        """Copy a file or directory out (capped at `sandbox.download_limit_bytes`), streamed through a temp file."""
        with tempfile.TemporaryDirectory(prefix="harbor-ray-dl-") as tmp:
            archive = Path(tmp) / "download.tar"
            with _translated("download", self.handle.name), archive.open("wb") as f:
                async for ref in self.actor.download_stream.options(num_returns="streaming").remote(remote_path):
                    await asyncio.to_thread(f.write, await ref)
            await asyncio.to_thread(unpack_then, archive, lambda p: copy_into(Path(p), Path(local_path)))

    async def health(self) -> bool:
        try:
            return bool(await self._call("health"))
        except SandboxGone:
            return False

    async def detach(self) -> None:
        """Leave the container running after `stop()` ends the actor (for debugging a trial)."""
        await self._call("detach")

    async def stop(self) -> None:
        """Destroy the sandbox and end the actor; also works when the actor already died."""
        if self._stopped:
            return
        self._stopped = True
        try:
            await call_actor(self.actor.stop.remote(), "stop")
        except HarborRayError:
            await asyncio.to_thread(self._destroy_from_here)
        await _stop_actor(self.actor)

    def _destroy_from_here(self) -> None:
        make_backend(self._backend_config).destroy(self.handle)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await call_actor(getattr(self.actor, method).remote(*args, **kwargs), method, self.handle.name)


async def call_actor(
    ref: Any, method: str, name: str = "sandbox", *, died: type[HarborRayError] = SandboxGone, hint: str = ""
) -> Any:
    """Await an actor call; hand back the remote harbor_ray error itself, not a Ray traceback wall.

    A dead actor becomes `died` (SandboxGone for a sandbox's actor) with one line naming it.
    """
    with _translated(method, name, died=died, hint=hint):
        return await ref


@contextmanager
def _translated(
    method: str, name: str = "sandbox", *, died: type[HarborRayError] = SandboxGone, hint: str = ""
) -> Iterator[None]:
    """`call_actor`'s error translation, for a block awaiting several refs (a streamed download)."""
    try:
        yield
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, HarborRayError):
            raise cause from None
        raise
    except (ActorDiedError, ActorUnavailableError) as e:
        cause = creation_error(e)
        if cause is not None:  # the actor's __init__ raised one of ours: that is the user's error, not a death
            raise cause from None
        first = errors.strip_ansi(str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"{name}: its actor died during {method} ({first[:160]}){hint}"
        raise died(msg) from None


_OUR_ERROR = re.compile(r"^harbor_ray\.errors\.(\w+): (.+)$")


def creation_error(e: BaseException) -> HarborRayError | None:
    """Our error that an actor's creation task raised, rebuilt from the death message Ray gives.

    Ray reports a failed `__init__` as ActorDiedError whose text ends with the traceback's last line
    (`harbor_ray.errors.BackendUnavailable: k8s at …`); the cause itself is not attached.
    """
    if not getattr(e, "actor_init_failed", False):
        return None
    lines = [line for line in errors.strip_ansi(str(e)).splitlines() if line.strip()]
    match = _OUR_ERROR.match(lines[-1].strip()) if lines else None
    cls = getattr(errors, match.group(1), None) if match else None
    if match is None or not (isinstance(cls, type) and issubclass(cls, HarborRayError)):
        return None
    return cls(match.group(2))


async def _stop_actor(actor: Any) -> None:
    """End the actor. Its sandbox is already destroyed (or about to be, by `__ray_shutdown__`)."""
    ray.kill(actor, no_restart=True)
