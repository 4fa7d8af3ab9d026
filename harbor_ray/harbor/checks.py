"""What `run` can tell about the agent, the environment class and the tasks before Ray starts.

- `check_agent`: `agent.name` is one of Harbor's agent names (`harbor.models.agent.name.AgentName`, the registry
  `harbor.agents.factory.AgentFactory` resolves), an ACP registry shorthand, or a `module:Class` Harbor would
  import; else one ConfigError line with the closest valid names. `agent.import_path` must import and name a
  `BaseAgent` subclass.
- `check_environment`: `environment_import_path` imports and names a `BaseEnvironment` subclass.
- `task_problems`: why one task's trials would fail at `Trial.create` (no instruction.md, no environment/Dockerfile
  and no docker_image, no tests/test.sh, anything else Harbor's own `Task` refuses), as short phrases.

Importing a `module:Class` runs that module, as Harbor would in this same process a moment later; nothing else
here has side effects, and no Ray import happens unless the named module makes it.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
from pathlib import Path
from typing import Any

from harbor_ray.config import Config
from harbor_ray.errors import ConfigError

log = logging.getLogger(__name__)


def _closest(word: str, candidates: list[str], n: int = 3) -> list[str]:
    """The `n` candidates most like `word` (difflib's ratio), however unlike: a user always gets names to try."""
    return difflib.get_close_matches(word, candidates, n=n, cutoff=0.0)


def _missing_module(key: str, path: str, module_name: str) -> ConfigError:
    """The error for a module that does not exist, with the closest modules of its deepest importable package."""
    parts = module_name.split(".")
    for depth in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:depth])
        try:
            package = importlib.import_module(parent)
        except ImportError:
            continue
        siblings = [m.name for m in pkgutil.iter_modules(getattr(package, "__path__", []))]
        close = _closest(parts[depth], siblings)
        if close:
            hint = ", ".join(f"{parent}.{name}" for name in close)
            return ConfigError(f"{key}={path}: no module {module_name}; the closest in {parent}: {hint}")
        break
    return ConfigError(f"{key}={path}: no module {module_name} on sys.path; check the spelling or install it")


def import_named(key: str, path: str, base: type, what: str) -> Any:
    """The class `path` ('module.path:ClassName') names, or one ConfigError line naming `key` and the fix."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        msg = f"{key}={path!r}: use 'module.path:ClassName'"
        raise ConfigError(msg)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (module_name == missing or module_name.startswith(missing + ".")):
            raise _missing_module(key, path, module_name) from e
        msg = f"{key}={path}: importing {module_name} failed: {e}; install what it needs"
        raise ConfigError(msg) from e
    except Exception as e:  # the module itself raised while importing: its first line
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        msg = f"{key}={path}: importing {module_name} failed: {type(e).__name__}: {first}"
        raise ConfigError(msg) from e
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_") and isinstance(getattr(module, n), type)]
        fitting = [n for n in names if issubclass(getattr(module, n), base) and getattr(module, n) is not base]
        close = _closest(attr, fitting or names)
        hint = f"; the closest: {', '.join(f'{module_name}:{n}' for n in close)}" if close else ""
        msg = f"{key}={path}: module {module_name} has no {attr}{hint}"
        raise ConfigError(msg)
    found = getattr(module, attr)
    if not (isinstance(found, type) and issubclass(found, base)):
        msg = f"{key}={path}: not a {what} ({base.__module__}.{base.__name__} subclass)"
        raise ConfigError(msg)
    return found


def check_agent(cfg: Config) -> None:
    """ConfigError (one line, the closest valid names) unless Harbor can resolve the configured agent."""
    from harbor.agents.base import BaseAgent
    from harbor.agents.installed.acp_registry import is_acp_registry_shorthand
    from harbor.models.agent.name import AgentName

    agent = cfg.agent
    if agent.import_path:  # the runner gives Harbor the import path alone (trial_config)
        import_named("agent.import_path", agent.import_path, BaseAgent, "Harbor agent")
        return
    name = agent.name
    if is_acp_registry_shorthand(name):
        return
    if ":" in name:  # Harbor's AgentFactory takes a name with a colon for an import path
        import_named("agent.name", name, BaseAgent, "Harbor agent")
        return
    valid = sorted(AgentName.values())
    if name in valid:
        return
    close = ", ".join(_closest(name, valid))
    msg = (
        f"agent.name={name!r}: not one of Harbor's {len(valid)} agents; the closest: {close} "
        f"(or agent.import_path=module:Class for your own)"
    )
    raise ConfigError(msg)


def check_environment(cfg: Config) -> None:
    """ConfigError (one line) unless `environment_import_path` names an importable Harbor environment class."""
    from harbor.environments.base import BaseEnvironment

    import_named("environment_import_path", cfg.environment_import_path, BaseEnvironment, "Harbor environment")


def task_problems(task_dir: Path, *, verifier_enabled: bool = True) -> list[str]:
    """Why this task's trials would fail when Harbor loads it (empty: nothing found). Its task.toml reads
    (spec.find_task_dirs checked that); these are the files around it."""
    import tomllib

    from harbor.models.task.config import TaskConfig
    from harbor.models.task.paths import TaskPaths
    from harbor.models.task.task import Task
    from harbor.models.task.verifier_mode import resolve_verifier_environment_definition

    config = TaskConfig.model_validate(tomllib.loads((task_dir / "task.toml").read_text()))
    paths = TaskPaths(task_dir)
    problems: list[str] = []
    if not config.steps and not paths.instruction_path.is_file():
        problems.append("no instruction.md")
    if not config.environment.docker_image and not (paths.environment_dir / "Dockerfile").is_file():
        problems.append("no environment/Dockerfile and no [environment] docker_image in task.toml")
    try:
        if verifier_enabled and not config.steps:  # the test script Harbor's Task looks for, as it looks for it
            verifier = resolve_verifier_environment_definition(config, paths, validate_inputs=False)
            verifier_os = verifier.config.os if verifier else config.environment.os
            if not (verifier and verifier.bundled_tests) and paths.discovered_test_path_for(verifier_os) is None:
                problems.append(f"no {paths.test_path_for(verifier_os).relative_to(paths.task_dir)}")
        if not problems:  # the rest of what Harbor's own Task refuses (steps, paths leaving the task dir, …)
            Task(task_dir, disable_verification=not verifier_enabled)
    except Exception as e:  # Harbor's own words, its first line, the task's path shortened
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        problems.append(first.replace(f"Task directory {paths.task_dir} ", "").replace(str(paths.task_dir), "."))
    return problems
