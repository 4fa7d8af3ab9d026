"""Structured configs, loading (Hydra tree, plain YAML, or the seed's runtime_info layout) and validation.

Every error is a `ConfigError` whose one line names the key and the fix.
"""

from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harbor_ray.backends.docker_config import DockerBackendConfig, TLSFiles
from harbor_ray.errors import ConfigError
from harbor_ray.labels import check_prefix

log = logging.getLogger(__name__)


def _conf_dir() -> Path:
    """The Hydra tree: the checkout's conf/, or the copy an installed wheel put under <prefix>/share."""
    for candidate in (Path(__file__).resolve().parent.parent / "conf", Path(sys.prefix) / "share/harbor_ray/conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    msg = "conf/config.yaml: not found beside the package nor under <prefix>/share/harbor_ray; reinstall harbor-ray"
    raise ConfigError(msg)


DEFAULT_ENVIRONMENT = "harbor_ray.harbor.environment:RayEnvironment"


@dataclass
class SandboxConfig:
    """Limits and hardening applied to every sandbox (a task's task.toml may lower cpus/memory)."""

    cpus: float = 1.0
    memory_mb: int = 2048
    pids_limit: int = 512
    network: bool = False  # no network unless the task (or this) allows it
    exec_timeout_s: float = 600.0
    output_limit_bytes: int = 1_000_000
    ttl_s: int = 3600  # backstop: PID 1 lives at most this long
    cap_add: list[str] = field(
        default_factory=lambda: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETGID", "SETUID", "KILL"]
    )
    read_only_root: bool = False
    no_new_privileges: bool = True


@dataclass
class PoolConfig:
    name: str = "harbor-ray"
    namespace: str = "harbor_ray"  # Ray namespace of the named pool actor
    max_sandboxes: int = 16  # alive at once
    max_concurrent_creates: int = 4
    warm_per_image: int = 0
    start_retries: int = 3
    sandbox_resource: str = ""  # custom Ray resource sandbox actors request, e.g. sandbox_slot
    prestart_actors: int = 0  # idle actor processes kept ahead of demand
    # Docker daemons and their slots: [{name, url ("" = the node's local daemon), node_labels, slots}];
    # empty -> one host from `backend` (or one per Ray node offering sandbox_resource). See docs/pool.md.
    hosts: list[dict[str, Any]] | None = None
    node_labels: dict[str, str] | None = None  # Ray node labels every sandbox actor requires
    actor_cpus: float = 0.0  # CPUs each sandbox actor reserves in Ray (never a GPU)
    start_timeout_s: float = 120.0  # actor scheduling + container start (a build adds backend.build_timeout_s)
    circuit_failures: int = 5  # start failures in a row that pause a host
    circuit_reset_s: float = 30.0  # how long a paused host gets no creations before one trial
    health_interval_s: float = 30.0  # background health checks of warm sandboxes (0 = only at hand-out)
    reap_interval_s: float = 300.0  # reaper period for orphaned sandboxes (0 = only at pool start)
    shared: bool = True  # from_config: one named pool actor (pool.name in pool.namespace) for the cluster


@dataclass
class AgentConfig:
    name: str = "oracle"  # a Harbor AgentName (oracle, nop, claude-code, …)
    import_path: str = ""  # or a custom agent class "module:Class"
    model_name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RayConfig:
    address: str = ""  # "" -> start Ray in this process; "auto" -> join a running cluster
    num_cpus: int = 0  # 0 -> Ray decides (only when starting Ray here)


@dataclass
class Config:
    run_label: str = "harbor-ray"  # labels everything: harbor-run=<run_label> (the seed's pod_name_prefix)
    backend: Any = field(default_factory=lambda: {"kind": "docker"})
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    tasks: list[str] = field(default_factory=lambda: ["examples/tasks"])
    n_concurrent: int = 4
    n_attempts: int = 1
    jobs_dir: str = "jobs"
    job_name: str = ""
    environment_import_path: str = DEFAULT_ENVIRONMENT
    force_build: bool = False
    delete: bool = True
    verifier_timeout_s: float = 0.0  # 0 -> the task's own [verifier] timeout


def _backend_classes() -> dict[str, type]:
    from harbor_ray.backends.k8s_config import K8sBackendConfig

    return {"docker": DockerBackendConfig, "docker_remote": DockerBackendConfig, "k8s": K8sBackendConfig}


def _typed(cls: type, data: Any, where: str) -> Any:
    """Merge `data` onto the dataclass schema; turn OmegaConf errors into one line naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        full = f"{where}.{key}" if where else key
        reason = str(e).splitlines()[0]
        if "not in struct" in reason or "Key '" in reason and "not" in reason:
            msg = f"{full}: unknown key; remove it or check its spelling (see conf/ for the known keys)"
        else:
            msg = f"{full}: {reason}; fix the value's type"
        raise ConfigError(msg) from e


def build_config(raw: DictConfig | dict[str, Any]) -> Config:
    """Validate a plain (non-seed) config tree into a `Config`."""
    node = OmegaConf.create(raw) if not isinstance(raw, DictConfig) else raw
    container = OmegaConf.to_container(node, resolve=True)
    if not isinstance(container, dict):
        msg = "config: the top level must be a mapping of keys to values"
        raise ConfigError(msg)
    backend_raw = container.pop("backend", None) or {"kind": "docker"}
    if not isinstance(backend_raw, dict):
        msg = "backend: must be a mapping; select one with backend=docker|docker_remote|k8s"
        raise ConfigError(msg)
    kind = backend_raw.get("kind", "docker")
    classes = _backend_classes()
    if kind not in classes:
        msg = f"backend.kind={kind!r}: unknown backend; use one of {', '.join(classes)}"
        raise ConfigError(msg)
    if isinstance(container.get("tasks"), str):
        container["tasks"] = [container["tasks"]]
    cfg: Config = _typed(Config, container, "")
    cfg.backend = _typed(classes[kind], backend_raw, "backend")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    check_prefix(cfg.run_label, "run_label")
    positive = {
        "sandbox.cpus": cfg.sandbox.cpus,
        "sandbox.memory_mb": cfg.sandbox.memory_mb,
        "sandbox.pids_limit": cfg.sandbox.pids_limit,
        "sandbox.exec_timeout_s": cfg.sandbox.exec_timeout_s,
        "sandbox.output_limit_bytes": cfg.sandbox.output_limit_bytes,
        "sandbox.ttl_s": cfg.sandbox.ttl_s,
        "n_concurrent": cfg.n_concurrent,
        "n_attempts": cfg.n_attempts,
    }
    for key, value in positive.items():
        if value <= 0:
            msg = f"{key}={value}: must be greater than 0"
            raise ConfigError(msg)
    from harbor_ray.placement import check_pool_config

    check_pool_config(cfg.pool)
    if cfg.sandbox.memory_mb < 6:
        msg = f"sandbox.memory_mb={cfg.sandbox.memory_mb}: Docker needs at least 6 MiB; use e.g. 2048"
        raise ConfigError(msg)
    if ":" not in cfg.environment_import_path:
        msg = f"environment_import_path={cfg.environment_import_path!r}: use 'module.path:ClassName'"
        raise ConfigError(msg)
    if isinstance(cfg.backend, DockerBackendConfig):
        from harbor_ray.backends.docker_host import check_docker_host

        check_docker_host(cfg.backend)


# --- the seed's layout -------------------------------------------------------------------------

_SEED_AGENT_KEYS = {"environment_import_path", "agent_name", "environment_force_build", "docker_host", "model_name"}
_SEED_K8S_KEYS = {"kubeconfig", "namespace", "pod_name_prefix", "context"}


def is_seed_layout(raw: dict[str, Any]) -> bool:
    return "runtime_info" in raw


def _k8s_capable(import_path: str) -> bool:
    lowered = import_path.lower()
    return import_path == DEFAULT_ENVIRONMENT or "k8s" in lowered or "kube" in lowered


def from_seed(raw: dict[str, Any]) -> dict[str, Any]:
    """Map `runtime_info.input.{harbor_agent,k8s}` onto the plain layout (a dict for build_config)."""
    extra_top = set(raw) - {"runtime_info"}
    if extra_top:
        msg = f"{sorted(extra_top)[0]}: unknown top-level key next to runtime_info; move it under runtime_info.input"
        raise ConfigError(msg)
    inp = (raw.get("runtime_info") or {}).get("input")
    if not isinstance(inp, dict):
        msg = "runtime_info.input: missing; the seed layout needs runtime_info.input.harbor_agent"
        raise ConfigError(msg)
    unknown = set(inp) - {"harbor_agent", "k8s"}
    if unknown:
        msg = f"runtime_info.input.{sorted(unknown)[0]}: unknown key; expected harbor_agent and/or k8s"
        raise ConfigError(msg)
    agent = {} if inp.get("harbor_agent") is None else inp["harbor_agent"]
    k8s = {} if inp.get("k8s") is None else inp["k8s"]
    for section, known, name in ((agent, _SEED_AGENT_KEYS, "harbor_agent"), (k8s, _SEED_K8S_KEYS, "k8s")):
        if not isinstance(section, dict):
            msg = f"runtime_info.input.{name}: must be a mapping"
            raise ConfigError(msg)
        bad = set(section) - known
        if bad:
            msg = f"runtime_info.input.{name}.{sorted(bad)[0]}: unknown key; known keys: {', '.join(sorted(known))}"
            raise ConfigError(msg)
    import_path = agent.get("environment_import_path") or DEFAULT_ENVIRONMENT
    out: dict[str, Any] = {
        "agent": {"name": agent.get("agent_name", "oracle"), "model_name": agent.get("model_name", "")},
        "force_build": agent.get("environment_force_build", False),
        # The seed named a Harbor environment of its own; harbor_ray runs trials on its own environment.
        "environment_import_path": DEFAULT_ENVIRONMENT,
    }
    if k8s.get("pod_name_prefix"):
        out["run_label"] = k8s["pod_name_prefix"]
    if k8s.get("kubeconfig") and _k8s_capable(import_path):
        out["backend"] = {"kind": "k8s", "kubeconfig": k8s["kubeconfig"], "namespace": k8s.get("namespace", "default")}
        if k8s.get("context"):
            out["backend"]["context"] = k8s["context"]
        if agent.get("docker_host"):
            log.info("note: runtime_info.input.harbor_agent.docker_host is ignored; the k8s backend is selected")
    else:
        host = agent.get("docker_host") or ""
        out["backend"] = {"kind": "docker_remote" if host else "docker", "host": host}
        if k8s:
            log.info("note: runtime_info.input.k8s is ignored; %s selects the Docker backend", import_path)
    return out


# --- loading ----------------------------------------------------------------------------------


def load_config(overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """Compose the Hydra tree under conf/ with overrides, or load a YAML file (either layout).

    >>> load_config(["backend=docker", "pool.max_sandboxes=4"]).pool.max_sandboxes
    4
    """
    overrides = list(overrides or [])
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            msg = f"--config {config_file}: no such file; pass a YAML config path"
            raise ConfigError(msg)
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:
            msg = f"--config {config_file}: not valid YAML ({str(e).splitlines()[0]})"
            raise ConfigError(msg) from e
        if not isinstance(raw, dict):
            msg = f"--config {config_file}: the top level must be a mapping"
            raise ConfigError(msg)
        layout = {str(k): v for k, v in raw.items()}
        if is_seed_layout(layout):
            layout = from_seed(layout)
        base = OmegaConf.create(layout)
        try:
            dotlist = OmegaConf.from_dotlist([o for o in overrides if "=" in o])
        except OmegaConfBaseException as e:
            msg = f"overrides: {str(e).splitlines()[0]}; use key=value"
            raise ConfigError(msg) from e
        merged = OmegaConf.merge(base, dotlist)
        assert isinstance(merged, DictConfig)
        return build_config(merged)
    return build_config(_compose(overrides))


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(_conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except HydraException as e:
        first = str(e).splitlines()[0]
        unknown = re.match(r"Could not override '([^']+)'", first)
        if unknown:
            msg = f"{unknown.group(1)}: unknown key; check its spelling (the known keys are in conf/)"
        else:
            msg = f"overrides: {first}; see conf/ for the groups (backend=docker|docker_remote|k8s) and keys"
        raise ConfigError(msg) from e
    OmegaConf.set_struct(cfg, False)
    return cfg


__all__ = [
    "AgentConfig",
    "Config",
    "DockerBackendConfig",
    "PoolConfig",
    "RayConfig",
    "SandboxConfig",
    "TLSFiles",
    "build_config",
    "from_seed",
    "load_config",
]
