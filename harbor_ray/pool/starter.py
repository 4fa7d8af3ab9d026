"""Starting one sandbox on a host: the actor, its container, build-once per host, and what a failure frees.

The first start of a `build_context` on a host builds the image (inside the sandbox actor, next to the
daemon); concurrent starts of it on that host wait for that build and use its image, or fail with its
`ImageBuildError` (the build log's tail). A start that fails frees its slot and tells the host's circuit
breaker, except for build errors, which are the task's fault, not the host's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.errors import ImageBuildError, SandboxGone, SandboxStartError
from harbor_ray.pool.hosts import HOST_LABEL, Host, actor_options
from harbor_ray.sandbox import Sandbox, actor_class

if TYPE_CHECKING:
    from harbor_ray.pool.core import PoolCore

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Entry:
    """A started sandbox the pool accounts for: warm, or leased."""

    sandbox: Sandbox
    host: Host
    key: SandboxSpec
    started: float  # time.monotonic()
    group: Any = None  # the placement group of a gang lease
    watch: asyncio.Future[str] | None = None  # while warm: returns when the sandbox is gone (WarmSet)


class Starter:
    """Starts sandboxes for a `PoolCore` and remembers, per host, the image each build context became.

    It changes no slot itself: a failed start gives its slot (or unused idle actor) back through the core.
    """

    def __init__(self, core: PoolCore) -> None:
        self.core = core
        self._images: dict[tuple[str, str], str] = {}
        self._building: dict[tuple[str, str], asyncio.Future[str]] = {}

    async def start_on(
        self, host: Host, key: SandboxSpec, actor: Any = None, scheduling: dict[str, Any] | None = None
    ) -> Entry:
        """Start one sandbox on `host`, whose slot the caller holds (an idle `actor` carries its own slot).

        On failure the slot is freed, the host's circuit breaker learns of it, and the error is raised.
        """
        spec = replace(key, labels=(*key.labels, (HOST_LABEL, host.name)))
        build: tuple[tuple[str, str], asyncio.Future[str]] | None = None
        consumed = False
        began = time.monotonic()
        try:
            if spec.build_context or spec.agent_runtime:
                spec, build = await self._image_for(host, spec)
            async with host.creating, self.core.creating:
                if actor is None:
                    options = actor_options(host, self.core.config, self.core.actor_options)
                    if scheduling:
                        options.pop("label_selector", None)
                        options.update(scheduling)
                    actor = actor_class(**options).remote(host.backend_config, self.core.limits)
                timeout = self.core.config.start_timeout_s
                if build is not None:
                    timeout += host.backend_config.build_timeout_s
                consumed = True  # Sandbox.create ends the actor if it fails
                create = Sandbox.create(host.backend_config, spec, actor=actor, limits=self.core.limits)
                sandbox = await self._until_lost(host, create, timeout)
        except BaseException as e:
            self._failed(host, key, e, build, idle_actor=None if consumed else actor)
            raise
        host.circuit.success()
        self.core.metrics.started(time.monotonic() - began, host.name)
        if build is not None:
            self._images[build[0]] = sandbox.handle.image
            self._building.pop(build[0], None)
            build[1].set_result(sandbox.handle.image)
        return Entry(sandbox, host, key, time.monotonic())

    async def _until_lost(self, host: Host, create: Any, timeout: float) -> Sandbox:
        """Await the start, giving up at the timeout or as soon as the host loses its node."""
        started = asyncio.ensure_future(create)
        lost = asyncio.ensure_future(host.lost.wait())
        try:
            done, _ = await asyncio.wait({started, lost}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            if not started.done():
                # Sandbox.create then ends the actor, after its stop() waited (up to 30 s) for the start still
                # hanging on the daemon: in the background, so the lease fails over now, not 30 s later.
                started.cancel()
                self.core.spawn(_settle(started))
        if started in done:
            return started.result()
        self.core.maybe_orphans = True
        if lost in done:
            msg = f"host {host.name}: its Ray node left while a sandbox was starting there"
        else:
            msg = (
                f"host {host.name}: no sandbox within {timeout:g}s; is a Ray node with the pool's "
                "labels/resource alive, and the daemon answering?"
            )
        raise SandboxStartError(msg)

    def _failed(
        self,
        host: Host,
        key: SandboxSpec,
        e: BaseException,
        build: tuple[tuple[str, str], asyncio.Future[str]] | None,
        idle_actor: Any,
    ) -> None:
        if idle_actor is not None:
            self.core.keep_idle(host, idle_actor)  # never used: still a good idle actor, still holding its slot
        else:
            self.core.free(host)
        if isinstance(e, SandboxGone):
            self.core.refresh_soon()  # an actor died while starting: maybe its node left
        if isinstance(e, Exception):
            self.core.metrics.failure(e, host.name)
            if isinstance(e, ImageBuildError) or idle_actor is not None:
                host.circuit.trial_in_flight = False
            else:
                host.circuit.failure(e)
        else:
            host.circuit.trial_in_flight = False
            self.core.maybe_orphans = True
        if build is not None:
            self._building.pop(build[0], None)
            error = e if isinstance(e, Exception) else SandboxStartError("the image build was abandoned")
            build[1].set_exception(error)
            build[1].exception()  # retrieved: waiters, if any, see it too
        if (key.build_context or key.agent_runtime) and isinstance(e, SandboxStartError):
            self._images.pop(_build_key(host, key), None)  # the image may be gone from the daemon
        log.info("sandbox start on %s failed: %s", host.name, e)

    async def _image_for(self, host: Host, spec: SandboxSpec) -> tuple[SandboxSpec, Any]:
        """Build once per host: the first lease builds (returning its future), the others wait for its image.
        An agent runtime is part of what is built (its image and volume, before the task's image)."""
        bkey = _build_key(host, spec)
        while True:
            if bkey in self._images:
                return replace(spec, image=self._images[bkey], build_context=None, force_build=False), None
            pending = self._building.get(bkey)
            if pending is None:
                fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
                self._building[bkey] = fut
                self.core.metrics.count("builds")
                return spec, (bkey, fut)
            try:
                await asyncio.shield(pending)
            except ImageBuildError:
                raise
            except Exception:
                continue  # the builder failed for another reason: build it ourselves


async def _settle(fut: asyncio.Future[Any]) -> None:
    await asyncio.gather(fut, return_exceptions=True)


def _build_key(host: Host, spec: SandboxSpec) -> tuple[str, str]:
    """What one build per host makes: the task's image (its build context, or its prebuilt image) and its agent
    runtime, if any."""
    what = spec.build_context or spec.image or ""
    return (host.name, f"{what}|{spec.agent_runtime}" if spec.agent_runtime else what)
