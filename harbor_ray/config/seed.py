"""The seed system's layout (`runtime_info.input.{harbor_agent,k8s}`), mapped onto harbor_ray's plain layout.

Detection follows the seed: a `k8s` section with a kubeconfig and a k8s-capable environment selects
Kubernetes; otherwise Docker, local when `docker_host` is empty and remote otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from harbor_ray.config.schema import DEFAULT_ENVIRONMENT, check_section
from harbor_ray.errors import ConfigError

log = logging.getLogger(__name__)

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
        check_section(section, f"runtime_info.input.{name}", known)
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
