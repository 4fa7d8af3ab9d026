"""harbor_ray: Harbor trials in fresh sandboxes, each owned by a Ray actor, handed out by a pool.

The public API. Importing this package imports no SDK (docker, kubernetes, ray): `Sandbox`, `SandboxPool`,
`Lease` and `GroupLease` are loaded on first use.

>>> from harbor_ray import SandboxPool, SandboxSpec, load_config
>>> cfg = load_config(["backend=docker", "pool.max_sandboxes=4"])  # doctest: +SKIP
>>> pool = SandboxPool.from_config(cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from harbor_ray.backends.base import ExecResult, SandboxSpec
from harbor_ray.errors import (
    BackendUnavailable,
    CircuitOpen,
    ConfigError,
    ExecTimeout,
    HarborRayError,
    ImageBuildError,
    SandboxGone,
    SandboxStartError,
    TaskError,
    TransferError,
)

if TYPE_CHECKING:
    from harbor_ray.config import Config, load_config
    from harbor_ray.pool import GroupLease, Lease, SandboxPool
    from harbor_ray.sandbox import Sandbox

__all__ = [
    "BackendUnavailable",
    "CircuitOpen",
    "Config",
    "ConfigError",
    "ExecResult",
    "ExecTimeout",
    "GroupLease",
    "HarborRayError",
    "ImageBuildError",
    "Lease",
    "Sandbox",
    "SandboxGone",
    "SandboxPool",
    "SandboxSpec",
    "SandboxStartError",
    "TaskError",
    "TransferError",
    "load_config",
]
__version__ = "0.1.0"

_LAZY = {
    "Sandbox": "harbor_ray.sandbox",
    "SandboxPool": "harbor_ray.pool",
    "Lease": "harbor_ray.pool",
    "GroupLease": "harbor_ray.pool",
    "Config": "harbor_ray.config",
    "load_config": "harbor_ray.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'harbor_ray' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
