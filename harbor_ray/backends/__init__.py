"""Backends: sandbox I/O over one SDK each. `make_backend` picks one by config, importing it lazily."""

from __future__ import annotations

from typing import Any

from harbor_ray.backends.base import Backend, ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.errors import ConfigError

__all__ = ["Backend", "ExecResult", "SandboxHandle", "SandboxSpec", "make_backend"]


def make_backend(config: Any, *, output_limit_bytes: int = 1_000_000) -> Backend:
    """The backend for a `DockerBackendConfig` or `K8sBackendConfig` (by its `kind`)."""
    kind = getattr(config, "kind", None)
    if kind in ("docker", "docker_remote"):
        from harbor_ray.backends.docker import DockerBackend

        return DockerBackend(config, output_limit_bytes=output_limit_bytes)
    if kind == "k8s":
        try:
            from harbor_ray.backends.kubernetes import KubernetesBackend
        except ImportError as e:
            msg = f"backend.kind=k8s needs the kubernetes client ({e}); pip install 'harbor-ray[k8s]'"
            raise ConfigError(msg) from e
        return KubernetesBackend(config, output_limit_bytes=output_limit_bytes)
    msg = f"backend.kind={kind!r}: unknown backend; use docker, docker_remote or k8s"
    raise ConfigError(msg)
