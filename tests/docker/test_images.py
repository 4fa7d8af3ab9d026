"""Environment images: built once per content hash, reused, rebuilt when the directory changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.images import BUSYBOX_IMAGE, context_hash, env_image_tag
from harbor_ray.errors import ImageBuildError, TaskError

pytestmark = pytest.mark.docker


def make_env(root: Path, marker: str) -> Path:
    env = root / "environment"
    env.mkdir(parents=True, exist_ok=True)
    (env / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nCOPY marker.txt /marker.txt\n")
    (env / "marker.txt").write_text(marker)
    return env


@pytest.fixture
def built_tags(docker_client):
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:  # already gone
            pass


def test_identical_dirs_share_a_tag_and_changes_rebuild(tmp_path: Path) -> None:
    a = make_env(tmp_path / "a", "same")
    b = make_env(tmp_path / "b", "same")
    assert env_image_tag(a) == env_image_tag(b)
    before = context_hash(a)
    (a / "marker.txt").chmod(0o600)
    assert context_hash(a) != before  # modes count
    (a / "marker.txt").write_text("changed")
    assert env_image_tag(a) != env_image_tag(b)


def test_missing_dockerfile_is_a_task_error(tmp_path: Path) -> None:
    with pytest.raises(TaskError, match="Dockerfile: missing"):
        context_hash(tmp_path)


def test_build_once_cache_hit_and_rebuild(tmp_path: Path, run_label: str, docker_client, built_tags) -> None:
    backend = DockerBackend()
    env = make_env(tmp_path / "task", f"v1-{run_label}")
    spec = SandboxSpec(run_label=run_label, build_context=str(env))
    tag = backend.ensure_image(spec)
    built_tags.append(tag)
    image = docker_client.images.get(tag)
    assert image.labels["harbor-run"] == run_label
    assert image.labels["harbor-ray/kind"] == "image"

    assert backend.ensure_image(spec) == tag
    assert docker_client.images.get(tag).id == image.id  # a cache hit, not a rebuild

    forced = backend.ensure_image(SandboxSpec(run_label=run_label, build_context=str(env), force_build=True))
    assert forced == tag
    # the image the forced rebuild replaced is removed, not left dangling
    assert docker_client.images.list(filters={"label": f"harbor-run={run_label}", "dangling": True}) == []

    (env / "marker.txt").write_text(f"v2-{run_label}")
    tag2 = backend.ensure_image(spec)
    built_tags.append(tag2)
    assert tag2 != tag
    handle = backend.create(spec, tag2)
    try:
        assert backend.exec(handle, "cat /marker.txt").stdout == f"v2-{run_label}"
    finally:
        backend.destroy(handle)


def test_failed_build_reports_the_log_tail(tmp_path: Path, run_label: str) -> None:
    env = tmp_path / "environment"
    env.mkdir()
    (env / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nRUN echo about-to-fail && exit 3\n")
    with pytest.raises(ImageBuildError) as info:
        DockerBackend().ensure_image(SandboxSpec(run_label=run_label, build_context=str(env)))
    assert "about-to-fail" in str(info.value)
    assert "returned a non-zero code: 3" in str(info.value)
