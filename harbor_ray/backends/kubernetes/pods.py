"""Pods of sandboxes: the manifest, reading a pod's start state and why it is there, and watching one pod."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes.api import api_message, retryable
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.errors import BackendUnavailable

CONTAINER = "sandbox"
# Waiting reasons that never heal by themselves: fail the start at once instead of at the timeout.
FATAL_WAITING = {"ErrImageNeverPull", "InvalidImageName", "CreateContainerConfigError"}


def pod_manifest(
    config: K8sBackendConfig, name: str, spec: SandboxSpec, image: str, labels: dict[str, str]
) -> dict[str, Any]:
    """The pod of one sandbox: labeled, unprivileged, resource-bounded, living at most the TTL."""
    quantity = {"cpu": f"{max(1, round(spec.cpus * 1000))}m", "memory": f"{spec.memory_mb}Mi"}
    if spec.storage_mb:
        quantity["ephemeral-storage"] = f"{spec.storage_mb}Mi"
    limits = dict(quantity) | ({"nvidia.com/gpu": str(spec.gpus)} if spec.gpus else {})
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
        # args, not command: the image's ENTRYPOINT stays, as Harbor's Docker environment keeps it
        "args": ["sleep", str(int(spec.ttl_s))],
        "env": [{"name": k, "value": v} for k, v in spec.env],
        "resources": {"requests": dict(quantity), "limits": limits},
        "securityContext": security,
    }
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "activeDeadlineSeconds": int(spec.ttl_s),  # the TTL backstop if every process of ours dies
        "terminationGracePeriodSeconds": 5,
        "automountServiceAccountToken": False,  # the sandbox gets no API credentials
        "enableServiceLinks": False,
        # The pause container is PID 1 of the pod and reaps orphans (as the Docker backend's init does);
        # with `sleep` as PID 1 they stay zombies, and under the node's pids limit they end the sandbox.
        "shareProcessNamespace": True,
        "containers": [container],
    }
    if spec.workdir:  # else the image's WORKDIR
        container["workingDir"] = spec.workdir
    if spec.read_only_root:
        container["volumeMounts"] = [{"name": "tmp", "mountPath": "/tmp"}]
        pod_spec["volumes"] = [{"name": "tmp", "emptyDir": {"sizeLimit": "512Mi"}}]
    if config.node_selector:
        pod_spec["nodeSelector"] = dict(config.node_selector)
    if config.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in config.tolerations]
    if spec.runtime or config.runtime_class_name:  # sandbox.runtime, or the backend's older key
        pod_spec["runtimeClassName"] = spec.runtime or config.runtime_class_name
    if config.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in config.image_pull_secrets]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": pod_spec}


def start_state(pod: Any) -> str:
    """running | failed | pending, from a pod's status."""
    st = pod.status
    if st.phase in ("Failed", "Succeeded"):
        return "failed"
    statuses = st.container_statuses or []
    for cs in [*(st.init_container_statuses or []), *statuses]:
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
    for cs in [*(st.init_container_statuses or []), *(st.container_statuses or [])]:
        if cs.state and cs.state.waiting and cs.state.waiting.reason:
            w = cs.state.waiting
            parts.append(f"container {cs.name} {w.reason}" + (f" ({w.message})" if w.message else ""))
        if cs.state and cs.state.terminated:
            t = cs.state.terminated
            parts.append(f"container {cs.name} exited {t.exit_code} ({t.reason or ''})")
    warnings = dict.fromkeys(f"event {e.reason}: {e.message}" for e in events if e.type == "Warning")
    parts += list(warnings)[-2:]  # a repeated event once
    return "; ".join(p.replace("\n", " ") for p in parts)


def watch_pod(
    core: Any,
    namespace: str,
    name: str,
    deadline: float,
    *,
    since: Callable[[], str | None] | None = None,
) -> Iterator[dict[str, Any]]:
    """The watch events of one pod until the deadline, watching again when a watch ends or breaks.

    A watch that breaks on a retryable error (API restart, connection reset) is started again;
    any other error is BackendUnavailable. `since`, when given, is asked before each watch for the
    resourceVersion to watch from; None from it means the pod is gone, yielded as a DELETED event
    whose object is None.
    """
    from kubernetes import watch

    while (left := deadline - time.monotonic()) > 0:
        options: dict[str, Any] = {}
        if since is not None:
            version = since()
            if version is None:
                yield {"type": "DELETED", "object": None}
                return
            options["resource_version"] = version
        w = watch.Watch()
        try:
            for event in w.stream(
                core.list_namespaced_pod,
                namespace,
                field_selector=f"metadata.name={name}",
                timeout_seconds=max(1, math.ceil(left)),
                _request_timeout=(10, left + 10),
                **options,
            ):
                yield event
                if time.monotonic() >= deadline:
                    return
        except Exception as e:
            if not retryable(e):
                msg = f"watching pod {namespace}/{name} failed: {api_message(e)}"
                raise BackendUnavailable(msg) from e
            time.sleep(0.5)
        finally:
            w.stop()
