"""Config loading: the Hydra tree, plain YAML, the seed's runtime_info layout, and bad input."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest
import yaml

from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.kubernetes.config import K8sBackendConfig
from harbor_ray.config import Config, load_config, load_config_explained
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


@pytest.mark.parametrize("backend", ["docker", "docker_remote", "k8s"])
def test_every_backend_setting_is_an_override(backend: str, tmp_path: Path) -> None:
    """Each field of the backend's settings is in its conf/backend/<kind>.yaml: Hydra refuses an override of a
    key the group's file lacks (`backend.holder_stock=2` once was "unknown key")."""
    import dataclasses

    from harbor_ray.backends import entry

    cls = entry(backend).config_class
    layout = yaml.safe_load((ROOT / "conf" / "backend" / f"{backend}.yaml").read_text())
    assert sorted(f.name for f in dataclasses.fields(cls) if f.name not in layout) == []
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    base = [f"backend={backend}", *([f"backend.tls.cert_path={tmp_path}"] if backend == "docker_remote" else [])]
    assert load_config([*base, "backend.build_timeout_s=60"]).backend.build_timeout_s == 60
    if backend != "k8s":
        assert load_config([*base, "backend.holder_stock=2"]).backend.holder_stock == 2
        assert load_config(base).backend.holder_stock is None  # the daemon's slots
        # command lines written when a key was missing from conf/ (appended with +) keep working
        cfg = load_config([*base, f"+backend.tls.cert_path={tmp_path}", "+backend.holder_stock=3"])
        assert (cfg.backend.tls.cert_path, cfg.backend.holder_stock) == (str(tmp_path), 3)


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


# -- the seed's whole run config (conf/examples/seed_full.yaml, a copy of LegoFlow subblock/rl/config.yaml) --

SEED_FULL = ROOT / "conf/examples/seed_full.yaml"


def test_seed_full_file_maps_every_owned_key(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="harbor_ray.config.seed"):
        cfg, why = load_config_explained([], str(SEED_FULL))
    assert isinstance(cfg.backend, K8sBackendConfig)
    assert "KubernetesEnvironment is a Kubernetes environment" in why
    assert cfg.run_label == "swe-lego-live-rl"
    assert (cfg.backend.kubeconfig, cfg.backend.namespace, cfg.backend.start_timeout_s) == (
        "kubeconfig.yaml",
        "default",
        1200,
    )
    assert cfg.pool.start_timeout_s == 1200
    assert cfg.sandbox.ttl_s == 6000  # pod_active_deadline_seconds -> activeDeadlineSeconds
    assert cfg.agent.name == "claude-code"
    assert cfg.agent.import_path == "harbor_patch.agents.image_mounted_claude_code:ClaudeCode"
    assert cfg.agent.kwargs == {"max_iterations": 100, "temperature": 1.0, "disable_tool_calls": False}
    # runtime_image / runtime_mount_path / runtime_image_subpath: the seed's own layout, not a recipe (docs/config.md)
    assert cfg.agent.runtime == ""
    assert (cfg.agent.override_timeout_s, cfg.agent.max_timeout_s) == (2400, 2400)
    assert (cfg.max_retries, cfg.verifier_enabled, cfg.force_build, cfg.delete) == (2, True, False, True)
    assert cfg.sandbox.cpus == 1.0
    assert (cfg.n_concurrent, cfg.pool.max_sandboxes) == (16, 16)
    assert (cfg.tail_kill_target, cfg.tail_kill_grace_s, cfg.tail_kill_min_tasks) == (1.0, 180, 32)
    notes = [r.getMessage() for r in caplog.records if "not used by harbor_ray" in r.getMessage()]
    assert len(notes) == 1
    for name in ("meta_info", "input.vllm", "input.training", "input.algorithm", "input.credentials"):
        assert name in notes[0]
    assert "<wandb-api-key>" not in caplog.text
    assert "<anthropic-api-key>" not in caplog.text


def test_seed_secrets_are_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harbor_ray.ops import show

    text = (
        SEED_FULL.read_text()
        .replace('"<wandb-api-key>"', "wandb-SECRET-1")
        .replace('"<anthropic-api-key>"', "sk-ant-SECRET-2")
    )
    path = tmp_path / "seed.yaml"
    path.write_text(text)
    assert show.main(["--config", str(path)]) == 0
    out = capsys.readouterr()
    assert "SECRET" not in out.out + out.err
    bad = text.replace("num_workers: 16", "num_workers: many")
    path.write_text(bad)
    with pytest.raises(ConfigError) as info:
        load_config([], str(path))
    assert str(info.value).startswith("runtime_info.input.harbor_runtime.num_workers='many': must be an integer")
    assert "SECRET" not in str(info.value)


SEED_ERRORS = [
    ("harbor_runtime: {num_workers: 0}", "runtime_info.input.harbor_runtime.num_workers (as n_concurrent=0"),
    ("harbor_agent: {max_retries: 1.5}", "runtime_info.input.harbor_agent.max_retries=1.5: must be an integer"),
    ("harbor_agent: {verifier_enabled: 'yes'}", "runtime_info.input.harbor_agent.verifier_enabled='yes': must be true"),
    ("harbor_runtime: {tail_kill_target: 1.5}", "runtime_info.input.harbor_runtime.tail_kill_target (as"),
    ("k8s: {pod_startup_timeout: soon, kubeconfig: /k}", "runtime_info.input.k8s.pod_startup_timeout='soon'"),
    (
        "harbor_agent: {pod_name_prefix: a}\n    k8s: {pod_name_prefix: b}",
        "runtime_info.input.k8s.pod_name_prefix='b': contradicts harbor_agent.pod_name_prefix='a'",
    ),
    (
        "harbor_agent: {environment_import_path: 'harbor.environments.daytona:DaytonaEnvironment'}",
        "runtime_info.input.harbor_agent.environment_import_path=harbor.environments.daytona",
    ),
    (
        "harbor_agent: {environment_type: modal}",
        "runtime_info.input.harbor_agent.environment_type='modal'",
    ),
    ("harbor_agent: {pod_name_prefix: Bad_Prefix}", "runtime_info.input.harbor_agent.pod_name_prefix (as run_label="),
]


