"""A Harbor task as the verl loop needs it: instruction, agent and verifier settings, the sandbox to lease.

Tasks are read with Harbor's own `Task` model, once per directory per process (a training run asks for
the same few hundred tasks again and again).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.config import Config
from harbor_ray.errors import TaskError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HarborTask:
    """The parts of a Harbor task directory an episode uses.

    >>> load_task("examples/tasks/hello-file").test_script  # doctest: +SKIP
    'test.sh'
    """

    path: Path
    name: str
    instruction: str
    workdir: str | None = None
    agent_user: str | None = None
    verifier_user: str | None = None
    verifier_timeout_s: float = 600.0
    test_script: str = "test.sh"  # relative to tests/, uploaded to /tests
    agent_env: dict[str, str] = field(default_factory=dict)  # [environment].env, resolved on this host
    verifier_env: dict[str, str] = field(default_factory=dict)  # [environment].env + [verifier].env

    @property
    def tests_dir(self) -> Path:
        return self.path / "tests"


def _user(value: Any) -> str | None:
    return None if value is None else str(value)


@functools.lru_cache(maxsize=4096)
def load_task(path: str | Path) -> HarborTask:
    """Read a task directory; a `TaskError` names what is wrong and how to fix it."""
    from harbor.models.task.config import TaskOS, VerifierEnvironmentMode
    from harbor.models.task.task import Task
    from harbor.utils.env import resolve_env_vars

    task_dir = Path(path)
    try:
        task = Task(task_dir)
    except Exception as e:
        msg = f"{task_dir}: not a Harbor task ({str(e).splitlines()[0]}); it needs task.toml, instruction.md, tests/"
        raise TaskError(msg) from e
    cfg = task.config
    if task.has_steps:
        msg = f"{task_dir}: multi-step tasks are not supported by the verl loop; use single-step tasks"
        raise TaskError(msg)
    if cfg.environment.os != TaskOS.LINUX:
        msg = f"{task_dir}: [environment].os={cfg.environment.os.value}; the verl loop runs Linux sandboxes only"
        raise TaskError(msg)
    if cfg.verifier.environment is not None or cfg.verifier.environment_mode == VerifierEnvironmentMode.SEPARATE:
        msg = f"{task_dir}: a separate verifier environment is not supported; the verifier runs in the agent's sandbox"
        raise TaskError(msg)
    script = task.paths.discovered_test_path_for(TaskOS.LINUX)
    if script is None:
        msg = f"{task.paths.tests_dir}: no test.sh; Harbor's verifier contract needs tests/test.sh"
        raise TaskError(msg)
    try:
        agent_env = resolve_env_vars(dict(cfg.environment.env))
        verifier_env = {**agent_env, **resolve_env_vars(dict(cfg.verifier.env))}
    except ValueError as e:
        msg = f"{task_dir}/task.toml: {e}; export the variable on every node or give it a default"
        raise TaskError(msg) from e
    return HarborTask(
        path=task.paths.task_dir,
        name=task.name,
        instruction=task.instruction,
        workdir=cfg.environment.workdir,
        agent_user=_user(cfg.agent.user),
        verifier_user=_user(cfg.verifier.user),
        verifier_timeout_s=float(cfg.verifier.timeout_sec),
        test_script=script.relative_to(task.paths.tests_dir).as_posix(),
        agent_env=agent_env,
        verifier_env=verifier_env,
    )


_SPECS: dict[tuple[int, Path], SandboxSpec] = {}


def task_sandbox_spec(cfg: Config, task: HarborTask) -> SandboxSpec:
    """The sandbox for a task (its image or Dockerfile, its limits, its network), via the Harbor adapter.

    Cached per (config object, task): configs are composed once per process and kept.
    """
    from harbor_ray.harbor.spec import task_spec

    key = (id(cfg), task.path)
    if key not in _SPECS:
        _SPECS[key] = task_spec(cfg, task.path)
    return _SPECS[key]


def task_path(row: dict[str, Any], task_root: str | None = None) -> Path:
    """The task dir a dataset row names: `<task_root>/<extra_info.task_rel>` when `task_root` is set (nodes that
    mount the tasks elsewhere), else `extra_info.task_path`; TaskError when the row has neither."""
    extra = row.get("extra_info") or {}
    if task_root and extra.get("task_rel"):
        return Path(task_root) / str(extra["task_rel"])
    if not extra.get("task_path"):
        msg = "row has no extra_info.task_path; write the dataset with: python -m harbor_ray verl-dataset"
        raise TaskError(msg)
    return Path(str(extra["task_path"]))
