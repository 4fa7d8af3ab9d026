"""The seed system's run config (LegoFlow `subblock/rl/config.yaml`: `runtime_info.input.*`), mapped onto harbor_ray's
plain layout. The whole file loads as written: keys harbor_ray owns are mapped (the table `MAPPED`, listed in
docs/config.md), the rest are named once in one INFO line and never printed with their values (secrets live there).

Backend selection follows the seed's rule, by `harbor_agent.environment_import_path`: a Kubernetes environment
(`harbor_patch.environments.kubernetes.kubernetes:KubernetesEnvironment`, or any path naming kubernetes/k8s)
selects Kubernetes; a Docker one (`…remote_docker:RemoteDockerEnvironment`, `harbor.environments.docker.docker:
DockerEnvironment`) selects Docker, remote when `docker_host` is set and local otherwise, and then a `k8s` section
is ignored with an INFO line saying so (the seed's own dryrun does the same); harbor_ray's own environment (or
none) selects Kubernetes when `k8s.kubeconfig` is set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from harbor_ray.config.schema import DEFAULT_ENVIRONMENT
from harbor_ray.errors import ConfigError

log = logging.getLogger(__name__)

INPUT = "runtime_info.input"
K8S_ENVIRONMENT = "harbor_patch.environments.kubernetes.kubernetes:KubernetesEnvironment"
DOCKER_ENVIRONMENTS = (
    "harbor_patch.environments.remote_docker:RemoteDockerEnvironment",
    "harbor.environments.docker.docker:DockerEnvironment",
)
# Agent options the seed sets in harbor_agent; they go to the agent's kwargs where its options take them.
AGENT_OPTIONS = ("max_iterations", "temperature", "disable_tool_calls")

# Beside runtime_info, and under it, the seed's file holds sections that are not harbor_ray's business.
OTHER_TOP = ("meta_info", "status", "evolving")
OTHER_SECTIONS = (
    "model",
    "data",
    "infrastructure",
    "environment",
    "vllm",
    "training",
    "algorithm",
    "experiment",
    "credentials",
)
# Keys of harbor_agent harbor_ray accepts but does not use. The seed's runtime_image/runtime_mount_path/
# runtime_image_subpath name an image of the seed's own layout (its tree set up by runtime-env.sh); a harbor_ray
# runtime is a recipe (`agent.runtime`) whose launchers have its mount path built in and whose image is named by its
# digest, so mapping them would mount a tree nothing here knows how to start (docs/config.md).
UNUSED_AGENT_KEYS = (
    "runtime_image",
    "runtime_mount_path",
    "runtime_image_subpath",
    "max_consecutive_no_tool",
    "host_path_mounts",
)


@dataclass(frozen=True)
class Mapped:
    """One seed key harbor_ray owns: where it goes in the plain layout and the type its value must have."""

    section: str
    key: str
    target: str  # dotted path in the plain layout
    kind: type  # int, float, bool or str; None values mean "not set"


MAPPED: tuple[Mapped, ...] = (
    Mapped("harbor_agent", "pod_name_prefix", "run_label", str),
    Mapped("harbor_agent", "agent_name", "agent.name", str),
    Mapped("harbor_agent", "agent_import_path", "agent.import_path", str),
    Mapped("harbor_agent", "model_name", "agent.model_name", str),
    Mapped("harbor_agent", "max_iterations", "agent.kwargs.max_iterations", int),
    Mapped("harbor_agent", "temperature", "agent.kwargs.temperature", float),
    Mapped("harbor_agent", "disable_tool_calls", "agent.kwargs.disable_tool_calls", bool),
    Mapped("harbor_agent", "override_timeout_sec", "agent.override_timeout_s", float),
    Mapped("harbor_agent", "max_timeout_sec", "agent.max_timeout_s", float),
    Mapped("harbor_agent", "agent_timeout_multiplier", "agent.timeout_multiplier", float),
    Mapped("harbor_agent", "agent_setup_timeout_multiplier", "agent.setup_timeout_multiplier", float),
    Mapped("harbor_agent", "verifier_timeout_multiplier", "verifier_timeout_multiplier", float),
    Mapped("harbor_agent", "environment_build_timeout_multiplier", "build_timeout_multiplier", float),
    Mapped("harbor_agent", "max_retries", "max_retries", int),
    Mapped("harbor_agent", "verifier_enabled", "verifier_enabled", bool),
    Mapped("harbor_agent", "environment_force_build", "force_build", bool),
    Mapped("harbor_agent", "environment_delete", "delete", bool),
    Mapped("harbor_agent", "environment_override_cpus", "sandbox.cpus", float),
    Mapped("harbor_agent", "environment_override_memory_mb", "sandbox.memory_mb", int),
    Mapped("harbor_agent", "docker_host", "backend.host", str),
    Mapped("harbor_runtime", "num_workers", "n_concurrent", int),
    Mapped("harbor_runtime", "tail_kill_target", "tail_kill_target", float),
    Mapped("harbor_runtime", "tail_kill_grace_sec", "tail_kill_grace_s", float),
    Mapped("harbor_runtime", "tail_kill_min_tasks", "tail_kill_min_tasks", int),
    Mapped("k8s", "kubeconfig", "backend.kubeconfig", str),
    Mapped("k8s", "namespace", "backend.namespace", str),
    Mapped("k8s", "context", "backend.context", str),
    Mapped("k8s", "pod_startup_timeout", "backend.start_timeout_s", float),
    Mapped("k8s", "pod_active_deadline_seconds", "sandbox.ttl_s", int),
    Mapped("k8s", "pod_name_prefix", "run_label", str),
)
OWNED_SECTIONS = ("harbor_agent", "harbor_runtime", "k8s")
_KNOWN = {s: {m.key for m in MAPPED if m.section == s} for s in OWNED_SECTIONS}
_KNOWN["harbor_agent"] |= {"environment_type", "environment_import_path", *UNUSED_AGENT_KEYS}
_TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def is_seed_layout(raw: dict[str, Any]) -> bool:
    return "runtime_info" in raw


def seed_key(target: str) -> str | None:
    """The seed key that maps onto a plain key (for error lines), or None."""
    for m in MAPPED:
        if m.target == target:
            return f"{INPUT}.{m.section}.{m.key}"
    return None


def _has_type(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):  # YAML's true is no number
        return False
    return isinstance(value, (int, float)) if kind is float else isinstance(value, kind)


def _typed(value: Any, m: Mapped) -> Any:
    """`value` when it has the mapped key's type; else one line naming the seed key and what it sets."""
    if not _has_type(value, m.kind):
        msg = f"{INPUT}.{m.section}.{m.key}={value!r}: must be {_TYPE_WORDS[m.kind]} (it sets {m.target})"
        raise ConfigError(msg)
    return value


