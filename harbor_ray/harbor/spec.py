"""From a Harbor task's environment to a SandboxSpec: which image, which limits, which network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.config import Config
from harbor_ray.errors import TaskError


def sandbox_spec(
    cfg: Config,
    environment_dir: Path,
    *,
    docker_image: str | None = None,
    cpus: float | None = None,
    memory_mb: int | None = None,
    network: bool | None = None,
    force_build: bool = False,
    env: dict[str, str] | None = None,
) -> SandboxSpec:
    """The sandbox for a task: its prebuilt `docker_image`, else its `environment/Dockerfile`.

    Task limits (cpus, memory) win over the config's defaults; the network is on only when the
    task's network mode allows it or `sandbox.network` forces it.
    """
    dockerfile = environment_dir / "Dockerfile"
    if not docker_image and not dockerfile.is_file():
        msg = f"{dockerfile}: missing; a task needs environment/Dockerfile or [environment] docker_image in task.toml"
        raise TaskError(msg)
    s = cfg.sandbox
    return SandboxSpec(
        run_label=cfg.run_label,
        image=docker_image or None,
        build_context=None if docker_image else str(environment_dir),
        cpus=float(cpus or s.cpus),
        memory_mb=int(memory_mb or s.memory_mb),
        pids_limit=s.pids_limit,
        network=bool(network) or s.network,
        ttl_s=s.ttl_s,
        env=tuple(sorted((env or {}).items())),
        pool=cfg.pool.name,
        cap_add=tuple(s.cap_add),
        read_only_root=s.read_only_root,
        no_new_privileges=s.no_new_privileges,
        force_build=force_build,
    )


def find_task_dirs(root: str | Path) -> list[Path]:
    """`root` itself when it is a task (has task.toml), else every task directory below it, sorted."""
    base = Path(root)
    if (base / "task.toml").is_file():
        return [base]
    if not base.is_dir():
        msg = f"tasks={root}: no such directory; pass a task directory or a directory of tasks"
        raise TaskError(msg)
    found = sorted(p.parent for p in base.rglob("task.toml"))
    if not found:
        msg = f"tasks={root}: no task.toml below it; a Harbor task directory holds task.toml and instruction.md"
        raise TaskError(msg)
    return found


def task_spec(cfg: Config, task_dir: Path, *, force_build: bool = False) -> SandboxSpec:
    """A SandboxSpec straight from a task directory (reads task.toml with Harbor's own model)."""
    from harbor.models.task.config import NetworkMode
    from harbor.models.task.task import Task

    try:
        task = Task(task_dir)
    except Exception as e:
        msg = f"{task_dir}: not a Harbor task ({str(e).splitlines()[0]}); it needs task.toml and instruction.md"
        raise TaskError(msg) from e
    env_cfg: Any = task.config.environment
    return sandbox_spec(
        cfg,
        task.paths.environment_dir,
        docker_image=env_cfg.docker_image,
        cpus=env_cfg.cpus,
        memory_mb=env_cfg.memory_mb,
        network=env_cfg.network_mode == NetworkMode.PUBLIC,
        force_build=force_build,
    )
