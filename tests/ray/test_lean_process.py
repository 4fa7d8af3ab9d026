"""A sandbox actor's process makes its serialization context without Ray's optional serializers (no pyarrow,
numpy, pydantic or starlette imported for it), still serves every call, and every other process keeps Ray's
full set."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import ray

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.lean_process import OPTIONAL_SERIALIZER_PACKAGES
from harbor_ray.sandbox import Sandbox

pytestmark = [pytest.mark.docker, pytest.mark.ray]


def _probes():  # defined here, so Ray ships them by value (the workers cannot import the tests package)
    def loaded(_actor: object = None) -> list[str]:
        import harbor_ray.sandbox  # noqa: F401  # the module that trims its own actor's process

        ray.put(None)  # a serialization: the process's context exists from here on
        return sorted(name for name in OPTIONAL_SERIALIZER_PACKAGES if name in sys.modules)

    class OtherActor:
        """Someone else's actor whose process imports harbor_ray.sandbox first: it keeps Ray's serializers."""

        def loaded(self) -> list[str]:
            return loaded()

    return loaded, OtherActor


def test_the_optional_packages_are_installed() -> None:
    # Otherwise the tests below would pass for the wrong reason.
    assert all(importlib.util.find_spec(name) for name in OPTIONAL_SERIALIZER_PACKAGES)


async def test_a_sandbox_actor_serves_every_call_without_the_optional_serializers(
    ray_local, run_label, tmp_path: Path
) -> None:
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600)
    loaded, _ = _probes()
    sandbox = await Sandbox.create(DockerBackendConfig(), spec)
    try:
        (tmp_path / "in.txt").write_text("payload")
        await sandbox.upload(tmp_path / "in.txt", "/tmp/in.txt")
        result = await sandbox.exec("cat /tmp/in.txt")
        assert result.stdout == "payload"
        await sandbox.download("/tmp/in.txt", tmp_path / "out.txt")
        assert (tmp_path / "out.txt").read_text() == "payload"
        assert await sandbox.actor.__ray_call__.remote(loaded) == []

        def import_later(_actor: object) -> str:
            import pydantic  # hidden only while the context was made: a later import still works

            return str(pydantic.VERSION)

        assert await sandbox.actor.__ray_call__.remote(import_later)
    finally:
        await sandbox.stop()


def test_other_processes_keep_rays_serializers(ray_local) -> None:
    loaded, other_actor = _probes()
    other = ray.remote(num_cpus=0)(other_actor).remote()
    try:
        assert ray.get(other.loaded.remote()) == sorted(OPTIONAL_SERIALIZER_PACKAGES)
    finally:
        ray.kill(other)
    assert ray.get(ray.remote(num_cpus=0)(loaded).remote()) == sorted(OPTIONAL_SERIALIZER_PACKAGES)
