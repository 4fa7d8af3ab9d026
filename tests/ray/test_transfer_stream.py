"""Transfers are one archive end to end: the actor passes an upload's tar to the daemon from a file, never
unpacking it nor holding it in memory, and caps a download's archive as it copies it."""

from __future__ import annotations

import io
import tarfile
import threading
from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.backends.transfer import cap_archive, truncation_marker
from harbor_ray.sandbox import Sandbox

pytestmark = [pytest.mark.docker, pytest.mark.ray]


def _anon_rss_mb(pid: int) -> int:
    # Anonymous memory only: the pieces arrive through Ray's shared-memory object store, whose mapped pages
    # count in RSS (and its peak) without being the actor's own.
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) // 1024
    msg = "no RssAnon"
    raise AssertionError(msg)


class _Peak:
    """The highest anonymous RSS of a process seen while the block runs, sampled from a thread."""

    def __init__(self, pid: int) -> None:
        self.pid, self.mb, self._done = pid, _anon_rss_mb(pid), threading.Event()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.mb = max(self.mb, _anon_rss_mb(self.pid))

    def __enter__(self) -> _Peak:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.mb = max(self.mb, _anon_rss_mb(self.pid))


async def test_a_large_upload_never_sits_whole_in_the_actors_memory(ray_local, run_label, tmp_path: Path) -> None:
    size = 160 << 20
    blob = tmp_path / "zeros.bin"
    with blob.open("wb") as f:
        f.truncate(size)  # sparse here; the archive still carries every byte
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.5, memory_mb=256, ttl_s=600)
    sandbox = await Sandbox.create(DockerBackendConfig(), spec)
    try:
        (tmp_path / "small").write_bytes(b"x")
        await sandbox.upload(tmp_path / "small", "/tmp/small")  # the transfer code paths are loaded
        pid = (await sandbox.actor.info.remote())["pid"]
        before = _anon_rss_mb(pid)
        with _Peak(pid) as peak:
            await sandbox.upload(blob, "/tmp/zeros.bin")
        grown = peak.mb - before
        assert (await sandbox.exec("wc -c < /tmp/zeros.bin")).stdout.strip() == str(size)
        assert grown < 64, f"the actor's anonymous memory grew {grown} MB during a {size >> 20} MB upload"
    finally:
        await sandbox.stop()


@pytest.mark.unit
def test_capping_an_archive_keeps_the_first_files_by_name_and_the_tails_of_the_rest(tmp_path: Path) -> None:
    tree = tmp_path / "agent"
    (tree / "sub").mkdir(parents=True)
    (tree / "b.txt").write_bytes(b"b" * 3000)
    (tree / "a.txt").write_bytes(b"a" * 5000)
    (tree / "sub" / "c.txt").write_bytes(b"c" * 4000)
    (tree / "link").symlink_to("a.txt")
    limit = 6000
    src = io.BytesIO()
    with tarfile.open(fileobj=src, mode="w") as tar:
        for p in [tree, *sorted(tree.rglob("*"), reverse=True)]:  # files not in name order: the cap must sort
            tar.add(str(p), arcname=str(p.relative_to(tmp_path)), recursive=False)
    src.seek(0)
    out = io.BytesIO()
    assert cap_archive(src, limit, out) == 2000 + 4000
    out.seek(0)

    def contents(tar: tarfile.TarFile) -> dict[str, bytes | str]:
        got: dict[str, bytes | str] = {}
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isreg() else None
            got[m.name] = f.read() if f else m.linkname
        return got

    with tarfile.open(fileobj=out) as capped:
        got = contents(capped)
    assert set(got) == {"agent", "agent/a.txt", "agent/b.txt", "agent/sub", "agent/sub/c.txt", "agent/link"}
    assert got["agent/link"] == "a.txt"
    assert got["agent/a.txt"] == b"a" * 5000  # name order: a, b, sub/c
    assert got["agent/b.txt"] == truncation_marker(limit, 2000) + b"b" * 1000
    assert got["agent/sub/c.txt"] == truncation_marker(limit, 4000)
