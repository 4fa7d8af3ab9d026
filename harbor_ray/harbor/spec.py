"""From a Harbor task's environment to a SandboxSpec: which image, which limits (the config is their ceiling),
which network, which environment variables; and finding task directories whose task.toml Harbor can read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.egress import GATEWAY_HOSTNAME
from harbor_ray.config import Config
from harbor_ray.errors import ConfigError, TaskError

log = logging.getLogger(__name__)
_WARNED: set[tuple[str, str]] = set()  # (task, field) already warned about, so a batch warns once per task


def _clamped(task: Path, field: str, asked: float | None, ceiling: float, key: str) -> float:
    """The task's ask, or the config's value when it asks nothing or more (warned once per task and field)."""
    if asked is None or asked <= 0:
        return ceiling
    if ceiling and asked > ceiling:
        if (str(task), field) not in _WARNED:
            _WARNED.add((str(task), field))
            log.warning(
                "%s: [environment] %s = %g is above %s=%g; the sandbox gets %g (the config is the ceiling)",
                task,
                field,
                asked,
                key,
                ceiling,
                ceiling,
            )
        return ceiling
    return asked


def sandbox_spec(
    cfg: Config,
    environment_dir: Path,
    *,
    docker_image: str | None = None,
    cpus: float | None = None,
    memory_mb: int | None = None,
    storage_mb: int | None = None,
    gpus: int | None = None,
    network: bool | None = None,
    force_build: bool = False,
    env: dict[str, str] | None = None,
    gateway: str | None = None,
    egress: tuple[str, ...] | list[str] = (),
    agent_runtime: str | None = None,
) -> SandboxSpec:
    """The sandbox for a task: its prebuilt `docker_image`, else its `environment/Dockerfile`.

    The config's `sandbox.*` limits are ceilings: a task may ask less cpus, memory or storage and gets it;
    more is clamped with a warning; GPUs above `sandbox.gpus` are refused (TaskError), since a GPU task on
    fewer GPUs is not the same task. The network is on only when the task's network mode allows it or
    `sandbox.network` forces it.
    """
    dockerfile = environment_dir / "Dockerfile"
    if not docker_image and not dockerfile.is_file():
        msg = f"{dockerfile}: missing; a task needs environment/Dockerfile or [environment] docker_image in task.toml"
        raise TaskError(msg)
    s = cfg.sandbox
    task = environment_dir.parent
    if gpus and gpus > s.gpus:
        msg = f"{task}: [environment] gpus = {gpus} is above sandbox.gpus={s.gpus}; set sandbox.gpus={gpus} to run it"
        raise TaskError(msg)
    return SandboxSpec(
        run_label=cfg.run_label,
        image=docker_image or None,
        build_context=None if docker_image else str(environment_dir),
        cpus=float(_clamped(task, "cpus", cpus, s.cpus, "sandbox.cpus")),
        memory_mb=int(_clamped(task, "memory_mb", memory_mb, s.memory_mb, "sandbox.memory_mb")),
        storage_mb=int(_clamped(task, "storage_mb", storage_mb, s.storage_mb, "sandbox.storage_mb")),
        gpus=int(gpus or 0),
        pids_limit=s.pids_limit,
        network=bool(network) or s.network,
        ttl_s=s.ttl_s,
        env=tuple(sorted((env or {}).items())),
        pool=cfg.pool.name,
        cap_add=tuple(s.cap_add),
        read_only_root=s.read_only_root,
        no_new_privileges=s.no_new_privileges,
        force_build=force_build,
        gateway=gateway or s.gateway or None,
        egress=tuple(egress),
        agent_runtime=cfg.agent.runtime if agent_runtime is None else agent_runtime,
        runtime=s.runtime,
    )


def network_from_policy(policy: Any) -> tuple[bool, tuple[str, ...]]:
    """(full network, egress entries) for Harbor's resolved network policy (docs/network.md): public -> full;
    no-network -> none; allowlist of hostnames -> no network but one `HOSTNAME:443` egress entry per host."""
    from harbor.models.task.config import NetworkMode

    if policy.network_mode == NetworkMode.PUBLIC:
        return True, ()
    if policy.network_mode == NetworkMode.ALLOWLIST:
        # Harbor allowlists the agent's inference host; the gateway's name is reached without an entry (and an
        # entry for it would shadow it with a relay to its :443)
        hosts = [host for host in policy.allowed_hosts if host != GATEWAY_HOSTNAME]
        return False, tuple(f"{host}:443" for host in hosts)
    return False, ()


def check_task_toml(task_dir: Path) -> None:
    """TaskError naming the file (and the field) when Harbor could not read this task's task.toml."""
    import tomllib

    from harbor.models.task.config import TaskConfig
    from pydantic import ValidationError

    path = task_dir / "task.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        msg = f"{path}: not valid TOML ({e}); fix the file"
        raise TaskError(msg) from e
    try:
        TaskConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        loc = [str(p) for p in first["loc"]]
        where = f"[{'.'.join(loc[:-1])}] {loc[-1]}" if len(loc) > 1 else (loc[0] if loc else "the file")
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        msg = f"{path}: {where}: {first['msg']}{more}; fix the value"
        raise TaskError(msg) from e


def find_task_dirs(root: str | Path) -> list[Path]:
    """`root` itself when it is a task (has task.toml), else every task directory below it, sorted; each one's
    task.toml is checked first, so a bad one is one line naming its file, before anything starts."""
    base = Path(root)
    if (base / "task.toml").is_file():
        found = [base]
    elif not base.is_dir():
        msg = f"tasks={root}: no such directory; pass a task directory or a directory of tasks"
        raise TaskError(msg)
    else:
        found = sorted(p.parent for p in base.rglob("task.toml"))
    if not found:
        msg = f"tasks={root}: no task.toml below it; a Harbor task directory holds task.toml and instruction.md"
        raise TaskError(msg)
    for task_dir in found:
        check_task_toml(task_dir)
    return found


def discover_tasks(paths: list[str]) -> list[Path]:
    """Every task dir (with task.toml) named, or found below a named dir; each once, in order (ConfigError
    when there is none, TaskError naming a task.toml Harbor cannot read)."""
    found = [task.resolve() for raw in paths for task in find_task_dirs(Path(raw).expanduser())]
    tasks = list(dict.fromkeys(found))
    if not tasks:
        msg = "tasks=[]: no task to run; name task dirs or dirs of them, e.g. tasks=[examples/tasks]"
        raise ConfigError(msg)
    return tasks


def task_spec(cfg: Config, task_dir: Path, *, force_build: bool = False) -> SandboxSpec:
    """A SandboxSpec straight from a task directory (reads task.toml with Harbor's own model)."""
    from harbor.models.task.task import Task
    from harbor.utils.env import resolve_env_vars

    check_task_toml(task_dir)
    try:
        task = Task(task_dir)
    except Exception as e:
        msg = f"{task_dir}: not a Harbor task ({str(e).splitlines()[0]}); it needs task.toml and instruction.md"
        raise TaskError(msg) from e
    env_cfg: Any = task.config.environment
    network, egress = network_from_policy(env_cfg.resolve_baseline())
    return sandbox_spec(
        cfg,
        task.paths.environment_dir,
        docker_image=env_cfg.docker_image,
        cpus=env_cfg.cpus,
        memory_mb=env_cfg.memory_mb,
        storage_mb=env_cfg.storage_mb,
        gpus=env_cfg.gpus,
        network=network,
        egress=egress,
        force_build=force_build,
        env=resolve_env_vars(env_cfg.env) if env_cfg.env else None,
    )
