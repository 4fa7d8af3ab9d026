"""Environment images: built once per content hash, reused, rebuilt when the directory changes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.images import BUSYBOX_IMAGE, context_hash, context_paths, env_image_tag
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


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    done = subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _repo_env(root: Path) -> Path:
    """An environment whose Dockerfile copies itself, a git repository (as SWE-style tasks carry theirs)."""
    env = root / "environment"
    env.mkdir(parents=True)
    (env / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nCOPY . /ctx\n")
    (env / "app.py").write_text("print('v1')\n")
    (env / "__pycache__").mkdir()
    (env / "__pycache__" / "app.cpython-312.pyc").write_bytes(b"\x00pyc")
    _git(env, "init", "-q")
    _git(env, "add", "app.py", "Dockerfile")
    _git(env, "commit", "-qm", "one")
    return env


def test_the_hash_covers_what_docker_build_sends_git_history_included(tmp_path: Path) -> None:
    env = _repo_env(tmp_path)
    paths = context_paths(env)
    assert {"Dockerfile", "app.py", "__pycache__/app.cpython-312.pyc", ".git/HEAD"} <= set(paths)
    before = context_hash(env)
    _git(env, "commit", "-q", "--allow-empty", "-m", "the fix, later")  # the tree is the same, the history not
    assert context_hash(env) != before
    (env / ".dockerignore").write_text("# history stays out of the image\n.git\n__pycache__\n")
    ignored = context_hash(env)
    assert ".git/HEAD" not in context_paths(env)
    _git(env, "commit", "-q", "--allow-empty", "-m", "another")
    (env / "__pycache__" / "app.cpython-312.pyc").write_bytes(b"\x00changed")
    assert context_hash(env) == ignored  # what is not sent does not count


def test_a_new_commit_is_a_new_image_holding_exactly_the_hashed_paths(
    tmp_path: Path, run_label: str, docker_client, built_tags
) -> None:
    backend = DockerBackend()
    env = _repo_env(tmp_path)
    spec = SandboxSpec(run_label=run_label, build_context=str(env))
    first = backend.ensure_image(spec)
    built_tags.append(first)
    labels = {"harbor-run": run_label}
    listed = docker_client.containers.run(first, ["find", "/ctx"], remove=True, network_mode="none", labels=labels)
    in_image = {line.removeprefix("/ctx/") for line in listed.decode().split() if line != "/ctx"}
    assert in_image == set(context_paths(env))  # the key covers the image's context, no more, no less
    _git(env, "commit", "-q", "--allow-empty", "-m", "the fix, later")
    head = _git(env, "rev-parse", "HEAD")
    second = backend.ensure_image(spec)
    built_tags.append(second)
    assert second != first  # before: .git was not hashed, the stale image (old history) was reused
    ref = docker_client.containers.run(
        second, ["cat", "/ctx/.git/refs/heads/main"], remove=True, network_mode="none", labels=labels
    )
    assert ref.decode().strip() == head


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
