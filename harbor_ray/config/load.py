"""Loading a config: the Hydra tree under conf/ with overrides, or a YAML file (plain, or the seed's layout).

Every error is a `ConfigError` whose one line names the key and the fix.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from harbor_ray.backends import REGISTRY, entry
from harbor_ray.config.schema import _CONFIG_SCHEMA, Config, validate
from harbor_ray.config.seed import from_seed, is_seed_layout
from harbor_ray.errors import ConfigError


def _conf_dir() -> Path:
    """The Hydra tree: the checkout's conf/, or the copy an installed wheel put under <prefix>/share."""
    for candidate in (Path(__file__).resolve().parents[2] / "conf", Path(sys.prefix) / "share/harbor_ray/conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    msg = "conf/config.yaml: not found beside the package nor under <prefix>/share/harbor_ray; reinstall harbor-ray"
    raise ConfigError(msg)


def _typed(cls: type, data: Any, where: str) -> Any:
    """Merge `data` onto the dataclass schema; turn OmegaConf errors into one line naming the key."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", "") or "?"
        full = f"{where}.{key}" if where else key
        reason = str(e).splitlines()[0]
        if "not in struct" in reason or "Key '" in reason and "not" in reason:
            msg = f"{full}: unknown key; remove it or check its spelling (see conf/ for the known keys)"
        else:
            msg = f"{full}: {reason}; fix the value's type"
        raise ConfigError(msg) from e


def build_config(raw: DictConfig | dict[str, Any]) -> Config:
    """Validate a plain (non-seed) config tree into a `Config`."""
    node = OmegaConf.create(raw) if not isinstance(raw, DictConfig) else raw
    container = OmegaConf.to_container(node, resolve=True)
    if not isinstance(container, dict):
        msg = "config: the top level must be a mapping of keys to values"
        raise ConfigError(msg)
    backend_raw = container.pop("backend", None) or {"kind": "docker"}
    if not isinstance(backend_raw, dict):
        msg = f"backend: must be a mapping; select one with backend={'|'.join(REGISTRY)}"
        raise ConfigError(msg)
    backend_cls = entry(str(backend_raw.get("kind", "docker"))).config_class
    if isinstance(container.get("tasks"), str):
        container["tasks"] = [container["tasks"]]
    schema = _typed(_CONFIG_SCHEMA, container, "")
    values = {f.name: getattr(schema, f.name) for f in dataclasses.fields(schema)}
    cfg = Config(**{**values, "backend": _typed(backend_cls, backend_raw, "backend")})
    validate(cfg)
    return cfg


def load_config(overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """Compose the Hydra tree under conf/ with overrides, or load a YAML file (either layout).

    >>> load_config(["backend=docker", "pool.max_sandboxes=4"]).pool.max_sandboxes
    4
    """
    overrides = list(overrides or [])
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            msg = f"--config {config_file}: no such file; pass a YAML config path"
            raise ConfigError(msg)
        try:
            raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        except Exception as e:
            msg = f"--config {config_file}: not valid YAML ({str(e).splitlines()[0]})"
            raise ConfigError(msg) from e
        if not isinstance(raw, dict):
            msg = f"--config {config_file}: the top level must be a mapping"
            raise ConfigError(msg)
        layout = {str(k): v for k, v in raw.items()}
        if is_seed_layout(layout):
            layout = from_seed(layout)
        base = OmegaConf.create(layout)
        try:
            dotlist = OmegaConf.from_dotlist([o for o in overrides if "=" in o])
        except OmegaConfBaseException as e:
            msg = f"overrides: {str(e).splitlines()[0]}; use key=value"
            raise ConfigError(msg) from e
        merged = OmegaConf.merge(base, dotlist)
        assert isinstance(merged, DictConfig)
        return build_config(merged)
    return build_config(_compose(overrides))


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(_conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except HydraException as e:
        first = str(e).splitlines()[0]
        unknown = re.match(r"Could not override '([^']+)'", first)
        if unknown:
            msg = f"{unknown.group(1)}: unknown key; check its spelling (the known keys are in conf/)"
        else:
            msg = f"overrides: {first}; see conf/ for the groups (backend=docker|docker_remote|k8s) and keys"
        raise ConfigError(msg) from e
    OmegaConf.set_struct(cfg, False)
    return cfg
