"""The limits every sandbox actor applies: `sandbox.exec_timeout_s` bounds an exec given no timeout, and
`sandbox.download_limit_bytes` caps a download (a file keeps its tail after a marker), on the real engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.backends.transfer import truncation_marker
from harbor_ray.config import load_config
from harbor_ray.errors import ConfigError, ExecTimeout
from harbor_ray.sandbox import Sandbox, SandboxLimits

pytestmark = [pytest.mark.docker, pytest.mark.ray]

CFG = DockerBackendConfig()


def spec(run_label: str) -> SandboxSpec:
    return SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.2, memory_mb=64, ttl_s=600)


async def test_an_exec_without_a_timeout_ends_at_exec_timeout_s(ray_local, run_label) -> None:
    sandbox = await Sandbox.create(CFG, spec(run_label), limits=SandboxLimits(exec_timeout_s=1.5))
    try:
        with pytest.raises(ExecTimeout):
            await sandbox.exec("sleep 120")
        assert "sleep 120" not in (await sandbox.exec("ps -o args")).stdout  # the command was ended, not left
        assert (await sandbox.exec("sleep 2; echo done", timeout_s=30)).stdout == "done\n"  # a caller's own bound wins
    finally:
        await sandbox.stop()


async def test_a_download_over_the_limit_keeps_each_files_tail_after_a_marker(
    ray_local, run_label, tmp_path: Path
) -> None:
    limit = 10_000
    sandbox = await Sandbox.create(CFG, spec(run_label), limits=SandboxLimits(download_limit_bytes=limit))
    try:
        await sandbox.exec("mkdir -p /logs/agent && seq 1 200000 > /logs/agent/log.txt && echo small > /logs/agent/z")
        big = int((await sandbox.exec("wc -c < /logs/agent/log.txt")).stdout)
        await sandbox.download("/logs/agent/log.txt", tmp_path / "log.txt")
        data = (tmp_path / "log.txt").read_bytes()
        marker = truncation_marker(limit, big - limit)
        assert data.startswith(marker)
        assert data.endswith(b"199999\n200000\n")
        assert len(data) == limit + len(marker)

        await sandbox.download("/logs/agent", tmp_path / "agent")  # a directory: the budget spans its files
        assert (tmp_path / "agent" / "log.txt").read_bytes() == data
        assert (tmp_path / "agent" / "z").read_bytes() == truncation_marker(limit, 6)  # nothing left for it

        await sandbox.exec("echo small > /tmp/s")
        await sandbox.download("/tmp/s", tmp_path / "s")
        assert (tmp_path / "s").read_text() == "small\n"  # under the limit: untouched
    finally:
        await sandbox.stop()


@pytest.mark.unit
def test_download_limit_must_be_positive() -> None:
    assert load_config([]).sandbox.download_limit_bytes == SandboxLimits().download_limit_bytes
    with pytest.raises(ConfigError, match=r"sandbox\.download_limit_bytes"):
        load_config(["sandbox.download_limit_bytes=0"])


async def test_an_upload_larger_than_one_piece_arrives_whole(ray_local, run_label, tmp_path: Path) -> None:
    """Uploads cross Ray in 4 MiB pieces: a 9 MiB file (three pieces) arrives byte for byte."""
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(9 << 20))
    sandbox = await Sandbox.create(CFG, spec(run_label), limits=SandboxLimits(download_limit_bytes=20 << 20))
    try:
        await sandbox.upload(blob, "/work/in/blob.bin")
        remote = (await sandbox.exec("sha256sum /work/in/blob.bin")).stdout.split()[0]
        assert remote == hashlib.sha256(blob.read_bytes()).hexdigest()
        await sandbox.download("/work/in/blob.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == blob.read_bytes()
    finally:
        await sandbox.stop()
