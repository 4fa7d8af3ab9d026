"""The house's contracts: one backend registry, typed configs with documented keys, a public API that
imports no SDK, the old import paths users were told about, and a lock that satisfies pyproject.toml."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from harbor_ray import backends
from harbor_ray.backends import REGISTRY, BackendEntry
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config, describe_keys, load_config
from harbor_ray.errors import ConfigError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_every_kind_has_a_config_class_of_that_kind() -> None:
    for kind, entry in REGISTRY.items():
        assert entry.kind == kind
        cfg = load_config([f"backend={kind}", *(["backend.allow_insecure=true"] if kind == "docker_remote" else [])])
        assert type(cfg.backend) is entry.config_class
        assert cfg.backend.kind == kind


def test_backend_section_is_typed_by_kind() -> None:
    assert isinstance(load_config(["backend=k8s", "backend.namespace=rl"]).backend, K8sBackendConfig)
    assert isinstance(load_config(["backend=docker"]).backend, DockerBackendConfig)
    with pytest.raises(
        ConfigError, match=r"backend\.kind='nomad': unknown backend; use one of docker, docker_remote, k8s"
    ):
        backends.entry("nomad")


def test_a_missing_sdk_names_the_extra() -> None:
    entry = BackendEntry("demo", "no_such_backend", "DemoBackend", DockerBackendConfig, "thing", extra="demo")
    with pytest.raises(ConfigError, match=r"backend\.kind=demo cannot be used: .*pip install 'harbor-ray\[demo\]'"):
        entry.load()


def test_every_config_key_is_documented() -> None:
    rows = describe_keys()
    undocumented = [key for key, _, doc in rows if not re.sub(r"^\[[^]]*\]", "", doc).strip()]
    assert not undocumented, f"config keys without a doc line: {undocumented}"
    keys = {key for key, _, _ in rows}
    assert {"run_label", "pool.max_sandboxes", "sandbox.ttl_s", "backend.kubeconfig", "backend.tls.cert_path"} <= keys
    top = {f.name for f in dataclasses.fields(Config)} - {"backend"}
    assert top <= {key.split(".")[0] for key in keys}


def test_config_command_lists_keys_and_prints_the_composed_config() -> None:
    keys = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "config", "--keys"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert keys.returncode == 0, keys.stderr
    assert re.search(r"^pool\.max_sandboxes\s+16\s+sandboxes alive at once", keys.stdout, re.M)
    shown = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "config", "backend=k8s", "backend.namespace=rl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert shown.returncode == 0, shown.stderr
    assert "kind: k8s" in shown.stdout
    assert "namespace: rl" in shown.stdout


def test_help_lists_every_command() -> None:
    from harbor_ray.cli import COMMANDS

    done = subprocess.run([sys.executable, "-m", "harbor_ray", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    assert {"run", "dryrun", "clean", "images", "config", "verl-dataset"} <= set(COMMANDS)
    for name in COMMANDS:
        assert re.search(rf"^  {re.escape(name)}\s", done.stdout, re.M), f"{name} missing from --help"


def test_public_api_imports_no_sdk() -> None:
    out = run_python(
        "import sys, harbor_ray; from harbor_ray import SandboxSpec, HarborRayError, ConfigError;"
        "print(sorted(m for m in ('docker', 'kubernetes', 'ray', 'harbor', 'verl') if m in sys.modules))"
    )
    assert out.strip() == "[]"
    assert run_python("import harbor_ray; print(harbor_ray.SandboxPool.__module__)").strip() == "harbor_ray.pool.handle"


def test_old_import_paths_keep_working() -> None:
    from harbor_ray.actor import Sandbox as OldSandbox
    from harbor_ray.pool import Lease, SandboxPool
    from harbor_ray.sandbox import Sandbox

    assert OldSandbox is Sandbox
    assert SandboxPool.__name__ == "SandboxPool"
    assert Lease.__name__ == "Lease"


def test_lock_satisfies_every_dependency_in_pyproject() -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    pins: dict[str, str] = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version.strip()
    for text in wanted:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} is in pyproject.toml but not in requirements.lock; run scripts/lock.sh"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside {req}"
        )
