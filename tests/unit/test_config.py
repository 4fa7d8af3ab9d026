"""Config loading: the Hydra tree, plain YAML, the seed's runtime_info layout, and bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config, load_config
from harbor_ray.errors import ConfigError

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_defaults_compose_to_local_docker() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert isinstance(cfg.backend, DockerBackendConfig)
    assert cfg.backend.kind == "docker"
    assert cfg.backend.host == ""
    assert cfg.run_label == "harbor-ray"
    assert cfg.sandbox.network is False


@pytest.mark.parametrize("backend", ["docker", "docker_remote", "k8s"])
def test_backend_group_selects_kind(backend: str, tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    extra = [f"backend.tls.cert_path={tmp_path}"] if backend == "docker_remote" else []
    cfg = load_config([f"backend={backend}", *extra])
    assert cfg.backend.kind == backend
    expected = K8sBackendConfig if backend == "k8s" else DockerBackendConfig
    assert isinstance(cfg.backend, expected)


def test_overrides_reach_every_section() -> None:
    cfg = load_config(
        ["backend=k8s", "backend.namespace=rl", "pool.max_sandboxes=64", "sandbox.cpus=2", "run_label=exp-1"]
    )
    assert cfg.backend.namespace == "rl"
    assert cfg.pool.max_sandboxes == 64
    assert cfg.sandbox.cpus == 2.0
    assert cfg.run_label == "exp-1"


def test_seed_layout_local_docker() -> None:
    cfg = load_config([], str(ROOT / "conf/examples/seed_docker.yaml"))
    assert cfg.backend.kind == "docker"
    assert cfg.backend.host == ""
    assert cfg.agent.name == "oracle"
    assert cfg.force_build is True


def test_seed_layout_remote_docker(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    path = write(
        tmp_path,
        """
        runtime_info:
          input:
            harbor_agent:
              environment_import_path: harbor_patch.environments.remote_docker:RemoteDockerEnvironment
              agent_name: claude-code
              environment_force_build: true
              docker_host: "tcp://10.1.2.3:2376"
            k8s:
              kubeconfig: /path/to/kubeconfig.yaml
              namespace: default
        """,
    )
    cfg = load_config([f"backend.tls.cert_path={tmp_path}"], path)
    # The seed's rules: a Docker environment ignores the k8s section.
    assert cfg.backend.kind == "docker_remote"
    assert cfg.backend.host == "tcp://10.1.2.3:2376"
    assert cfg.agent.name == "claude-code"


def test_seed_layout_selects_k8s_when_environment_can() -> None:
    cfg = load_config([], str(ROOT / "conf/examples/seed_k8s.yaml"))
    assert isinstance(cfg.backend, K8sBackendConfig)
    assert cfg.backend.kubeconfig == "/path/to/kubeconfig.yaml"
    assert cfg.backend.namespace == "default"


def test_seed_pod_name_prefix_becomes_run_label(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        runtime_info:
          input:
            harbor_agent: {agent_name: oracle, environment_import_path: "my.k8s_env:K8sEnv"}
            k8s: {kubeconfig: /k.yaml, namespace: rl, pod_name_prefix: swe-rl}
        """,
    )
    cfg = load_config([], path)
    assert cfg.run_label == "swe-rl"
    assert cfg.backend.kind == "k8s"
    assert cfg.backend.namespace == "rl"


def test_plain_yaml_file_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "backend: {kind: docker}\nn_concurrent: 3\ntasks: examples/tasks\n")
    cfg = load_config(["n_concurrent=5"], path)
    assert cfg.n_concurrent == 5
    assert cfg.tasks == ["examples/tasks"]


BAD_OVERRIDES = [
    (["pool.bogus=1"], "pool.bogus"),
    (["sandbox.cpus=abc"], "sandbox.cpus"),
    (["backend=nope"], "backend/nope"),
    (["run_label="], "run_label"),
    (["run_label=*"], "run_label"),
    (["run_label=Has_Upper"], "run_label"),
    (["sandbox.cpus=0"], "sandbox.cpus"),
    (["sandbox.memory_mb=-5"], "sandbox.memory_mb"),
    (["n_concurrent=0"], "n_concurrent"),
    (["pool.max_sandboxes=0"], "pool.max_sandboxes"),
    (["environment_import_path=no_colon"], "environment_import_path"),
    (["backend=docker_remote", "backend.host="], "backend.host"),
    (["backend=docker_remote", "backend.host=tcp://10.0.0.1:2375"], "backend.host"),
    (["backend=docker", "backend.host=10.0.0.1:2376"], "backend.host"),
    (["backend=docker", "backend.host=ssh://me@host"], "backend.host"),
    (["backend=k8s", "backend.start_timeout_s=soon"], "backend.start_timeout_s"),
]


@pytest.mark.parametrize(("overrides", "key"), BAD_OVERRIDES)
def test_bad_overrides_name_the_key(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(overrides)
    message = str(info.value)
    assert key in message
    assert "\n" not in message


BAD_FILES = [
    ("runtime_info: {}\n", "runtime_info.input"),
    ("runtime_info:\n  input:\n    harbor_agent: {agent_nam: oracle}\n", "runtime_info.input.harbor_agent.agent_nam"),
    ("runtime_info:\n  input:\n    harbor_agent: {}\n    k8z: {}\n", "runtime_info.input.k8z"),
    ("runtime_info:\n  input:\n    harbor_agent: {}\n    k8s: {kubeconfig: /k, namespac: x}\n", "namespac"),
    ("runtime_info:\n  input:\n    harbor_agent: []\n", "runtime_info.input.harbor_agent"),
    ("runtime_info:\n  input: {harbor_agent: {}}\nextra: 1\n", "extra"),
    ("backend: {kind: docker, hots: x}\n", "backend.hots"),
    ("backend: {kind: podman}\n", "backend.kind"),
    ("sandbox: {cpus: [1, 2]}\n", "sandbox.cpus"),
    ("- just\n- a list\n", "top level"),
    ("pool: {warm_per_image: -1}\n", "pool.warm_per_image"),
    ("runtime_info:\n  input:\n    harbor_agent: {docker_host: 'tcp://1.2.3.4:2375'}\n", "backend.host"),
]


@pytest.mark.parametrize(("text", "key"), BAD_FILES)
def test_bad_files_name_the_key(text: str, key: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], write(tmp_path, text))
    assert key in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config([], "/nonexistent/harbor_ray.yaml")
