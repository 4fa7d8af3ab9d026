"""`clean` removes our labeled containers and images for one prefix, and nothing else, on the real engine."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.errors import ConfigError
from harbor_ray.ops.clean import clean_images, clean_sandboxes

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.docker


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "harbor_ray", "clean", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


@pytest.fixture
def decoys(docker_client) -> Iterator[list]:
    """Containers/images that look close to ours but are not; the test must leave them, we remove them."""
    made: list = []
    yield made
    for obj in made:
        with contextlib.suppress(docker.errors.NotFound):
            if isinstance(obj, docker.models.images.Image):
                docker_client.api.remove_image(obj.id, force=True)
            else:
                obj.remove(force=True)


def _decoy_container(client, made: list, labels: dict[str, str]):
    c = client.containers.run(BUSYBOX_IMAGE, ["sleep", "300"], detach=True, labels=labels, network_mode="none",
                              name=f"harbor-ray-decoy-{uuid.uuid4().hex[:8]}")  # fmt: skip
    made.append(c)
    return c


def _sandboxes(backend: DockerBackend, label: str, n: int) -> list[str]:
    spec = SandboxSpec(run_label=label, image=BUSYBOX_IMAGE, ttl_s=300)
    return sorted(backend.create(spec, BUSYBOX_IMAGE).name for _ in range(n))


def _exists(client, ref: str) -> bool:
    try:
        client.api.inspect_container(ref)
    except docker.errors.NotFound:
        return False
    return True


def test_clean_sandboxes_removes_only_ours(docker_client, run_label, decoys):
    backend = DockerBackend()
    ours = _sandboxes(backend, run_label, 2)
    other_run = _decoy_container(docker_client, decoys, {L.RUN: f"{run_label}-other", L.KIND: "sandbox"})
    prefix_elsewhere = _decoy_container(docker_client, decoys, {"not-harbor-run": run_label})
    unlabeled = _decoy_container(docker_client, decoys, {})

    assert clean_sandboxes(backend, run_label, dry_run=True) == ours
    assert all(_exists(docker_client, name) for name in ours)  # a dry run removes nothing

    assert clean_sandboxes(backend, run_label) == ours
    assert not any(_exists(docker_client, name) for name in ours)
    for decoy in (other_run, prefix_elsewhere, unlabeled):
        assert _exists(docker_client, decoy.id)
    assert clean_sandboxes(backend, run_label) == []


def test_cli_dry_run_lists_then_clean_removes(docker_client, run_label, decoys):
    ours = _sandboxes(DockerBackend(), run_label, 2)
    decoy = _decoy_container(docker_client, decoys, {L.RUN: f"{run_label}-other"})
    listed = cli("--dry-run", "--prefix", run_label)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines() == [
        *(f"would remove container {name}" for name in ours),
        f"would remove 2 object(s) labeled harbor-run={run_label} (dry run)",
    ]
    assert all(_exists(docker_client, name) for name in ours)
    done = cli(f"run_label={run_label}")  # the prefix defaults to the config's run_label
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == f"removed 2 object(s) labeled harbor-run={run_label}"
    assert not any(_exists(docker_client, name) for name in ours)
    assert _exists(docker_client, decoy.id)


@pytest.mark.parametrize("prefix", ["", "*", "."])
def test_empty_or_wildcard_prefix_is_refused(prefix, docker_client):
    with pytest.raises(ConfigError, match="an empty or wildcard prefix would match other runs"):
        clean_sandboxes(DockerBackend(), prefix)
    with pytest.raises(ConfigError, match="an empty or wildcard prefix"):
        clean_images(docker_client, prefix)
    done = cli("--prefix", prefix)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --prefix: an empty or wildcard prefix would match other runs")


def test_clean_images_removes_only_ours(docker_client, run_label, decoys, tmp_path):
    def context(name: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "Dockerfile").write_text(f"FROM {BUSYBOX_IMAGE}\nRUN echo {run_label}-{name} > /marker\n")
        return d

    ours = DockerBackend().ensure_image(SandboxSpec(run_label=run_label, build_context=str(context("ours"))))
    for name, labels in (("other", {L.RUN: f"{run_label}-other", L.KIND: "image"}), ("unlabeled", {})):
        image, _ = docker_client.images.build(path=str(context(name)), labels=labels, rm=True,
                                              tag=f"harbor-ray-decoy/{run_label}:{name}")  # fmt: skip
        decoys.append(image)

    assert clean_images(docker_client, run_label, dry_run=True) == [ours]
    docker_client.images.get(ours)  # still there
    assert cli("--images", "--dry-run", "--prefix", run_label).stdout.splitlines()[0] == f"would remove image {ours}"

    assert clean_images(docker_client, run_label) == [ours]
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(ours)
    for decoy in decoys:
        docker_client.images.get(decoy.id)  # both decoys remain


def test_base_images_need_the_explicit_prefix(docker_client):
    with pytest.raises(ConfigError, match="pass --prefix base explicitly"):
        clean_images(docker_client, "base", dry_run=True)
    assert BUSYBOX_IMAGE in clean_images(docker_client, "base", dry_run=True, allow_base=True)
    done = cli("--images", "--dry-run", "run_label=base")  # base from the config, not asked for: refused
    assert done.returncode == 2
    assert "pass --prefix base explicitly" in done.stderr


def test_clean_with_no_label_asks_for_one(docker_client):
    done = cli()
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: clean: name the run to clean, e.g. --prefix my-run or run_label=my-run")
    assert done.stdout == ""


def test_clean_orphans_removes_only_sandboxes_of_dead_owners(docker_client, run_label):
    """A sandbox whose owning process has ended here goes; one whose owner (this test) lives stays."""
    backend = DockerBackend()
    ended = subprocess.Popen(["true"])
    dead_owner = L.process_id(ended.pid)
    ended.wait()

    def sandbox(process: str) -> str:
        labels = ((L.ACTOR, "f" * 32), (L.PROCESS, process))
        spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, ttl_s=300, owner="0123456789ab-01000000",
                           labels=labels)  # fmt: skip
        return backend.create(spec, BUSYBOX_IMAGE).name

    orphan, live = sandbox(dead_owner), sandbox(L.process_id())
    try:
        listed = cli("--orphans", "--dry-run", f"run_label={run_label}")
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[0] == f"would remove container {orphan}"
        done = cli("--orphans", f"run_label={run_label}")
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [
            f"removed container {orphan}",
            f"removed 1 object(s) labeled harbor-run={run_label}",
        ]
        assert not _exists(docker_client, orphan)
        assert _exists(docker_client, live)
    finally:
        for handle in backend.list(L.selector(run_label)):
            backend.destroy(handle)