def _put(out: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def _section(inp: dict[str, Any], name: str) -> dict[str, Any]:
    value = inp.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        msg = f"{INPUT}.{name}: must be a mapping of keys to values"
        raise ConfigError(msg)
    bad = sorted(set(value) - _KNOWN[name])
    if bad:
        msg = f"{INPUT}.{name}.{bad[0]}: unknown key; known keys: {', '.join(sorted(_KNOWN[name]))}"
        raise ConfigError(msg)
    return value


def _environment_kind(agent: dict[str, Any]) -> str:
    """k8s | docker | ours, from harbor_agent.environment_import_path (or environment_type when it is null)."""
    path = agent.get("environment_import_path")
    env_type = agent.get("environment_type")
    if path is None and env_type is not None:
        if str(env_type).lower() == "docker":
            return "docker"
        msg = (
            f"{INPUT}.harbor_agent.environment_type={env_type!r}: harbor_ray runs Docker or Kubernetes; "
            f"set environment_import_path to {K8S_ENVIRONMENT} or {DOCKER_ENVIRONMENTS[0]}"
        )
        raise ConfigError(msg)
    if path is None or path == DEFAULT_ENVIRONMENT:
        return "ours"
    if not isinstance(path, str) or ":" not in path:
        msg = f"{INPUT}.harbor_agent.environment_import_path={path!r}: use 'module.path:ClassName'"
        raise ConfigError(msg)
    lowered = path.lower()
    if path == K8S_ENVIRONMENT or any(word in lowered for word in ("kubernetes", "k8s", "kube")):
        kind = "k8s"
    elif path in DOCKER_ENVIRONMENTS or "docker" in lowered:
        kind = "docker"
    else:
        msg = (
            f"{INPUT}.harbor_agent.environment_import_path={path}: harbor_ray runs sandboxes on Docker or "
            f"Kubernetes; use {K8S_ENVIRONMENT} or {DOCKER_ENVIRONMENTS[0]}"
        )
        raise ConfigError(msg)
    if env_type is not None and str(env_type).lower() not in (kind, "kubernetes" if kind == "k8s" else kind):
        msg = f"{INPUT}.harbor_agent.environment_type={env_type!r}: contradicts environment_import_path={path}"
        raise ConfigError(msg)
    return kind


def _select_backend(agent: dict[str, Any], k8s: dict[str, Any], out: dict[str, Any]) -> str:
    """Put the backend into `out` (and the k8s section's keys, when it is Kubernetes); return why, in words."""
    kind = _environment_kind(agent)
    path = agent.get("environment_import_path") or DEFAULT_ENVIRONMENT
    host = agent.get("docker_host") or ""
    kubeconfig = k8s.get("kubeconfig") or ""
    if kind == "k8s" or (kind == "ours" and kubeconfig):
        out["backend"] = {"kind": "k8s"}
        _map(out, "k8s", k8s)
        if "start_timeout_s" in out["backend"]:  # the pool's bound on a start must not cut the pod's short
            out.setdefault("pool", {})["start_timeout_s"] = out["backend"]["start_timeout_s"]
        if host:
            log.info("note: %s.harbor_agent.docker_host is ignored: the Kubernetes backend is selected", INPUT)
        if kind == "k8s":
            why = f"environment_import_path {path} is a Kubernetes environment"
        else:
            why = f"k8s.kubeconfig is set and environment_import_path is {path}"
        return why + (f", kubeconfig {kubeconfig}" if kubeconfig else ", kubeconfig from $KUBECONFIG or ~/.kube/config")
    out["backend"] = {"kind": "docker_remote" if host else "docker", "host": host}
    where = f"the daemon at {host}" if host else "the local daemon (docker_host is empty)"
    if kind == "docker":
        why = f"environment_import_path {path} is a Docker environment: {where}"
    else:
        why = f"no k8s.kubeconfig and environment_import_path {path}: {where}"
    if k8s:
        # The seed's own dryrun decides the same way: the import path picks the backend, the k8s section waits.
        log.info(
            "backend docker: %s.harbor_agent.environment_import_path %s selects Docker (%s); %s.k8s%s is ignored; "
            "set environment_import_path to %s to run on Kubernetes",
            INPUT,
            path,
            where,
            INPUT,
            f" (kubeconfig {kubeconfig})" if kubeconfig else "",
            K8S_ENVIRONMENT,
        )
        why += "; the k8s section is ignored"
    return why


def _map(out: dict[str, Any], name: str, section: dict[str, Any]) -> None:
    """Put one section's mapped keys (their types already checked) into `out`; docker_host goes with the backend."""
    for m in MAPPED:
        if m.section == name and m.key != "docker_host" and section.get(m.key) is not None:
            _put(out, m.target, section[m.key])


def from_seed(raw: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The plain layout (a dict for build_config) of a seed config, and why its backend was chosen."""
    extra_top = sorted(set(raw) - {"runtime_info", *OTHER_TOP})
    if extra_top:
        msg = f"{extra_top[0]}: unknown top-level key next to runtime_info; the seed's file has {', '.join(OTHER_TOP)}"
        raise ConfigError(msg)
    info = raw.get("runtime_info")
    if not isinstance(info, dict) or not isinstance(info.get("input"), dict):
        msg = f"{INPUT}: missing; the seed layout needs {INPUT}.harbor_agent"
        raise ConfigError(msg)
    inp = info["input"]
    unknown = sorted(set(inp) - {*OWNED_SECTIONS, *OTHER_SECTIONS})
    if unknown:
        msg = f"{INPUT}.{unknown[0]}: unknown section; harbor_ray reads {', '.join(OWNED_SECTIONS)}"
        raise ConfigError(msg)
    sections = {name: _section(inp, name) for name in OWNED_SECTIONS}
    for m in MAPPED:  # every type first, whichever backend ends up reading it
        if sections[m.section].get(m.key) is not None:
            _typed(sections[m.section][m.key], m)
    _check_contradictions(sections)
    out: dict[str, Any] = {"environment_import_path": DEFAULT_ENVIRONMENT}
    _map(out, "harbor_agent", sections["harbor_agent"])
    _map(out, "harbor_runtime", sections["harbor_runtime"])
    if sections["k8s"].get("pod_name_prefix"):
        out["run_label"] = sections["k8s"]["pod_name_prefix"]
    why = _select_backend(sections["harbor_agent"], sections["k8s"], out)
    _keep_agent_options(out.get("agent", {}))  # no agent_name nor agent_import_path: the default agent (oracle)
    if "n_concurrent" in out:  # each running trial holds one sandbox
        out.setdefault("pool", {})["max_sandboxes"] = max(out["n_concurrent"], 1)
    _note_unused(raw, info, inp, sections["harbor_agent"])
    return out, why


def _keep_agent_options(agent: dict[str, Any]) -> None:
    """Drop the seed's agent options (max_iterations, …) that the chosen Harbor agent does not take, with a note.

    An agent class that cannot be imported here keeps them all: it is the seed's own agent, which takes them.
    """
    kwargs = agent.get("kwargs") or {}
    if not kwargs:
        return
    try:
        from harbor.agents.factory import AgentFactory
        from harbor.models.trial.config import AgentConfig

        cls = AgentFactory.get_agent_class_from_config(
            AgentConfig(
                name=None if agent.get("import_path") else agent.get("name"), import_path=agent.get("import_path")
            )
        )
    except Exception:  # not importable here: leave the kwargs to the run, which reports a missing agent itself
        log.debug("agent %s not importable here; its options are passed as written", agent, exc_info=True)
        return
    model = getattr(cls, "options_model", None)
    if model is None:
        return  # Harbor ignores leftover kwargs of an agent without options
    dropped = sorted(k for k in kwargs if k not in model.model_fields)
    for k in dropped:
        del kwargs[k]
    if dropped:
        log.info("seed config: agent %s takes no %s; not passed", cls.__name__, ", ".join(dropped))


def _check_contradictions(sections: dict[str, dict[str, Any]]) -> None:
    a, k = sections["harbor_agent"].get("pod_name_prefix"), sections["k8s"].get("pod_name_prefix")
    if a is not None and k is not None and a != k:
        msg = f"{INPUT}.k8s.pod_name_prefix={k!r}: contradicts harbor_agent.pod_name_prefix={a!r}; keep one"
        raise ConfigError(msg)


def _note_unused(raw: dict[str, Any], info: dict[str, Any], inp: dict[str, Any], agent: dict[str, Any]) -> None:
    """One INFO line naming what harbor_ray does not read (names only: credentials are never printed)."""
    names = [k for k in OTHER_TOP if k in raw]
    names += [f"runtime_info.{k}" for k in info if k != "input"]
    names += [f"input.{k}" for k in OTHER_SECTIONS if k in inp]
    names += [f"harbor_agent.{k}" for k in UNUSED_AGENT_KEYS if agent.get(k) is not None]
    if names:
        log.info("seed config: not used by harbor_ray (accepted): %s", ", ".join(names))
