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
from pathlib import Path
from typing import IO, Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from harbor_ray import errors
from harbor_ray import labels as L
from harbor_ray.backends import BackendConfig, make_backend
from harbor_ray.backends.base import ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.backends.transfer import archive_content_bytes, cap_archive, extract_member, pack_for_target
from harbor_ray.errors import HarborRayError, SandboxGone, SandboxStartError, TransferError
from harbor_ray.lean_process import skip_optional_serializers

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
        self._detached = False
        self._served = 0  # sandboxes this process served before the current one (see recycle)
        atexit.register(self._destroy_now)

    def ready(self) -> str:
        """Connect now so a later `start` pays only for the container; returns the daemon/API version."""
        return self._backend.ping()

    async def start(self, spec: SandboxSpec) -> SandboxHandle:
        if self._handle is not None or self._stopped:
            msg = "this SandboxActor already owns (or owned) a sandbox; recycle() it or start a new actor"
            raise SandboxStartError(msg)
        # The actor's id and its worker process are what a reaper checks to prove the sandbox orphaned.
        own = ((L.ACTOR, self._actor_id), (L.PROCESS, L.process_id()))
        spec = replace(spec, owner=spec.owner or L.current_owner(), labels=(*spec.labels, *own))
        async with self._lifecycle:
            image = await asyncio.to_thread(self._backend.ensure_image, spec)
            self._handle = await asyncio.to_thread(self._backend.create, spec, image)
            return self._handle

    def _require(self, sandbox_id: str | None = None) -> SandboxHandle:
        """The current sandbox; `sandbox_id` (every `Sandbox` call gives it) must be that sandbox's.

        A recycled actor serves a new sandbox: a stale handle on the old one must reach nothing.
        """
        if self._handle is None or self._stopped or (sandbox_id is not None and sandbox_id != self._handle.id):
            msg = "the sandbox is not started or already stopped"
            raise SandboxGone(msg)
        return self._handle

    async def exec(self, cmd: str | list[str], sandbox_id: str | None = None, **kwargs: Any) -> ExecResult:
        handle = self._require(sandbox_id)
        kwargs["timeout_s"] = kwargs.get("timeout_s") or self._limits.exec_timeout_s  # no exec runs unbounded
        return await asyncio.to_thread(self._backend.exec, handle, cmd, **kwargs)

    async def upload_part(
        self, upload_id: str, data: bytes, remote_path: str | None = None, sandbox_id: str | None = None
    ) -> None:
        """One piece of a tar made by `pack_for_target`; on the last one (with `remote_path`) the backend
        extracts the whole archive at '/', read from the file the pieces went to: no unpacking here."""
        handle = self._require(sandbox_id)
        part = self._uploads.get(upload_id)
        if part is None:
            part = self._uploads[upload_id] = tempfile.TemporaryFile(prefix="harbor-ray-up-")  # noqa: SIM115
        await asyncio.to_thread(part.write, data)
        if remote_path is None:
            return
        del self._uploads[upload_id]
        with part:
            size = part.tell()
            part.seek(0)
            await asyncio.to_thread(self._backend.put_archive, handle, part, size)

    async def download_stream(self, remote_path: str, sandbox_id: str | None = None) -> AsyncIterator[str | bytes]:
        """The archive's top member name, then the daemon's tar of remote_path in pieces (rewritten capped only
        when its file content is over `download_limit_bytes`): call with num_returns="streaming"."""
        handle = self._require(sandbox_id)
        limit = self._limits.download_limit_bytes
        with (
            tempfile.TemporaryFile(prefix="harbor-ray-dl-") as got,
            tempfile.TemporaryFile(prefix="harbor-ray-dl-") as capped,
        ):
            member = await asyncio.to_thread(self._backend.get_archive, handle, remote_path, got)
            got.seek(0)
            out: IO[bytes] = got
            if await asyncio.to_thread(archive_content_bytes, got) > limit:
                dropped = await asyncio.to_thread(cap_archive, got, limit, capped)
                log.warning("download %s:%s capped at %d bytes (%d dropped)", handle.name, remote_path, limit, dropped)
                capped.seek(0)
                out = capped
            yield member
            while chunk := await asyncio.to_thread(out.read, _CHUNK_BYTES):
                yield chunk

    async def health(self, sandbox_id: str | None = None) -> bool:
        """True when the sandbox answers a trivial command."""
        try:
            result = await asyncio.to_thread(self._backend.exec, self._require(sandbox_id), ["true"], timeout_s=30)
        except HarborRayError:
            return False
        return result.return_code == 0

    async def watch(self, sandbox_id: str | None = None) -> str:
        """Return once the sandbox is gone (its container exited or was removed): "gone"; or at once
        "unsupported" when the backend cannot wait for that. Lets a pool hand out warm sandboxes without
        a health check: it learns of a death when this call returns (or the actor dies)."""
        handle = self._require(sandbox_id)
        wait_gone = getattr(self._backend, "wait_gone", None)
        if wait_gone is None:
            return "unsupported"
        try:
            await asyncio.to_thread(wait_gone, handle)
        except HarborRayError as e:
            log.info("watch of %s ended: %s", handle.name, e)
        return "gone"

    def info(self) -> dict[str, Any]:
        return {
            "handle": self._handle,
            "stopped": self._stopped,
            "actor_id": self._actor_id,
            "node_id": ray.get_runtime_context().get_node_id(),
            "pid": os.getpid(),
            "served": self._served,
            "pending_uploads": len(self._uploads),
        }

    async def stop(self) -> None:
        async with self._lifecycle:  # a start still creating the container finishes first, then is undone
            await asyncio.to_thread(self._destroy_now)

    def detach(self, sandbox_id: str | None = None) -> None:
        """Keep the sandbox when this actor ends (Harbor's delete=false): it lives until its TTL or a clean."""
        self._require(sandbox_id)
        self._stopped = True
        self._detached = True

    async def recycle(self, max_served: int = 0) -> int:
        """After `stop()`, forget the old sandbox so this process can serve a new one; returns how many
        sandboxes it has served. Nothing of the old one stays: its container is destroyed (stop), its
        pending upload pieces are deleted, and calls naming its id raise SandboxGone. A detached sandbox
        (still running) is never recycled over."""
        async with self._lifecycle:
            if not self._stopped or self._detached:
                msg = "recycle: the sandbox is still alive (stop it first) or was detached"
                raise SandboxStartError(msg)
            if max_served and self._served + 1 >= max_served:
                msg = f"recycle: this process served {self._served + 1} sandboxes, its bound"
                raise SandboxStartError(msg)
            for part in self._uploads.values():
                part.close()  # a TemporaryFile: closing deletes it
            self._uploads.clear()
            self._handle = None
            self._stopped = False
            self._served += 1
            return self._served

    def _destroy_now(self) -> None:
        if self._handle is not None and not self._stopped:
            self._stopped = True
            try:
                self._backend.destroy(self._handle)
            except HarborRayError as e:
                self._detached = True  # it may still run: this process is then never recycled over it
                log.warning("could not destroy %s: %s", self._handle.name, e)
        self._stopped = True

    async def settle(self, timeout_s: float) -> bool:
        """Wait for the backend's background clean-up of destroyed sandboxes (before this process is ended)."""
        return await asyncio.to_thread(self._backend.settle, timeout_s)

    def __ray_shutdown__(self) -> None:
        self._destroy_now()


