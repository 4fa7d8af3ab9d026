"""`sandbox.runtime`: the config key, its checks, and where it lands (the sandbox spec, the pod's runtimeClassName).

The Docker side (the container's HostConfig.Runtime, a daemon without it) is proven on real daemons in
tests/docker/test_sandbox_runtime.py and tests/hosts/test_gvisor.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.backends.kubernetes.pods import pod_manifest
from harbor_ray.config import load_config
from harbor_ray.errors import ConfigError
from harbor_ray.harbor.spec import sandbox_spec

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def test_default_is_the_hosts_default() -> None:
    cfg = load_config()
    assert cfg.sandbox.runtime == ""
    spec = SandboxSpec(run_label="t", image="x")
    assert "runtimeClassName" not in pod_manifest(K8sBackendConfig(), "p", spec, "x", {})["spec"]


def test_runtime_reaches_the_spec_of_every_trial(tmp_path: Path) -> None:
    cfg = load_config(["sandbox.runtime=runsc"])
    env = tmp_path / "task" / "environment"
    env.mkdir(parents=True)
    (env / "Dockerfile").write_text("FROM harbor-ray/busybox:latest\n")
    assert sandbox_spec(cfg, env).runtime == "runsc"


def test_runtime_is_the_pods_runtime_class() -> None:
    spec = SandboxSpec(run_label="t", image="x", runtime="gvisor")
    assert pod_manifest(K8sBackendConfig(), "p", spec, "x", {})["spec"]["runtimeClassName"] == "gvisor"
    older = K8sBackendConfig(runtime_class_name="kata")  # the backend's own key still works alone
    assert pod_manifest(older, "p", SandboxSpec(run_label="t"), "x", {})["spec"]["runtimeClassName"] == "kata"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["sandbox.runtime=Run SC"], r"^sandbox.runtime='Run SC': not a runtime name .*use e.g. runsc"),
        (['sandbox.runtime="runsc/rm"'], r"^sandbox.runtime='runsc/rm': not a runtime name"),
        (
            ["backend=k8s", "sandbox.runtime=gvisor", "backend.runtime_class_name=kata"],
            r"^sandbox.runtime=gvisor and backend.runtime_class_name=kata disagree; set only sandbox.runtime",
        ),
    ],
)
def test_bad_runtime_is_one_line_naming_the_key(overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as err:
        load_config(overrides)
    assert "\n" not in str(err.value)


def test_same_name_in_both_keys_is_fine() -> None:
    cfg = load_config(["backend=k8s", "sandbox.runtime=gvisor", "backend.runtime_class_name=gvisor"])
    assert cfg.sandbox.runtime == "gvisor"
