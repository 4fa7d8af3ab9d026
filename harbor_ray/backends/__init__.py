"""Backends: sandbox I/O over one SDK each, chosen by `kind` from the one registry below.

A backend is a package `harbor_ray.backends.<package>` with `config.py` (its settings dataclass, a
`kind` field and the `BackendSettings` methods) and `backend.py` (the class implementing `Backend`).
Adding one is an entry in `REGISTRY`, its config class in `BackendConfig`, and that package. Its SDK is
imported only when a backend is made; a missing SDK says which pip extra to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from harbor_ray.backends.base import Backend, BackendSettings, ExecResult, SandboxHandle, SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.errors import ConfigError

__all__ = [
    "REGISTRY",
    "Backend",
    "BackendConfig",
    "BackendEntry",
    "BackendSettings",
    "ExecResult",
    "SandboxHandle",
    "SandboxSpec",
    "entry",
    "make_backend",
]

# The typed union a config's `backend` section becomes (discriminated by `kind`).
BackendConfig = DockerBackendConfig | K8sBackendConfig


@dataclass(frozen=True)
class BackendEntry:
    """One backend kind: where its code is, its config class, what one sandbox is called there.

    Attributes:
        kind: the value of `backend.kind` (and the Hydra group `backend=<kind>`).
        package: `harbor_ray.backends.<package>`, holding config.py and backend.py.
        backend_class: the class in `<package>.backend`.
        config_class: its settings dataclass.
        noun: what one sandbox is there (container, pod), for messages.
        extra: the pip extra that installs its SDK ("" when it is a core dependency).
    """

    kind: str
    package: str
    backend_class: str
    config_class: type
    noun: str
    extra: str = ""

    def load(self) -> type:
        """The backend class; ConfigError naming the extra when its SDK is not installed."""
        module = f"harbor_ray.backends.{self.package}.backend"
        try:
            return getattr(importlib.import_module(module), self.backend_class)  # type: ignore[no-any-return]
        except ImportError as e:
            hint = f"; pip install 'harbor-ray[{self.extra}]'" if self.extra else ""
            msg = f"backend.kind={self.kind} cannot be used: {e}{hint}"
            raise ConfigError(msg) from e


REGISTRY: dict[str, BackendEntry] = {
    e.kind: e
    for e in (
        BackendEntry("docker", "docker", "DockerBackend", DockerBackendConfig, "container"),
        BackendEntry("docker_remote", "docker", "DockerBackend", DockerBackendConfig, "container"),
        BackendEntry("k8s", "kubernetes", "KubernetesBackend", K8sBackendConfig, "pod", extra="k8s"),
    )
}


def entry(kind: str) -> BackendEntry:
    """The registry entry of a kind; ConfigError listing the known kinds otherwise."""
    try:
        return REGISTRY[kind]
    except KeyError:
        msg = f"backend.kind={kind!r}: unknown backend; use one of {', '.join(REGISTRY)}"
        raise ConfigError(msg) from None


def make_backend(config: BackendConfig, *, output_limit_bytes: int = 1_000_000) -> Backend:
    """The backend a config describes (by its `kind`), its SDK imported now.

    >>> make_backend(DockerBackendConfig()).kind  # doctest: +SKIP
    'docker'
    """
    kwargs: dict[str, Any] = {"output_limit_bytes": output_limit_bytes}
    if config.builds_on_local_docker():
        # Nodes that run this machine's images: build them (task images and agent runtimes) on the local daemon,
        # through its own backend.
        local: Any = make_backend(DockerBackendConfig())
        kwargs["local_builder"] = local.ensure_image
        kwargs["local_runtime_builder"] = local.ensure_runtime_image
    return entry(config.kind).load()(config, **kwargs)  # type: ignore[no-any-return]
