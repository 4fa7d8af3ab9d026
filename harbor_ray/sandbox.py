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
import tempfile
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayTaskError

from harbor_ray import labels as L
from harbor_ray.backends import BackendConfig, make_backend
from harbor_ray.backends.base import ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.backends.transfer import copy_into, pack, unpack_then
from harbor_ray.errors import HarborRayError, SandboxGone, SandboxStartError, TransferError

log = logging.getLogger(__name__)


class _SandboxActor:
    """The Ray actor body. Backend calls run in threads, so exec calls overlap and never block the loop."""

    def __init__(self, backend_config: BackendConfig, output_limit_bytes: int = 1_000_000) -> None:
        self._backend = make_backend(backend_config, output_limit_bytes=output_limit_bytes)
        self._handle: SandboxHandle | None = None
        self._stopped = False
        self._lifecycle = asyncio.Lock()
        self._actor_id = ray.get_runtime_context().get_actor_id() or ""
        atexit.register(self._destroy_now)

    def ready(self) -> str:
        """Connect now so a later `start` pays only for the container; returns the daemon/API version."""
        return self._backend.ping()

    async def start(self, spec: SandboxSpec) -> SandboxHandle:
        if self._handle is not None or self._stopped:
            msg = "this SandboxActor already owns (or owned) a sandbox; start a new actor for a new sandbox"
            raise SandboxStartError(msg)
        spec = replace(spec, owner=spec.owner or L.current_owner(), labels=(*spec.labels, (L.ACTOR, self._actor_id)))
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
        return await asyncio.to_thread(self._backend.exec, self._require(), cmd, **kwargs)

    async def upload_archive(self, data: bytes, remote_path: str) -> None:
        handle = self._require()
        await asyncio.to_thread(unpack_then, data, lambda p: self._backend.upload(handle, p, remote_path))

    async def download_archive(self, remote_path: str) -> bytes:
        handle = self._require()

        def fetch() -> bytes:
            with tempfile.TemporaryDirectory(prefix="harbor-ray-actor-") as tmp:
                target = Path(tmp) / (PurePosixPath(remote_path).name or "root")
                self._backend.download(handle, remote_path, str(target))
                return pack(target)

        return await asyncio.to_thread(fetch)

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
        output_limit_bytes: int = 1_000_000,
        **actor_options: Any,
    ) -> Sandbox:
        """Start an actor (or use an idle one) and create its sandbox; on failure nothing is left behind."""
        if actor is None:
            actor = actor_class(**actor_options).remote(backend_config, output_limit_bytes)
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
        data = await asyncio.to_thread(pack, src)
        await self._call("upload_archive", data, remote_path)

    async def download(self, remote_path: str, local_path: str | Path) -> None:
        data = await self._call("download_archive", remote_path)
        await asyncio.to_thread(unpack_then, data, lambda p: copy_into(Path(p), Path(local_path)))

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
    try:
        return await ref
    except RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, HarborRayError):
            raise cause from None
        raise
    except (ActorDiedError, ActorUnavailableError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"{name}: its actor died during {method} ({first[:160]}){hint}"
        raise died(msg) from None


async def _stop_actor(actor: Any) -> None:
    """End the actor. Its sandbox is already destroyed (or about to be, by `__ray_shutdown__`)."""
    ray.kill(actor, no_restart=True)
