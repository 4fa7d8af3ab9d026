"""The structured configs (OmegaConf dataclasses) of a run, their documented keys, and the checks on their values.

Every error is a `ConfigError` whose one line names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from harbor_ray.backends import BackendConfig
from harbor_ray.backends.base import DEFAULT_CAP_ADD
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.errors import ConfigError
from harbor_ray.labels import check_prefix
from harbor_ray.runtimes.recipes import recipe

DEFAULT_ENVIRONMENT = "harbor_ray.harbor.environment:RayEnvironment"


@dataclass
class SandboxConfig:
    """Limits and hardening applied to every sandbox. They are ceilings: a task's task.toml may ask less
    cpus, memory, storage or GPUs; more is clamped to these with a warning (GPUs: refused), see docs/config.md.

    Attributes:
        cpus: CPUs per sandbox (the most a task gets).
        memory_mb: memory per sandbox (MiB), swap included (the most a task gets).
        storage_mb: the most disk a task may ask (MiB; Kubernetes ephemeral-storage); 0 -> no ceiling.
        gpus: the most GPUs a task may ask; a task asking more is refused.
        pids_limit: processes per sandbox.
        network: give every sandbox network; otherwise only tasks whose task.toml allows internet get it.
        gateway: HOST:PORT of a model gateway every sandbox may reach (and nothing else); docs/network.md.
        exec_timeout_s: the longest one command may run.
        output_limit_bytes: stdout/stderr kept per command; the rest is dropped with a note.
        download_limit_bytes: file content one download brings back; past it a file keeps its tail after a note.
        ttl_s: the backstop: a sandbox's PID 1 lives at most this long, whatever happens to us.
        cap_add: Linux capabilities kept after dropping all.
        read_only_root: a read-only root filesystem (with a writable /tmp).
        no_new_privileges: processes cannot gain privileges (setuid binaries).
        hide_git_history: during the agent phase the task repository's git history is one commit of its tree, the
            original .git kept on the host and restored before the verifier (a task's task.toml overrides it with
            [metadata.harbor_ray] hide_git_history); docs/config.md.
        runtime: the OCI runtime of every sandbox, e.g. runsc (gVisor): Docker's `runtime` (registered on each
            daemon), Kubernetes' runtimeClassName (a RuntimeClass of that name); "" -> the daemon's or node's
            default (runc). dryrun checks it is there; docs/config.md.
    """

    cpus: float = 1.0
    memory_mb: int = 2048
    storage_mb: int = 0
    gpus: int = 0
    pids_limit: int = 512
    network: bool = False
    gateway: str = ""
    exec_timeout_s: float = 600.0
    output_limit_bytes: int = 1_000_000
    download_limit_bytes: int = 50_000_000
    ttl_s: int = 3600
    cap_add: list[str] = field(default_factory=lambda: list(DEFAULT_CAP_ADD))
    read_only_root: bool = False
    no_new_privileges: bool = True
    hide_git_history: bool = False
    runtime: str = ""


@dataclass
class PoolConfig:
    """How the pool places, keeps and replaces sandboxes (see docs/pool.md).

    Attributes:
        name: the pool's name (and its named actor's, when shared).
        namespace: the Ray namespace of the named pool actor.
        max_sandboxes: sandboxes alive at once, over every host.
        max_concurrent_creates: sandbox creations in flight at once, over every host.
        warm_per_image: started sandboxes kept ready per recently leased image.
        start_retries: further tries of a failed start, on another host when there is one.
        sandbox_resource: a custom Ray resource every sandbox actor asks one unit of, e.g. sandbox_slot.
        prestart_actors: idle sandbox actor processes kept ahead of demand.
        hosts: Docker daemons and their slots, [{name, url ("" = the node's local daemon), node_labels,
            slots, max_concurrent_creates}]; empty -> one host from `backend` (or one per Ray node offering
            sandbox_resource).
        node_labels: Ray node labels every sandbox actor requires.
        actor_cpus: CPUs each sandbox actor reserves in Ray (never a GPU).
        start_timeout_s: actor scheduling plus sandbox start (a build adds backend.build_timeout_s).
        circuit_failures: start failures in a row that pause a host.
        circuit_reset_s: how long a paused host gets no creations before one trial.
        health_interval_s: background health checks of warm sandboxes (0: only at hand-out).
        reap_interval_s: how often orphaned sandboxes are looked for (0: only at pool start).
        shared: `SandboxPool.from_config` uses one named pool actor for the whole Ray cluster.
        keep_actors_s: a released sandbox's actor process is recycled (kept idle for a next sandbox) while
            idle actors plus leases stay under the peak in use during this window; an idle actor unused
            this long ends (0: every actor ends with its sandbox).
        actor_max_sandboxes: sandboxes one actor process serves before it ends (recycling's bound).
    """

    name: str = "harbor-ray"
    namespace: str = "harbor_ray"
    max_sandboxes: int = 16
    max_concurrent_creates: int = 4
    warm_per_image: int = 0
    start_retries: int = 3
    sandbox_resource: str = ""
    prestart_actors: int = 0
    hosts: list[dict[str, Any]] | None = None
    node_labels: dict[str, str] | None = None
    actor_cpus: float = 0.0
    start_timeout_s: float = 120.0
    circuit_failures: int = 5
    circuit_reset_s: float = 30.0
    health_interval_s: float = 30.0
    reap_interval_s: float = 30.0
    shared: bool = True
    keep_actors_s: float = 600.0
    actor_max_sandboxes: int = 100


@dataclass
class AgentConfig:
    """The Harbor agent each trial runs.

    Attributes:
        name: a Harbor agent name (oracle, nop, claude-code, terminus-2, …).
        import_path: or a custom agent class, "module:Class".
        model_name: the model as the agent expects it, e.g. hosted_vllm/<name>.
        kwargs: keyword arguments of the agent.
        env: environment variables of the agent's commands (Harbor's AgentConfig.env), e.g. OPENAI_BASE_URL.
        override_timeout_s: the agent phase's timeout instead of the task's [agent] timeout_sec (0: the task's).
        default_timeout_s: the agent phase's timeout when the task's task.toml gives no [agent] timeout_sec.
        max_timeout_s: the longest agent phase, whatever the task says (0: no cap).
        timeout_multiplier: multiplies the agent phase's timeout.
        setup_timeout_multiplier: multiplies the agent setup's timeout.
        runtime: an agent runtime recipe (mini-swe-agent, claude-code): built once per host, mounted read-only
            at /opt/harbor-agent/<name> with its launchers on PATH; Harbor's installed agent then runs with
            skip_install. "" -> none (the agent installs itself, or is in the image).
    """

    name: str = "oracle"
    import_path: str = ""
    model_name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    override_timeout_s: float = 0.0
    default_timeout_s: float = 1800.0
    max_timeout_s: float = 0.0
    timeout_multiplier: float = 1.0
    setup_timeout_multiplier: float = 1.0
    runtime: str = ""


@dataclass
class RayConfig:
    """Which Ray the run uses.

    Attributes:
        address: "" -> start Ray in this process; "auto" -> join the running cluster; or host:port.
        num_cpus: CPUs of a Ray started here (0: Ray decides).
    """

    address: str = ""
    num_cpus: int = 0


@dataclass
class Config:
    """Everything a run needs; every key is a Hydra override (`python -m harbor_ray config --keys` lists them).

    Attributes:
        run_label: labels everything we create, harbor-run=<run_label> (the seed's pod_name_prefix).
        backend: where sandboxes run; select with backend=docker|docker_remote|k8s.
        sandbox: limits and hardening of every sandbox.
        pool: placement, warm sandboxes, retries.
        agent: the Harbor agent of each trial.
        ray: which Ray to use.
        tasks: task directories, or directories of them.
        n_concurrent: trials running at once.
        n_attempts: trials per task.
        jobs_dir: where job directories go.
        job_name: the job directory's name ("" -> a timestamp).
        environment_import_path: the Harbor environment trials use.
        force_build: rebuild task images even when present.
        delete: remove each trial's sandbox at its end (false keeps it until its TTL or a clean).
        verifier_timeout_s: 0 -> the task's own [verifier] timeout.
        verifier_timeout_multiplier: multiplies the verifier's timeout.
        build_timeout_multiplier: multiplies the task's [environment] build_timeout_sec.
        verifier_enabled: run the task's verifier (false: trials end after the agent, with no reward).
        max_retries: retries of a trial whose failure is the infrastructure's (env_setup_failed, sandbox_lost),
            each on a fresh sandbox; never of one whose agent or verifier failed.
        tail_kill_target: fraction of a batch that must finish before stragglers are ended (1.0 = never).
        tail_kill_grace_s: once the target is met, trials still running this much later are tail_killed.
        tail_kill_min_tasks: tail kill waits for at least this many finished trials.
    """

    run_label: str = "harbor-ray"
    backend: BackendConfig = field(default_factory=DockerBackendConfig)
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
    verifier_timeout_s: float = 0.0
    verifier_timeout_multiplier: float = 1.0
    build_timeout_multiplier: float = 1.0
    verifier_enabled: bool = True
    max_retries: int = 0
    tail_kill_target: float = 1.0
    tail_kill_grace_s: float = 60.0
    tail_kill_min_tasks: int = 1


def _schema() -> type:
    """`Config` as OmegaConf can take it: OmegaConf has no unions of dataclasses, so `backend` is typed
    apart, by its `kind` (see build_config)."""
    hints = get_type_hints(Config)
    fields = [
        (
            f.name,
            Any if f.name == "backend" else hints[f.name],
            dataclasses.field(default=f.default, default_factory=f.default_factory),
        )
        for f in dataclasses.fields(Config)
    ]
    return dataclasses.make_dataclass("ConfigSchema", fields)


_CONFIG_SCHEMA = _schema()


def require(values: dict[str, float], *, at_least: float, strictly: bool) -> None:
    """ConfigError naming the first key whose value is below the bound (or at it, when `strictly`)."""
    for key, value in values.items():
        if value < at_least or (strictly and value == at_least):
            bound = f"greater than {at_least:g}" if strictly else f"{at_least:g} or more"
            msg = f"{key}={value}: must be {bound}"
            raise ConfigError(msg)


def check_section(value: Any, where: str, known: set[str], example: str = "") -> dict[str, Any]:
    """`value` as a mapping with only `known` keys; ConfigError naming `where` (and the first bad key) otherwise."""
    if not isinstance(value, dict):
        msg = f"{where}: must be a mapping" + (f" like {example}" if example else "")
        raise ConfigError(msg)
    bad = set(value) - known
    if bad:
        msg = f"{where}.{sorted(bad)[0]}: unknown key; known keys: {', '.join(sorted(known))}"
        raise ConfigError(msg)
    return value


_POOL_POSITIVE = ("max_sandboxes", "max_concurrent_creates", "start_timeout_s", "circuit_failures")
_POOL_NOT_NEGATIVE = (
    "warm_per_image",
    "start_retries",
    "prestart_actors",
    "actor_cpus",
    "circuit_reset_s",
    "health_interval_s",
    "reap_interval_s",
    "keep_actors_s",
    "actor_max_sandboxes",
)


def check_pool_config(cfg: PoolConfig) -> None:
    """Numbers of `pool.*` that must be positive (or not negative); the error names the key."""
    require({f"pool.{k}": getattr(cfg, k) for k in _POOL_POSITIVE}, at_least=0, strictly=True)
    require({f"pool.{k}": getattr(cfg, k) for k in _POOL_NOT_NEGATIVE}, at_least=0, strictly=False)


# A Docker runtime name and a RuntimeClass name (a DNS subdomain) both fit this.
_RUNTIME_NAME = re.compile(r"[a-z0-9]([a-z0-9._-]{0,251}[a-z0-9])?")


def check_sandbox_runtime(cfg: Config) -> None:
    """`sandbox.runtime` is a name Docker and Kubernetes both take, and does not contradict the Kubernetes
    backend's own `backend.runtime_class_name` (the older key for the same field)."""
    name = cfg.sandbox.runtime
    if name and not _RUNTIME_NAME.fullmatch(name):
        msg = (
            f"sandbox.runtime={name!r}: not a runtime name (lowercase letters, digits, '.', '_', '-'); "
            "use e.g. runsc, or '' for the default"
        )
        raise ConfigError(msg)
    other = getattr(cfg.backend, "runtime_class_name", "")
    if name and other and other != name:
        msg = (
            f"sandbox.runtime={name} and backend.runtime_class_name={other} disagree; "
            "set only sandbox.runtime (backend.runtime_class_name='')"
        )
        raise ConfigError(msg)


def validate(cfg: Config) -> None:
    check_prefix(cfg.run_label, "run_label")
    require(
        {
            "sandbox.cpus": cfg.sandbox.cpus,
            "sandbox.memory_mb": cfg.sandbox.memory_mb,
            "sandbox.pids_limit": cfg.sandbox.pids_limit,
            "sandbox.exec_timeout_s": cfg.sandbox.exec_timeout_s,
            "sandbox.output_limit_bytes": cfg.sandbox.output_limit_bytes,
            "sandbox.download_limit_bytes": cfg.sandbox.download_limit_bytes,
            "sandbox.ttl_s": cfg.sandbox.ttl_s,
            "n_concurrent": cfg.n_concurrent,
            "n_attempts": cfg.n_attempts,
        },
        at_least=0,
        strictly=True,
    )
    require(
        {
            "agent.timeout_multiplier": cfg.agent.timeout_multiplier,
            "agent.setup_timeout_multiplier": cfg.agent.setup_timeout_multiplier,
            "agent.default_timeout_s": cfg.agent.default_timeout_s,
            "verifier_timeout_multiplier": cfg.verifier_timeout_multiplier,
            "build_timeout_multiplier": cfg.build_timeout_multiplier,
            "tail_kill_target": cfg.tail_kill_target,
        },
        at_least=0,
        strictly=True,
    )
    require(
        {
            "verifier_timeout_s": cfg.verifier_timeout_s,
            "agent.override_timeout_s": cfg.agent.override_timeout_s,
            "agent.max_timeout_s": cfg.agent.max_timeout_s,
            "sandbox.storage_mb": cfg.sandbox.storage_mb,
            "sandbox.gpus": cfg.sandbox.gpus,
            "max_retries": cfg.max_retries,
            "tail_kill_grace_s": cfg.tail_kill_grace_s,
            "tail_kill_min_tasks": cfg.tail_kill_min_tasks,
        },
        at_least=0,
        strictly=False,
    )
    if cfg.tail_kill_target > 1:
        msg = f"tail_kill_target={cfg.tail_kill_target}: a fraction of the batch, at most 1 (1.0 = never tail kill)"
        raise ConfigError(msg)
    check_pool_config(cfg.pool)
    check_sandbox_runtime(cfg)
    if cfg.agent.runtime:
        recipe(cfg.agent.runtime)  # ConfigError naming the shipped recipes
    if cfg.sandbox.memory_mb < 6:
        msg = f"sandbox.memory_mb={cfg.sandbox.memory_mb}: Docker needs at least 6 MiB; use e.g. 2048"
        raise ConfigError(msg)
    if ":" not in cfg.environment_import_path:
        msg = f"environment_import_path={cfg.environment_import_path!r}: use 'module.path:ClassName'"
        raise ConfigError(msg)
    cfg.backend.validate()
