"""A run's config: schema.py (the structured configs, documented, and their checks), load.py (Hydra tree,
plain YAML, overrides), seed.py (the seed system's runtime_info layout), keys.py (every key and its doc).

>>> load_config(["backend=docker", "pool.max_sandboxes=4"]).pool.max_sandboxes
4
"""

from harbor_ray.backends import BackendConfig
from harbor_ray.backends.docker.config import DockerBackendConfig, TLSFiles
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config.keys import describe_keys
from harbor_ray.config.load import build_config, load_config, load_config_explained
from harbor_ray.config.schema import (
    DEFAULT_ENVIRONMENT,
    AgentConfig,
    Config,
    PoolConfig,
    RayConfig,
    SandboxConfig,
    check_pool_config,
    check_section,
    require,
    validate,
)
from harbor_ray.config.seed import from_seed, is_seed_layout

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "AgentConfig",
    "BackendConfig",
    "Config",
    "DockerBackendConfig",
    "K8sBackendConfig",
    "PoolConfig",
    "RayConfig",
    "SandboxConfig",
    "TLSFiles",
    "build_config",
    "check_pool_config",
    "check_section",
    "describe_keys",
    "from_seed",
    "is_seed_layout",
    "load_config",
    "load_config_explained",
    "require",
    "validate",
]
