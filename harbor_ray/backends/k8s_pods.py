"""Pieces of the Kubernetes backend that need no connection: config loading, the pod manifest, reading status."""

from __future__ import annotations

import json
import os
from typing import Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.k8s_config import K8sBackendConfig
from harbor_ray.errors import ConfigError

CONTAINER = "sandbox"
# Waiting reasons that never heal by themselves: fail the start at once instead of at the timeout.
FATAL_WAITING = {"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError"}


def api_message(e: Any) -> str:
    """The first line of an ApiException's Status message (or its reason)."""
    try:
        text = json.loads(e.body or "{}").get("message") or e.reason
    except (ValueError, AttributeError, TypeError):
        text = getattr(e, "reason", None) or str(e)
    text = str(text).strip()
    return text.splitlines()[0] if text else type(e).__name__


def retryable(e: BaseException) -> bool:
    """409 Conflict, 429 (throttled), 5xx and connection errors are worth another try."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(e, ApiException):
        if e.status == 409:  # a write conflict heals on retry; AlreadyExists (a create that went through) does not
            try:
                return json.loads(e.body or "{}").get("reason") != "AlreadyExists"
            except (ValueError, TypeError):
                return True
        return e.status == 429 or e.status >= 500
    return isinstance(e, urllib3.exceptions.HTTPError | ConnectionError)


def load_configuration(config: K8sBackendConfig) -> Any:
    """A private `kubernetes.client.Configuration` for this config; ConfigError with one line if unusable."""
    try:
        from kubernetes import client
        from kubernetes import config as kconfig
    except ImportError as e:
        msg = "the Kubernetes backend needs the kubernetes client: pip install 'harbor-ray[k8s]'"
        raise ConfigError(msg) from e
    cfg = client.Configuration()
    path = config.kubeconfig or os.environ.get("KUBECONFIG", "") or "~/.kube/config"
    where = "in-cluster config" if config.in_cluster else f"backend.kubeconfig={path}"
    try:
        if config.in_cluster:
            kconfig.load_incluster_config(client_configuration=cfg)
        else:
            files = [os.path.expanduser(p) for p in path.split(os.pathsep) if p]
            missing = [p for p in files if not os.access(p, os.R_OK)]
            if missing:
                msg = f"backend.kubeconfig={missing[0]}: no such readable file; give a kubeconfig path (or in_cluster)"
                raise ConfigError(msg)
            kconfig.load_kube_config(
                config_file=os.pathsep.join(files),
                context=config.context or None,
                client_configuration=cfg,
                persist_config=False,
            )
    except ConfigError:
        raise
    except Exception as e:  # ConfigException, yaml errors, missing keys: all mean an unusable config
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"{where}: {first}"
        raise ConfigError(msg) from e
    cfg.connection_pool_maxsize = max(32, 4 * config.max_concurrent_creates)
    cfg.retries = False  # tenacity retries, with backoff; urllib3 would retry at once
    return cfg


def pod_manifest(
    config: K8sBackendConfig, name: str, spec: SandboxSpec, image: str, labels: dict[str, str]
) -> dict[str, Any]:
    """The pod of one sandbox: labeled, unprivileged, resource-bounded, living at most the TTL."""
    quantity = {"cpu": f"{max(1, round(spec.cpus * 1000))}m", "memory": f"{spec.memory_mb}Mi"}
    security: dict[str, Any] = {
        "allowPrivilegeEscalation": not spec.no_new_privileges,
        "privileged": False,
        "capabilities": {"drop": ["ALL"], "add": list(spec.cap_add)},
        "readOnlyRootFilesystem": spec.read_only_root,
    }
    if config.run_as_non_root:
        security["runAsNonRoot"] = True
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["sleep", str(int(spec.ttl_s))],  # PID 1 lives at most the TTL
        "workingDir": spec.workdir or "/",
        "env": [{"name": k, "value": v} for k, v in spec.env],
        "resources": {"requests": dict(quantity), "limits": dict(quantity)},
        "securityContext": security,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": int(spec.ttl_s),  # the TTL backstop if every process of ours dies
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,  # the sandbox gets no API credentials
        "enableServiceLinks": False,
        "containers": [container],
    }
    if spec.read_only_root:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        pod_spec["volumes"] = [{"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}}]
    if config.node_selector:
        pod_spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.tolerations]
    if config.runtime_class_name:
        pod_spec["runtimeClassName"] = config.runtime_class_name
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": pod_spec}


def start_state(pod: Any) -> str:
    """running | failed | pending, from a pod's status."""
    st = pod.status
    if st.phase in ("Failed", "Succeeded"):
        return "failed"
    statuses = st.container_statuses or []
    for cs in statuses:
        if cs.state and cs.state.waiting and cs.state.waiting.reason in FATAL_WAITING:
            return "failed"
    if st.phase == "Running" and statuses and all(cs.state and cs.state.running for cs in statuses):
        return "running"
    return "pending"


def describe(pod: Any, events: list[Any] = ()) -> str:  # type: ignore[assignment]
    """Why a pod is where it is, in one line: phase, failing conditions, container states, warning events."""
    st = pod.status
    parts = [f"phase {st.phase}"]
    if st.reason:
        parts.append(f"{st.reason}: {st.message or ''}".rstrip(": "))
    for c in st.conditions or []:
        if c.status != "True" and c.reason:
            parts.append(f"{c.type} {c.reason}" + (f" ({c.message})" if c.message else ""))
    for cs in st.container_statuses or []:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            w = cs.state.waiting
            parts.append(f"container {cs.name} {w.reason}" + (f" ({w.message})" if w.message else ""))
        if cs.state and cs.state.terminated:
            t = cs.state.terminated
            parts.append(f"container {cs.name} exited {t.exit_code} ({t.reason or ''})")
    parts += [f"event {e.reason}: {e.message}" for e in events if e.type == "Warning"][-2:]
    return "; ".join(p.replace("\n", " ") for p in parts)