# Loading this module in a sandbox actor's creation task is the moment before its first serialization.
skip_optional_serializers(f"{__name__}.{_SandboxActor.__qualname__}.__init__")


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
        image_tar = self._backend_config.image_tar
        with tempfile.TemporaryFile(prefix="harbor-ray-up-") as f:
            # Packed once, here, for the daemon: the actor passes it through untouched.
            await asyncio.to_thread(pack_for_target, str(src), remote_path, image_tar=image_tar, into=f)
            chunk = await asyncio.to_thread(f.read, _CHUNK_BYTES)
            while True:  # in pieces, so neither side holds a large upload whole
                following = await asyncio.to_thread(f.read, _CHUNK_BYTES)
                await self._call("upload_part", upload_id, chunk, None if following else remote_path)
                if not following:
                    return
                chunk = following

    async def download(self, remote_path: str, local_path: str | Path) -> None:
        """Copy a file or directory out (capped at `sandbox.download_limit_bytes`), streamed through a temp file
        and extracted once, into place."""
        self._refuse_if_stopped()
        member: str | None = None
        stream = self.actor.download_stream.options(num_returns="streaming")
        with tempfile.TemporaryFile(prefix="harbor-ray-dl-") as f:
            with _translated("download", self.handle.name):
                async for ref in stream.remote(remote_path, sandbox_id=self.handle.id):
                    piece = await ref
                    if member is None:
                        member = str(piece)  # the stream opens with the archive's top member name
                        continue
                    await asyncio.to_thread(f.write, piece)
            if member is None:
                msg = f"download of {self.handle.name}:{remote_path}: the actor sent nothing"
                raise TransferError(msg)
            f.seek(0)
            await asyncio.to_thread(extract_member, f, member, Path(local_path))

    async def health(self) -> bool:
        try:
            return bool(await self._call("health"))
        except SandboxGone:
            return False

    async def watch(self) -> str:
        """Until the sandbox is gone: "gone" (its actor's death too); "unsupported" at once when the backend
        cannot tell."""
        try:
            return str(await self._call("watch"))
        except SandboxGone:
            return "gone"

    async def detach(self) -> None:
        """Leave the container running after `stop()` ends the actor (for debugging a trial)."""
        await self._call("detach")

    async def stop(self, *, keep_actor: bool = False, max_served: int = 0) -> Any:
        """Destroy the sandbox and end the actor; also works when the actor already died.

        With `keep_actor`, the actor is recycled instead of ended and returned (a pool keeps it idle for its
        next sandbox); None when it could not be (it died, was detached, or served `max_served` sandboxes
        already), and then it is ended.
        """
        if self._stopped:
            return None
        self._stopped = True
        try:
            await call_actor(self.actor.stop.remote(), "stop")
        except HarborRayError:
            await asyncio.to_thread(self._destroy_from_here)
        else:
            if keep_actor:
                try:
                    await call_actor(self.actor.recycle.remote(max_served), "recycle")
                    return self.actor
                except HarborRayError as e:
                    log.debug("not recycling %s: %s", self.handle.name, e)
        await _stop_actor(self.actor)
        return None

    def _destroy_from_here(self) -> None:
        make_backend(self._backend_config).destroy(self.handle)

    def _refuse_if_stopped(self) -> None:
        if self._stopped:  # released: the actor may serve another sandbox by now
            msg = f"{self.handle.name}: the sandbox is stopped"
            raise SandboxGone(msg)

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self._refuse_if_stopped()
        kwargs["sandbox_id"] = self.handle.id  # the actor refuses a call meant for its previous sandbox
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


_SETTLE_S = 10.0  # what an ending actor's background clean-up may take (a released holder's network: 1-2 s)


async def settle_actor(actor: Any) -> None:
    """Wait (at most `_SETTLE_S`) until a sandbox actor's background clean-up of the sandboxes it destroyed is
    over, before it is killed: `ray.kill` runs no hook, and what it cuts short is left to a sweep."""
    try:
        await asyncio.wait_for(actor.settle.remote(_SETTLE_S), _SETTLE_S + 5)
    except Exception as e:  # dead already, or slow: the sweeps are the backstop
        log.debug("actor did not settle before its end: %s", e)


async def _stop_actor(actor: Any) -> None:
    """End the actor once it settled. Its sandbox is already destroyed (or about to be, by `__ray_shutdown__`)."""
    try:
        await settle_actor(actor)
    finally:
        ray.kill(actor, no_restart=True)
