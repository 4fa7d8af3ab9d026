"""A Harbor oracle trial end to end with backend=k8s: Harbor's own Trial, the pool, a pod per trial."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials

pytestmark = [pytest.mark.k8s, pytest.mark.harbor, pytest.mark.ray, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ray_session():
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


async def test_oracle_and_nop_trials_on_pods(ray_session, k8s_cluster, run_label: str, tmp_path: Path) -> None:
    k8s = ["backend=k8s", f"backend.kubeconfig={k8s_cluster.kubeconfig}", f"backend.namespace={k8s_cluster.namespace}",
           "backend.build_with_docker=true"]  # fmt: skip
    tasks = f"tasks=[{ROOT}/examples/tasks/hello-file,{ROOT}/examples/tasks/word-stats]"
    common = [*k8s, tasks, f"run_label={run_label}", f"jobs_dir={tmp_path}"]
    oracle = await run_trials(load_config([*common, "agent=oracle", "job_name=oracle"]))
    assert {r.task: r.reward for r in oracle} == {"hello-file": 1.0, "word-stats": 1.0}
    assert all(r.error is None and r.sandbox.startswith(f"{run_label}-") for r in oracle)
    stats = next(r for r in oracle if r.task == "word-stats")
    assert stats.rewards == {"lines": 1.0, "words": 1.0, "longest_word": 1.0, "reward": 1.0}

    nop = await run_trials(load_config([*common, "agent=nop", "job_name=nop"]))
    assert {r.task: r.reward for r in nop} == {"hello-file": 0.0, "word-stats": 0.0}
    lines = (tmp_path / "oracle" / "results.jsonl").read_text().splitlines()
    assert {json.loads(line)["task"] for line in lines} == {"hello-file", "word-stats"}


def test_without_an_image_source_the_error_says_what_to_provide(k8s_cluster, run_label: str) -> None:
    from harbor_ray.backends import make_backend
    from harbor_ray.errors import ConfigError
    from harbor_ray.harbor.spec import task_spec

    cfg = load_config(["backend=k8s", f"backend.kubeconfig={k8s_cluster.kubeconfig}", f"run_label={run_label}"])
    spec = task_spec(cfg, ROOT / "examples/tasks/hello-file")
    with pytest.raises(ConfigError, match="docker_image in the task's task.toml, backend.image_registry"):
        make_backend(cfg.backend).ensure_image(spec)