@pytest.mark.parametrize(("section", "starts"), SEED_ERRORS)
def test_seed_errors_name_the_seed_key(section: str, starts: str, tmp_path: Path) -> None:
    path = write(tmp_path, f"runtime_info:\n  input:\n    {section}\n")
    with pytest.raises(ConfigError) as info:
        load_config([], path)
    assert str(info.value).startswith(starts), str(info.value)
    assert "\n" not in str(info.value)


def test_remote_docker_path_with_kubeconfig_and_no_docker_host_is_local_docker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path,
        """
        runtime_info:
          input:
            harbor_agent: {environment_import_path: "harbor_patch.environments.remote_docker:RemoteDockerEnvironment"}
            k8s: {kubeconfig: /path/to/kubeconfig.yaml, namespace: rl, pod_active_deadline_seconds: 77}
        """,
    )
    with caplog.at_level(logging.INFO, logger="harbor_ray.config.seed"):
        cfg, why = load_config_explained([], path)
    assert (cfg.backend.kind, cfg.backend.host) == ("docker", "")
    assert cfg.sandbox.ttl_s == 3600  # the k8s section is ignored whole
    assert "the k8s section is ignored" in why
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend docker:")]
    assert "KubernetesEnvironment to run on Kubernetes" in line


def test_newest_seed_variant_remote_docker_on_2375_is_refused_by_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        runtime_info:
          input:
            harbor_agent:
              environment_import_path: harbor_patch.environments.remote_docker:RemoteDockerEnvironment
              docker_host: "tcp://192.0.2.7:2375"
              environment_override_memory_mb: 8192
            k8s: {kubeconfig: /k.yaml}
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config([], path)
    assert str(info.value).startswith("runtime_info.input.harbor_agent.docker_host (as backend.host")
    cfg = load_config(["backend.allow_insecure=true"], path)
    assert (cfg.backend.kind, cfg.sandbox.memory_mb) == ("docker_remote", 8192)


def _doc_snippets() -> list[str]:
    text = (ROOT / "docs/config.md").read_text()
    return [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]


@pytest.mark.parametrize("index", range(2))
def test_docs_snippets_load(index: int, tmp_path: Path) -> None:
    snippets = _doc_snippets()
    assert len(snippets) == 2
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "snippet.yaml"
    path.write_text(snippets[index])
    cfg, why = load_config_explained([f"backend.tls.cert_path={tmp_path}"] if index == 0 else [], str(path))
    if index == 0:
        assert (cfg.backend.kind, cfg.backend.host, cfg.agent.name) == (
            "docker_remote",
            "tcp://10.0.0.5:2376",
            "claude-code",
        )
        assert "RemoteDockerEnvironment is a Docker environment" in why
    else:
        assert (cfg.backend.kind, cfg.backend.namespace, cfg.run_label) == ("k8s", "rl", "swe-rl")
        assert (cfg.n_concurrent, cfg.tail_kill_target, cfg.tail_kill_grace_s) == (32, 0.95, 180)


# -- issue 13 item 9: bad input, one clear line --


@pytest.mark.parametrize(
    ("override", "starts"),
    [
        ("run_label=Bad!", "run_label='Bad!': use 1-40 lowercase letters"),
        ("run_label=a b", "run_label='a b': use 1-40 lowercase letters"),
        ("verifier_timeout_s=-5", "verifier_timeout_s=-5.0: must be 0 or more"),
        ("agent.max_timeout_s=-1", "agent.max_timeout_s=-1.0: must be 0 or more"),
        ("tail_kill_target=0", "tail_kill_target=0.0: must be greater than 0"),
        ("max_retries=-1", "max_retries=-1: must be 0 or more"),
        ("sandbox.gpus=-1", "sandbox.gpus=-1: must be 0 or more"),
    ],
)
def test_bad_values_are_one_line(override: str, starts: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([override])
    assert str(info.value).startswith(starts), str(info.value)
    assert "Lexer" not in str(info.value)
    assert "\n" not in str(info.value)


def test_new_keys_are_overrides() -> None:
    cfg = load_config(["max_retries=2", "tail_kill_target=0.9", "agent.max_timeout_s=30", "sandbox.storage_mb=100"])
    assert (cfg.max_retries, cfg.tail_kill_target, cfg.agent.max_timeout_s, cfg.sandbox.storage_mb) == (2, 0.9, 30, 100)


@pytest.mark.parametrize(
    ("text", "says"),
    [("just a string\n", "holds a single string"), ("42\n", "holds a single number"), ("", "is empty")],
)
def test_scalar_yaml_file_is_reported_as_such(text: str, says: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], write(tmp_path, text))
    assert says in str(info.value)
    assert "unknown key" not in str(info.value)


def test_dryrun_first_line_says_why(tmp_path: Path) -> None:
    from harbor_ray.ops.dryrun.report import Report

    _, why = load_config_explained(["backend=k8s"])
    assert why == "backend=k8s from the overrides"
    line = Report("k8s", "x", "r", reason=why).render().splitlines()[0]
    assert line == "dryrun: backend k8s at x (run_label r); chosen because backend=k8s from the overrides"
