"""Where the verl loop gets its sandboxes: harbor_ray's config (composed once per process) and the pool.

`SandboxPool.from_config(cfg)` with `pool.shared=true` (the default) is a handle on the cluster's named pool
actor `pool.name` in `pool.namespace`: every verl AgentLoopWorker process reaches the same pool, so
`pool.max_sandboxes` and the per-host slots bound the whole trainer. The actor is created on the first
lease, i.e. on the first episode, after verl has placed its GPU workers. Its sandbox actors ask Ray for one
unit of `pool.sandbox_resource` (e.g. `sandbox_slot`) and no GPU, so they land only on nodes started with
`ray start --resources='{"sandbox_slot": 32}'`, never in verl's placement-group bundles.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref

from harbor_ray.config import Config, load_config
from harbor_ray.pool import SandboxPool

log = logging.getLogger(__name__)

_CONFIGS: dict[tuple[tuple[str, ...], str | None], Config] = {}
_CONFIG_LOCK = threading.Lock()
# One handle per (event loop, pool name); with pool.shared=false the pool itself, whose locks belong to a loop.
_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, SandboxPool]] = weakref.WeakKeyDictionary()


def harbor_config(overrides: list[str] | tuple[str, ...] = (), config_file: str | None = None) -> Config:
    """harbor_ray's config from Hydra overrides (or a YAML file), composed once per process."""
    key = (tuple(overrides), config_file)
    with _CONFIG_LOCK:
        if key not in _CONFIGS:
            _CONFIGS[key] = load_config(list(overrides), config_file)
        return _CONFIGS[key]


def pool_for(cfg: Config) -> SandboxPool:
    """The pool `cfg.pool.name` (its named actor is found or created on the first lease)."""
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    pool = pools.get(cfg.pool.name)
    if pool is None:
        pool = pools[cfg.pool.name] = SandboxPool.from_config(cfg)
        log.info("verl agent loop uses sandbox pool %s (shared=%s)", cfg.pool.name, cfg.pool.shared)
    return pool
