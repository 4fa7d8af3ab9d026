"""Against the test kube-apiserver: the seed system's whole run config (conf/examples/seed_full.yaml) under
`dryrun --config` selects Kubernetes, labels with the seed's pod_name_prefix, says why in its first line and never
prints a secret; and a pod keeps the image's USER, WORKDIR and ENTRYPOINT as Harbor's Docker environment does,
with the task's limits capped by the config."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.kubernetes.backend import KubernetesBackend
from harbor_ray.config import load_config
from harbor_ray.harbor.spec import task_spec

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.k8s, pytest.mark.docker]
PARITY_TASK = ROOT / "tests/harbor/data/user-workdir"


def test_seed_full_config_selects_kubernetes(k8s_cluster, tmp_path: Path) -> None:
    text = (ROOT / "conf/examples/seed_full.yaml").read_text()
    assert "kubeconfig: kubeconfig.yaml" in text
    assert "namespace: default" in text
    text = text.replace("kubeconfig: kubeconfig.yaml", f"kubeconfig: {k8s_cluster.kubeconfig}")
    text = text.replace("      namespace: default\n", f"      namespace: {k8s_cluster.namespace}\n", 1)
    text = text.replace('"<anthropic-api-key>"', "sk-secret-never-printed")
    config = tmp_path / "config.yaml"
    config.write_text(text)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "harbor_ray", "dryrun", "--config", str(config)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    first = done.stdout.splitlines()[0]
    assert first.startswith("dryrun: backend k8s at "), done.stdout + done.stderr
    assert "(run_label swe-lego-live-rl)" in first
    assert "chosen because environment_import_path harbor_patch.environments.kubernetes" in first
    assert "✓ k8s namespace" in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert "sk-secret-never-printed" not in done.stdout + done.stderr
    [note] = [line for line in done.stderr.splitlines() if "not used by harbor_ray" in line]
    assert "input.credentials" in note
    assert "input.vllm" in note


def test_pod_keeps_the_images_user_workdir_entrypoint_and_caps_limits(k8s_cluster, run_label, tmp_path) -> None:
    task = tmp_path / "greedy"
    shutil.copytree(PARITY_TASK, task)
    toml = (task / "task.toml").read_text().replace("memory_mb = 512", "memory_mb = 65536")
    (task / "task.toml").write_text(toml)
    cfg = load_config([f"run_label={run_label}", "sandbox.memory_mb=256", "sandbox.ttl_s=600"])
    spec = task_spec(cfg, task)
    built = DockerBackend(cfg.backend).ensure_image(spec)  # the test kubelet runs this engine's images
    spec = dataclasses.replace(spec, image=built, build_context=None)
    backend = KubernetesBackend(k8s_cluster.config())
    handle = backend.create(spec, backend.ensure_image(spec))
    try:
        [pod] = k8s_cluster.pods(f"harbor-run={run_label}", k8s_cluster.namespace)
        c = pod["spec"]["containers"][0]
        assert "workingDir" not in c
        assert "command" not in c
        assert c["args"] == ["sleep", "600"]
        assert c["resources"]["limits"]["memory"] == "256Mi"  # not the 64 GiB the task asked for
        assert {"name": "TASK_VAR", "value": "from-task"} in c["env"]

        def out(cmd: str) -> str:
            return backend.exec(handle, cmd).stdout.strip()

        assert (out("id -un"), out("pwd")) == ("agent", "/home/agent/work")
        assert out("cat /tmp/entrypoint-ran") == "ran as agent"
    finally:
        backend.destroy(handle)
        backend.close()
