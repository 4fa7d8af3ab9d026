"""Agent runtimes on Kubernetes: the pod's init container copies the runtime image's tree into an `emptyDir`, which
the sandbox container mounts read-only at the tree's path; each exec puts the tree's launchers last on PATH.

The runtime image is the one the Docker backend builds (`FROM scratch`, named by the recipe's digest), prefixed
with `backend.image_registry` like task images: with `backend.build_with_docker` it is built once on this
machine's daemon (nodes that run its images), otherwise the nodes pull it (push it there). The copy is the tree's
own interpreter (`Recipe.copy_argv`): the image has no shell. The init container runs as nobody with every
capability dropped. PATH is set per exec, not in the pod spec: a pod's env cannot extend the image's own PATH
(Kubernetes expands `$(VAR)` only from the pod's env), and replacing it would hide the task image's tools.

Image volumes (`volumes: - image:`, Kubernetes 1.31+) would mount the image without a copy; the cluster here is
1.20, so only the init container is built and run (docs/kubernetes.md).
"""

from __future__ import annotations

import platform
from typing import Any

from harbor_ray import labels as L
from harbor_ray.errors import ConfigError
from harbor_ray.runtimes.recipes import recipe

__all__ = ["INIT_CONTAINER", "VOLUME", "apply_to_pod", "node_arch", "path_tail", "start_failure"]

INIT_CONTAINER = "agent-runtime"
VOLUME = "agent-runtime"
ARCH_LABEL = "kubernetes.io/arch"
_STAGE = "/harbor-ray-runtime"  # the emptyDir, as the init container sees it
_NOBODY = 65534
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}
_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}


def node_arch() -> str:
    """The node architecture (`kubernetes.io/arch`) the runtime is built for: this machine's (the build host)."""
    machine = platform.machine()
    return _GOARCH.get(machine, machine)


def apply_to_pod(body: dict[str, Any], name: str, image: str) -> None:
    """Add runtime `name` (its image `image`) to a sandbox pod: the init container, the emptyDir, the read-only
    mount, and the node architecture the tree runs on (ConfigError when backend.node_selector asks another)."""
    rec = recipe(name)
    spec = body["spec"]
    arch = node_arch()
    selector = spec.setdefault("nodeSelector", {})
    if selector.get(ARCH_LABEL, arch) != arch:
        msg = (
            f"backend.node_selector.{ARCH_LABEL}={selector[ARCH_LABEL]}: agent.runtime={name} is built for {arch} "
            f"(this machine); select {arch} nodes, or build the runtime on a machine of that architecture"
        )
        raise ConfigError(msg)
    selector[ARCH_LABEL] = arch  # the tree's loader and libraries are this architecture's
    sandbox = spec["containers"][0]
    spec["initContainers"] = [
        {
            "name": INIT_CONTAINER,
            "image": image,
            "imagePullPolicy": sandbox["imagePullPolicy"],
            "command": rec.copy_argv(_STAGE),
            # the sandbox's CPU and memory (the pod's effective request stays the sandbox's); no GPUs for a copy
            "resources": {kind: _cpu_memory(q) for kind, q in sandbox["resources"].items()},
            "securityContext": {
                "runAsUser": _NOBODY,
                "runAsGroup": _NOBODY,
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
                "readOnlyRootFilesystem": True,
            },
            "volumeMounts": [{"name": VOLUME, "mountPath": _STAGE}],
        }
    ]
    spec.setdefault("volumes", []).append({"name": VOLUME, "emptyDir": {}})
    sandbox.setdefault("volumeMounts", []).append({"name": VOLUME, "mountPath": rec.mount_path, "readOnly": True})


def _cpu_memory(quantities: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in quantities.items() if k in ("cpu", "memory")}


def path_tail(labels: dict[str, str]) -> str | None:
    """The launchers' directory of the pod's runtime (labeled `harbor-ray/runtime`), for the end of PATH."""
    name = labels.get(L.RUNTIME)
    return recipe(name).bin_path if name else None


def start_failure(pod: Any) -> str | None:
    """One line naming agent.runtime and the fix when the pod's runtime init container is why it does not start."""
    name = (pod.metadata.labels or {}).get(L.RUNTIME)
    if not name:
        return None
    status = next((s for s in pod.status.init_container_statuses or [] if s.name == INIT_CONTAINER), None)
    if status is None or status.state is None:
        return None
    image = status.image or next((c.image for c in pod.spec.init_containers or [] if c.name == INIT_CONTAINER), "")
    where = f"pod {pod.metadata.namespace}/{pod.metadata.name}"
    waiting, done = status.state.waiting, status.state.terminated
    if waiting and waiting.reason in _PULL_REASONS:
        return (
            f"agent.runtime={name}: {where} cannot get the runtime image {image} ({waiting.reason}); build it on the "
            f"nodes' Docker with `python -m harbor_ray images build agent.runtime={name}` and "
            "backend.build_with_docker=true, or push it to the registry in backend.image_registry"
        )
    if done and done.exit_code:
        return (
            f"agent.runtime={name}: {where}: copying the runtime into the pod failed (exit {done.exit_code}, "
            f"{done.reason or ''} {(done.message or '').strip()[:200]}); check the node's disk for the emptyDir and "
            f"that the nodes are {node_arch()} (the runtime's architecture)"
        )
    return None
