"""RayEnvironment: a Harbor `BaseEnvironment` whose sandbox is leased from a harbor_ray pool.

Harbor constructs it from `environment.import_path = "harbor_ray.harbor.environment:RayEnvironment"`.
Its `kwargs` name the pool context (`pool_key`) that the runner registered in this process; used on
its own (e.g. from Harbor's CLI) it builds a pool from harbor_ray's config (`overrides` kwarg).
Every call is an `await` on a Ray actor, so Harbor's event loop is never blocked.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harbor.environments.base import BaseEnvironment, ExecResult
from harbor.environments.capabilities import EnvironmentCapabilities
from harbor.models.trial.paths import EnvironmentPaths

from harbor_ray.config import Config, load_config
from harbor_ray.errors import ExecTimeout, HarborRayError, TaskError
from harbor_ray.harbor import githistory
from harbor_ray.harbor.spec import network_from_policy, sandbox_spec
from harbor_ray.pool import Lease, SandboxPool
from harbor_ray.sandbox import Sandbox

log = logging.getLogger(__name__)


@dataclass
class PoolContext:
    """What a RayEnvironment needs from its runner: the pool and the config (limits, labels)."""

    pool: SandboxPool
    config: Config


_CONTEXTS: dict[str, PoolContext] = {}
_CONTEXT_LOCK = asyncio.Lock()


def register_context(key: str, context: PoolContext) -> None:
    _CONTEXTS[key] = context


def unregister_context(key: str) -> None:
    _CONTEXTS.pop(key, None)


async def _context_for(key: str, overrides: list[str]) -> PoolContext:
    async with _CONTEXT_LOCK:
        if key not in _CONTEXTS:
            cfg = load_config(overrides)
            _CONTEXTS[key] = PoolContext(SandboxPool.from_config(cfg), cfg)
        return _CONTEXTS[key]


class RayEnvironment(BaseEnvironment):
    """A Harbor environment on one fresh harbor_ray sandbox (a container or pod owned by a Ray actor)."""

    def __init__(
        self,
        *args: Any,
        pool_key: str = "default",
        overrides: list[str] | None = None,
        gateway: str | None = None,  # "HOST:PORT" the sandbox may reach without network (docs/network.md)
        **kwargs: Any,
    ):
        self._pool_key = pool_key
        self._gateway = gateway
        self._overrides = list(overrides or [])
        self._lease: Lease | None = None
        self._sandbox: Sandbox | None = None
        self._hidden_history: githistory.HiddenHistory | None = None
        self.last_sandbox: str | None = None  # kept after stop, for the trial's record
        super().__init__(*args, **kwargs)

    @staticmethod
    def type() -> str:
        return "harbor-ray"

    @property
    def capabilities(self) -> EnvironmentCapabilities:
        # allowlist: hostnames only, each reached on :443 through a relay (docs/network.md)
        # gpus: the config's sandbox.gpus is their ceiling, checked when the sandbox is made (spec.sandbox_spec)
        return EnvironmentCapabilities(
            disable_internet=True, network_allowlist=True, network_allowlist_hostnames=True, gpus=True
        )

    def _validate_definition(self) -> None:
        if not self.task_env_config.docker_image and not (self.environment_dir / "Dockerfile").is_file():
            msg = f"{self.environment_dir}/Dockerfile: missing; add it or set [environment] docker_image in task.toml"
            raise TaskError(msg)

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            msg = "RayEnvironment: the sandbox is not started"
            raise RuntimeError(msg)
        return self._sandbox

    async def start(self, force_build: bool) -> None:
        context = await _context_for(self._pool_key, self._overrides)
        network, egress = network_from_policy(self.network_policy)
        spec = sandbox_spec(
            context.config,
            self.environment_dir,
            docker_image=self.task_env_config.docker_image,
            cpus=self._effective_cpus,
            memory_mb=self._effective_memory_mb,
            storage_mb=self._effective_storage_mb,
            gpus=self._effective_gpus,
            network=network,
            force_build=force_build,
            env=self._startup_env(),  # the task's [environment] env in the container, as Harbor's Docker sets it
            gateway=self._gateway,
            egress=egress,
        )
        self._lease = context.pool.lease(spec)
        self._sandbox = await self._lease.acquire()
        self.last_sandbox = self._sandbox.handle.name
        # Harbor's DockerEnvironment order: the environment dir first (it can create the task's workdir, where
        # every exec starts), then the output dirs, made by root and open to every user (mode 777).
        await self._upload_environment_dir_after_start()
        paths = EnvironmentPaths.for_os(self.os)
        dirs = " ".join(shlex.quote(str(d)) for d in (paths.agent_dir, paths.verifier_dir, paths.artifacts_dir))
        made = await self.exec(f"mkdir -p {dirs} && chmod 777 {dirs}", user="0")
        if made.return_code != 0:  # no root here (a pod of a non-root image cannot switch): as the image's user
            made = await self.exec(f"mkdir -p {dirs} && chmod 777 {dirs}")
        if made.return_code != 0:
            msg = f"sandbox {self.last_sandbox}: could not create {dirs} as root: {(made.stderr or '').strip()[:200]}"
            raise HarborRayError(msg)
        if githistory.wanted(self.environment_dir.parent, context.config.sandbox.hide_git_history):
            limit = context.config.sandbox.download_limit_bytes
            repo = self.task_env_config.workdir or "."  # ".": the image's WORKDIR, where every exec starts
            self._hidden_history = await githistory.hide(self.sandbox, repo, limit_bytes=limit)

    async def _restore_git_history(self) -> None:
        """The original history back before the verifier: Harbor's shared verifier begins by uploading the task's
        tests to the tests dir, in every trial loop (runner, verl's harbor_trial), so that upload is the cue."""
        if self._hidden_history is not None:
            await githistory.restore(self.sandbox, self._hidden_history)

    async def stop(self, delete: bool) -> None:
        hidden, self._hidden_history = self._hidden_history, None
        if hidden is not None:  # a trial ended or killed before its verifier: the host copy goes too
            hidden.discard()
        lease, self._lease = self._lease, None
        sandbox, self._sandbox = self._sandbox, None
        if lease is None:
            return
        if not delete and sandbox is not None:
            # Harbor's delete=false: keep the container for inspection; it still carries our labels, so
            # `harbor-ray clean` removes it, and its PID 1 ends at the TTL anyway.
            try:
                await sandbox.detach()
            except HarborRayError as e:
                log.warning("could not keep sandbox %s: %s", self.last_sandbox, e)
            else:
                name = self.last_sandbox
                log.info("kept sandbox %s (delete=false) until its TTL, the next reap or harbor-ray clean", name)
        await lease.release()

    async def exec(
        self,
        command: str,
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout_sec: int | None = None,
        user: str | int | None = None,
    ) -> ExecResult:
        resolved = self._resolve_user(user)
        try:
            result = await self.sandbox.exec(
                command,
                cwd=cwd or self.task_env_config.workdir,
                env=self._merge_env(env),
                timeout_s=timeout_sec,
                user=None if resolved is None else str(resolved),
            )
        except ExecTimeout as e:
            # Harbor's own environments report a timed-out command this way.
            msg = f"Command timed out after {timeout_sec} seconds"
            raise RuntimeError(msg) from e
        return ExecResult(stdout=result.stdout, stderr=result.stderr, return_code=result.return_code)

    async def upload_file(self, source_path: Path | str, target_path: str) -> None:
        await self.sandbox.upload(source_path, target_path)

    async def upload_dir(self, source_dir: Path | str, target_dir: str) -> None:
        if target_dir == str(EnvironmentPaths.for_os(self.os).tests_dir):
            await self._restore_git_history()
        await self.sandbox.upload(source_dir, target_dir)

    def _never_started(self, source: str) -> bool:
        """True when no sandbox was ever leased (its start failed, e.g. the image did not build): Harbor's Trial
        still collects the agent's logs then, and there is nothing to collect. Harbor's own environments differ:
        with `auto_mounting` the logs are bind mounts and nothing is downloaded (quiet); otherwise Docker's
        `compose cp` and the cloud ones ("Sandbox not found. Please start the environment first.") raise, which
        the Trial logs at ERROR with the start's stack and the download's. This one takes the quiet way: a DEBUG
        line. After a start, downloads go to the sandbox, and a lost or stopped one raises as before."""
        if self._sandbox is not None or self.last_sandbox is not None:
            return False
        log.debug("%s: never started, nothing to download from %s", self.environment_name, source)
        return True

    async def download_file(self, source_path: str, target_path: Path | str) -> None:
        if not self._never_started(source_path):
            await self.sandbox.download(source_path, target_path)

    async def download_dir(self, source_dir: str, target_dir: Path | str) -> None:
        if not self._never_started(source_dir):
            await self.sandbox.download(source_dir, target_dir)
