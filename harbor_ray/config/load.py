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
from harbor_ray.config.seed import from_seed, is_seed_layout, seed_key
from harbor_ray.errors import ConfigError
from harbor_ray.labels import check_prefix


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
    return load_config_explained(overrides, config_file)[0]


def load_config_explained(overrides: list[str] | None = None, config_file: str | None = None) -> tuple[Config, str]:
    """`load_config`, and why the config's backend is the one chosen (for dryrun's first line)."""
    overrides = list(overrides or [])
    if not config_file:
        cfg = build_config(_compose(overrides))
        chosen = [o.split("=", 1)[1] for o in overrides if o.startswith("backend=")]
        return cfg, f"backend={chosen[-1]} from the overrides" if chosen else "backend=docker, the default"
    layout = _read_file(config_file)
    why = f"backend.kind in {config_file}" if isinstance(layout.get("backend"), dict) else "backend=docker, the default"
    seed = is_seed_layout(layout)
    if seed:
        layout, why = from_seed(layout)
    try:
        dotlist = OmegaConf.from_dotlist([o for o in overrides if "=" in o])
    except OmegaConfBaseException as e:
        msg = f"overrides: {str(e).splitlines()[0]}; use key=value"
        raise ConfigError(msg) from e
    if any(o.startswith(("backend=", "backend.kind=")) for o in overrides):
        why = "backend.kind from the overrides"
    merged = OmegaConf.merge(OmegaConf.create(layout), dotlist)
    assert isinstance(merged, DictConfig)
    try:
        return build_config(merged), why
    except ConfigError as e:
        key = str(e).split("=", 1)[0].split(":", 1)[0]
        overridden = any(o.split("=", 1)[0] == key for o in overrides)
        origin = seed_key(key) if seed and not overridden else None
        if origin is None:
            raise
        msg = f"{origin} (as {e})"
        raise ConfigError(msg) from e


def _read_file(config_file: str) -> dict[str, Any]:
    """The YAML file's top-level mapping; ConfigError naming the file when it is missing, malformed or not a mapping."""
    import yaml

    path = Path(config_file)
    if not path.is_file():
        msg = f"--config {config_file}: no such file; pass a YAML config path"
        raise ConfigError(msg)
    try:
        raw = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        msg = f"--config {config_file}: not valid YAML ({' '.join(str(e).split())[:200]})"
        raise ConfigError(msg) from e
    if not isinstance(raw, dict):
        what = "is empty" if raw is None else f"holds a single {_yaml_kind(raw)}"
        msg = f"--config {config_file}: {what}, not a mapping of keys; the top level must be key: value lines"
        raise ConfigError(msg)
    try:
        resolved = OmegaConf.to_container(OmegaConf.create({str(k): v for k, v in raw.items()}), resolve=True)
    except OmegaConfBaseException as e:
        msg = f"--config {config_file}: {str(e).splitlines()[0]}"
        raise ConfigError(msg) from e
    assert isinstance(resolved, dict)
    return {str(k): v for k, v in resolved.items()}


def _yaml_kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return "string" if isinstance(value, str) else type(value).__name__


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(_conf_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=_appends_to_existing_keys(overrides))
    except HydraException as e:
        first = str(e).splitlines()[0]
        unknown = re.match(r"Could not override '([^']+)'", first)
        if "LexerNoViableAltException" in first or "token recognition error" in first:
            raise _unparsable(overrides, first) from e
        if unknown:
            msg = f"{unknown.group(1)}: unknown key; check its spelling (the known keys are in conf/)"
        else:
            msg = f"overrides: {first}; see conf/ for the groups (backend=docker|docker_remote|k8s) and keys"
        raise ConfigError(msg) from e
    OmegaConf.set_struct(cfg, False)
    return cfg


def _appends_to_existing_keys(overrides: list[str]) -> list[str]:
    """`+key=value` (Hydra: add a key the tree lacks) as `++key=value` (add or override): a key conf/ came to
    list later (`+backend.tls.cert_path=…` with backend=docker, say) keeps taking the command lines written
    for it before; Hydra would refuse them ("An item is already at …")."""
    return [f"+{o}" if o.startswith("+") and not o.startswith("++") else o for o in overrides]


def _unparsable(overrides: list[str], first: str) -> ConfigError:
    """Hydra's lexer refused an override: say which, and for run_label what a label may hold."""
    bad = next((o for o in overrides if o in first), first.split(": ", 1)[-1])
    key, _, value = bad.partition("=")
    if key.lstrip("+~") == "run_label":
        try:
            check_prefix(value, "run_label")
        except ConfigError as e:
            return e
    return ConfigError(f"{bad}: Hydra cannot parse this override; quote the value, e.g. '{key}=\"{value}\"'")
