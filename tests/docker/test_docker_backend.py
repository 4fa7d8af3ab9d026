"""The Docker backend on the real engine: lifecycle, exec semantics, transfers, limits, labels."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from harbor_ray import labels as L
from harbor_ray.backends.base import SandboxHandle, SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE
from harbor_ray.errors import ExecTimeout, SandboxGone, SandboxStartError, TransferError

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def backend() -> DockerBackend:
    return DockerBackend(output_limit_bytes=64 * 1024)


@pytest.fixture
def sandbox(backend: DockerBackend, run_label: str) -> Iterator[SandboxHandle]:
    spec = SandboxSpec(run_label=run_label, image=BASE_IMAGE, cpus=0.5, memory_mb=256, pids_limit=64, ttl_s=600)
    handle = backend.create(spec, backend.ensure_image(spec))
    yield handle
    backend.destroy(handle)


def test_ping_returns_engine_version(backend: DockerBackend) -> None:
    assert backend.ping()[0].isdigit()


def test_exec_separates_streams_and_exit_code(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    result = backend.exec(sandbox, "echo out; echo err >&2; exit 7")
    assert (result.stdout, result.stderr, result.return_code) == ("out\n", "err\n", 7)
    assert backend.exec(sandbox, ["true"]).return_code == 0


def test_exec_cwd_env_user(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    result = backend.exec(
        sandbox, 'pwd; echo "$GREETING"; id -u', cwd="/tmp", env={"GREETING": "hi there"}, user="nobody"
    )
    assert result.stdout.splitlines() == ["/tmp", "hi there", "65534"]
    # bash semantics for string commands (arrays are not POSIX sh)
    assert backend.exec(sandbox, "a=(x y z); echo ${#a[@]}").stdout == "3\n"


def test_exec_without_bash_falls_back_to_sh(backend: DockerBackend, run_label: str) -> None:
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE)
    handle = backend.create(spec, BUSYBOX_IMAGE)
    try:
        assert backend.exec(handle, "echo $((6 * 7))").stdout == "42\n"
    finally:
        backend.destroy(handle)


def test_exec_timeout_kills_the_process_tree(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    with pytest.raises(ExecTimeout, match="timed out after 1s"):
        backend.exec(sandbox, "sleep 300 & sleep 301; echo never", timeout_s=1)
    left = backend.exec(sandbox, "ps -eo args | grep -c '^sleep 30[01]' || true").stdout.strip()
    assert left == "0"


def test_huge_output_is_capped(backend: DockerBackend, sandbox: SandboxHandle) -> None:
    result = backend.exec(sandbox, "head -c 5000000 /dev/zero | tr '\\0' a; echo done >&2")
    assert result.truncated
    assert result.return_code == 0
    assert result.stdout.startswith("a" * 1000)
    assert len(result.stdout) < 64 * 1024 + 200
    assert "output capped" in result.stdout
    assert result.stderr == "done\n"


def _tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    out = {}
    for path in sorted(root.rglob("*")):
        mode = stat.S_IMODE(path.lstat().st_mode)
        out[str(path.relative_to(root))] = (mode, None if path.is_dir() else path.read_bytes())
    return out


def test_upload_download_directory_round_trip_keeps_modes(
    backend: DockerBackend, sandbox: SandboxHandle, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "deep").mkdir(parents=True)
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(src / "run.sh", 0o755)
    (src / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 100)
    (src / "pkg" / "deep" / "secret.txt").write_text("s3cret")
    os.chmod(src / "pkg" / "deep" / "secret.txt", 0o600)
    os.chmod(src / "pkg" / "deep", 0o750)

    backend.upload(sandbox, str(src), "/work/new/dir")  # parents do not exist yet
    assert backend.exec(sandbox, "/work/new/dir/run.sh").stdout == "ran\n"
    assert backend.exec(sandbox, "stat -c %a /work/new/dir/pkg/deep/secret.txt").stdout.strip() == "600"

    back = tmp_path / "back"
    backend.download(sandbox, "/work/new/dir", str(back))
    assert _tree(back) == _tree(src)


def test_upload_download_single_file(backend: DockerBackend, sandbox: SandboxHandle, tmp_path: Path) -> None:
    f = tmp_path / "note.txt"
    f.write_text("hello\n")
    backend.upload(sandbox, str(f), "/tmp/renamed.txt")
    assert backend.exec(sandbox, "cat /tmp/renamed.txt").stdout == "hello\n"
    backend.exec(sandbox, "echo made-inside > /tmp/inside.txt")
    backend.download(sandbox, "/tmp/inside.txt", str(tmp_path / "x" / "inside.txt"))
    assert (tmp_path / "x" / "inside.txt").read_text() == "made-inside\n"


def test_transfer_errors_are_typed(backend: DockerBackend, sandbox: SandboxHandle, tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="does not exist"):
        backend.download(sandbox, "/no/such/path", str(tmp_path / "x"))
    with pytest.raises(TransferError, match="does not exist"):
        backend.upload(sandbox, str(tmp_path / "missing"), "/tmp/x")


def test_limits_and_hardening_are_applied(backend: DockerBackend, sandbox: SandboxHandle, docker_client) -> None:
    attrs = docker_client.api.inspect_container(sandbox.id)
    host = attrs["HostConfig"]
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["PidsLimit"] == 64
    assert host["CapDrop"] == ["ALL"]
    assert "SYS_ADMIN" not in (host["CapAdd"] or [])
    assert host["Privileged"] is False
    assert "no-new-privileges" in host["SecurityOpt"]
    assert host["NetworkMode"] == "none"
    assert host["AutoRemove"] is True
    # PID 1 (a sleep of the TTL) bounds the sandbox's life even if every process of ours dies
    # (the image's ENTRYPOINT is kept, as Harbor keeps it; busybox has none)
    assert attrs["Config"]["Entrypoint"] is None
    assert attrs["Config"]["Cmd"] == ["sleep", "600"]
    # Limits seen from inside
    assert (
        backend.exec(
            sandbox, "cat /sys/fs/cgroup/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids/pids.max"
        ).stdout.strip()
        == "64"
    )
    assert backend.exec(sandbox, "ls /sys/class/net").stdout.split() == ["lo"]


def test_network_on_when_asked(backend: DockerBackend, run_label: str, docker_client) -> None:
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, network=True)
    handle = backend.create(spec, BUSYBOX_IMAGE)
    try:
        assert docker_client.api.inspect_container(handle.id)["HostConfig"]["NetworkMode"] == "bridge"
        assert "eth0" in backend.exec(handle, "ls /sys/class/net").stdout
    finally:
        backend.destroy(handle)


def test_labels_list_and_destroy(backend: DockerBackend, run_label: str) -> None:
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, pool="p1", owner="job-test", ttl_s=99)
    handles = [backend.create(spec, BUSYBOX_IMAGE) for _ in range(2)]
    listed = backend.list(L.selector(run_label))
    assert {h.id for h in listed} == {h.id for h in handles}
    labels = listed[0].labels
    assert labels[L.RUN] == run_label
    assert labels[L.POOL] == "p1"
    assert labels[L.OWNER] == "job-test"
    assert labels[L.TTL] == "99"
    assert int(labels[L.CREATED]) > 0
    for h in handles:
        backend.destroy(h)
        backend.destroy(h)  # idempotent
    assert backend.list(L.selector(run_label)) == []


def test_exec_in_a_destroyed_sandbox_is_typed(backend: DockerBackend, run_label: str) -> None:
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE)
    handle = backend.create(spec, BUSYBOX_IMAGE)
    backend.destroy(handle)
    with pytest.raises(SandboxGone):
        backend.exec(handle, "true")


def test_missing_image_is_a_start_error_and_leaves_nothing(backend: DockerBackend, run_label: str) -> None:
    spec = SandboxSpec(run_label=run_label, image="harbor-ray/does-not-exist:1")
    with pytest.raises(SandboxStartError, match="nothing can be pulled"):
        backend.ensure_image(spec)
    with pytest.raises(SandboxStartError, match="not on the daemon"):
        backend.create(spec, "harbor-ray/does-not-exist:1")
    assert backend.list(L.selector(run_label)) == []


def test_list_survives_sandboxes_removed_while_listing(backend: DockerBackend, run_label: str) -> None:
    """Other runs' sandboxes come and go on a shared daemon: a listing never fails because one went away.

    (It used to inspect each listed container, and a container removed in between raised NotFound.)
    """
    import threading
    import time

    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, cpus=0.1, memory_mb=32, ttl_s=120)
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            backend.destroy(backend.create(spec, BUSYBOX_IMAGE))

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for w in workers:
        w.start()
    try:
        seen, deadline = 0, time.monotonic() + 8
        while time.monotonic() < deadline:
            handles = backend.list(L.selector(run_label))
            assert all(h.labels[L.RUN] == run_label and h.name.startswith(run_label) for h in handles)
            seen += len(handles)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert seen > 0  # the listing did see the churning sandboxes
