"""`images build` prebuilds each distinct task image once per host on the real engine, reports present images,
failures with their build log's tail, and refuses bad input in one line; nothing it builds is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harbor_ray import labels as L
from harbor_ray.backends.images import BUSYBOX_IMAGE, env_image_tag

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docker

TASK_TOML = '[environment]\nnetwork_mode = "no-network"\n'


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "harbor_ray", "-q", "images", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def make_task(root: Path, name: str, dockerfile: str) -> Path:
    task = root / name
    (task / "environment").mkdir(parents=True)
    (task / "task.toml").write_text(TASK_TOML)
    (task / "instruction.md").write_text("nothing to do\n")
    (task / "tests").mkdir()
    (task / "tests" / "test.sh").write_text("#!/bin/sh\nexit 0\n")
    (task / "environment" / "Dockerfile").write_text(dockerfile)
    return task


@pytest.fixture
def label(run_label: str, docker_client) -> Iterator[str]:
    """The run label the builds carry; every image with it is removed after, and none may remain."""
    yield run_label
    for image in docker_client.images.list(filters={"label": f"{L.RUN}={run_label}"}):
        docker_client.api.remove_image(image.id, force=True)
    assert not docker_client.images.list(filters={"label": f"{L.RUN}={run_label}"})


@pytest.fixture
def tasks(tmp_path: Path, label: str) -> dict[str, Path]:
    """Two tiny tasks, a copy of the first (same content, so the same image), and a broken one; the label in
    each RUN makes the content (so the tag) this test's own."""
    good = f"FROM {BUSYBOX_IMAGE}\nRUN echo {label}-a > /a\n"
    return {
        "a": make_task(tmp_path, "a", good),
        "b": make_task(tmp_path, "b", f"FROM {BUSYBOX_IMAGE}\nRUN echo {label}-b > /b\n"),
        "a-copy": make_task(tmp_path, "a-copy", good),
        "broken": make_task(tmp_path, "broken", f"FROM {BUSYBOX_IMAGE}\nRUN echo broke-{label} && exit 3\n"),
    }


def _tag(task: Path) -> str:
    return env_image_tag(task / "environment")


def test_builds_distinct_images_once_reports_failure_tail_then_present(docker_client, tasks, label) -> None:
    done = cli("build", f"tasks=[{','.join(str(t) for t in tasks.values())}]", f"run_label={label}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "4 task(s), 3 distinct image(s), 1 host(s): local" in done.stdout
    assert "built 2, present 0, failed 1" in done.stdout
    failed = done.stdout.split("FAILED", 1)[1]
    assert _tag(tasks["broken"]) in failed
    assert f"broke-{label}" in failed  # the build's own output: the log tail, not just "failed"
    assert "non-zero code: 3" in failed
    assert _tag(tasks["a"]) == _tag(tasks["a-copy"])
    for name in ("a", "b"):
        image = docker_client.images.get(_tag(tasks[name]))
        assert image.labels[L.RUN] == label
        assert image.labels[L.KIND] == "image"
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(_tag(tasks["broken"]))

    again = cli("build", f"tasks=[{tasks['a']},{tasks['b']},{tasks['a-copy']}]", f"run_label={label}")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "built 0, present 2, failed 0" in again.stdout


def test_every_host_gets_every_image(docker_client, tmp_path: Path, label: str) -> None:
    """Two pool.hosts entries (both this daemon, under two names): each host is given each image."""
    a = make_task(tmp_path, "a", f"FROM {BUSYBOX_IMAGE}\nRUN echo {label}-h1 > /a\n")
    b = make_task(tmp_path, "b", f"FROM {BUSYBOX_IMAGE}\nRUN echo {label}-h2 > /b\n")
    hosts = (
        "pool.hosts=[{name: one, url: 'unix:///var/run/docker.sock'},{name: two, url: 'unix:///var/run/docker.sock'}]"
    )
    done = cli("build", f"tasks=[{a},{b}]", f"run_label={label}", hosts)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 task(s), 2 distinct image(s), 2 host(s): one, two" in done.stdout
    counts = dict(part.split() for part in done.stdout.splitlines()[1].split(", "))
    assert int(counts["built"]) + int(counts["present"]) == 4  # 2 images x 2 hosts, none failed
    assert int(counts["built"]) >= 2
    for task in (a, b):
        assert docker_client.images.get(_tag(task)).labels[L.RUN] == label


@pytest.mark.ray
def test_hosts_per_ray_node_build_through_ray_tasks(docker_client, tmp_path: Path, label: str) -> None:
    """With pool.sandbox_resource there is one host per Ray node offering it; its builds run as Ray tasks."""
    task = make_task(tmp_path, "r", f"FROM {BUSYBOX_IMAGE}\nRUN echo {label}-ray > /r\n")
    done = cli("build", f"tasks=[{task}]", f"run_label={label}", "pool.sandbox_resource=sandbox_slot", "ray.num_cpus=2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 distinct image(s), 1 host(s): node-" in done.stdout
    assert "built 1, present 0, failed 0" in done.stdout
    assert docker_client.images.get(_tag(task)).labels[L.RUN] == label


@pytest.mark.parametrize(("arg", "field"), [("tasks=[]", "tasks=[]"), ("tasks=[/no/such/dir]", "tasks=/no/such/dir")])
def test_bad_input_is_one_line_exit_2(arg: str, field: str) -> None:
    done = cli("build", arg)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {field}:")


def test_images_without_subcommand_still_builds_base_images() -> None:
    done = cli("--only", BUSYBOX_IMAGE)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "base images present"
