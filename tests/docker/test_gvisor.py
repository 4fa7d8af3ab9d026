"""Sandboxes under gVisor: `sandbox.runtime=runsc` on a Docker daemon that registers Debian's runsc.

The daemon is one of the tests' own (support.gvisor; the machine's daemon is shared and never reconfigured). The
sandbox's kernel says which runtime it runs on: gVisor's dmesg starts with "Starting gVisor" and its uname is
4.4.0, while a default (runc) sandbox on the same daemon sees this machine's kernel and cannot read its log.
Harbor's own Trial under gVisor on a test host is tests/hosts/test_gvisor.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.dockerd import copy_images
from support.git_task import make_task
from support.gvisor import GVISOR_BANNER, GVISOR_UNAME, GvisorDockerd

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.docker.config import DockerBackendConfig
from harbor_ray.backends.images import BASE_IMAGE, BUSYBOX_IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gvisor_daemon() -> Iterator[GvisorDockerd]:
    bridge = _docker0_index()
    daemon = GvisorDockerd()
    try:
        daemon.start([BASE_IMAGE, BUSYBOX_IMAGE])
        # A dockerd with --bridge=none deletes the docker0 it sees: in the root namespace, the machine's own.
        assert _docker0_index() == bridge, "the test daemon took the machine's docker0 away"
        yield daemon
    finally:
        daemon.remove()
    assert not daemon.root.exists(), f"{daemon.root} left behind"
    assert not Path(f"/var/run/netns/{daemon.own_ns}").exists(), f"namespace {daemon.own_ns} left behind"
    assert _docker0_index() == bridge, "the machine's docker0 is gone after the test daemon"


def _docker0_index() -> str:
    return Path("/sys/class/net/docker0/ifindex").read_text().strip()


def ours(daemon: GvisorDockerd, run_label: str) -> list[str]:
    return [c.name for c in daemon.client().containers.list(all=True, filters={"label": f"harbor-run={run_label}"})]


def test_the_sandbox_sees_gvisors_kernel(gvisor_daemon: GvisorDockerd, run_label: str, tmp_path: Path) -> None:
    backend = DockerBackend(DockerBackendConfig(host=gvisor_daemon.url))
    assert "runsc" in backend.runtimes()
    seen = {}
    for runtime in ("runsc", ""):
        spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, memory_mb=256, ttl_s=120, runtime=runtime)
        handle = backend.create(spec, BUSYBOX_IMAGE)
        try:
            inspected = backend.client.api.inspect_container(handle.id)["HostConfig"]
            assert inspected["Runtime"] == (runtime or "runc")
            dmesg = backend.exec(handle, "dmesg 2>&1 | head -3")
            seen[runtime or "runc"] = (backend.exec(handle, ["uname", "-r"]).stdout.strip(), dmesg.stdout)
            # uploads and downloads go through the daemon, outside gVisor: both ways are seen
            (tmp_path / "up.txt").write_text("from outside\n")
            backend.upload(handle, str(tmp_path / "up.txt"), "/work/up.txt")
            assert backend.exec(handle, ["cat", "/work/up.txt"]).stdout == "from outside\n"
            backend.exec(handle, "echo from inside > /work/down.txt")
            backend.download(handle, "/work/down.txt", str(tmp_path / "down.txt"))
            assert (tmp_path / "down.txt").read_text() == "from inside\n"
        finally:
            backend.destroy(handle)
    assert seen["runsc"][0] == GVISOR_UNAME
    assert GVISOR_BANNER in seen["runsc"][1]
    assert seen["runc"][0] == os.uname().release
    assert GVISOR_BANNER not in seen["runc"][1]
    assert ours(gvisor_daemon, run_label) == []


def test_dryrun_checks_and_probes_under_the_runtime(gvisor_daemon: GvisorDockerd, run_label: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST")}
    done = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "dryrun", f"run_label={run_label}", f"backend.host={gvisor_daemon.url}",
         "sandbox.runtime=runsc", "backend.slots=1000", "sandbox.memory_mb=1024"],
        cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    out = done.stdout
    assert f"✓ sandbox runtime: runsc registered at {gvisor_daemon.url} (" in out, out + done.stderr
    assert "✓ probe container: created, exec'd and removed" in out, out
    assert "runtime=runsc" in out  # the hardening line reads the probe's HostConfig
    assert ours(gvisor_daemon, run_label) == []


def test_dryrun_checks_every_daemon_of_pool_hosts(gvisor_daemon: GvisorDockerd, run_label: str, tmp_path: Path) -> None:
    config = tmp_path / "two-daemons.yaml"
    config.write_text(
        f"run_label: {run_label}\n"
        f"backend: {{kind: docker, host: '{gvisor_daemon.url}', slots: 1000}}\n"
        "sandbox: {runtime: runsc, memory_mb: 1024}\n"
        f"pool: {{hosts: [{{name: g, url: '{gvisor_daemon.url}'}}, {{name: main, url: 'unix:///var/run/docker.sock'}}]}}\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST")}
    done = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "dryrun", "--config", str(config)],
        cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = [x.strip() for x in done.stdout.splitlines() if x.strip()[2:].startswith("sandbox runtime: ")]
    # the backend's daemon has it; the machine's daemon, a pool host, does not, and is named
    assert line.startswith(
        "✗ sandbox runtime: sandbox.runtime=runsc: the daemon at unix:///var/run/docker.sock runs "
    ), done.stdout


@pytest.mark.harbor
@pytest.mark.ray
def test_run_checks_the_runtime_then_runs_the_batch_under_it(
    gvisor_daemon: GvisorDockerd, run_label: str, tmp_path: Path
) -> None:
    task = Path(__file__).parent / "tasks" / "kernel-report"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST")}
    done = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "run", f"tasks=[{task}]", f"run_label={run_label}", "agent=oracle",
         f"jobs_dir={tmp_path}", "job_name=job", f"backend.host={gvisor_daemon.url}", "sandbox.runtime=runsc",
         "--format", "json"],
        cwd=ROOT, env=env | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"sandbox runtime: runsc registered at {gvisor_daemon.url} (" in done.stderr, done.stderr[-3000:]
    [trial] = [p for p in (tmp_path / "job").iterdir() if (p / "verifier" / "uname.txt").is_file()]
    assert (trial / "verifier" / "uname.txt").read_text().strip() == GVISOR_UNAME
    assert ours(gvisor_daemon, run_label) == []


@pytest.mark.harbor
@pytest.mark.ray
def test_hide_git_history_works_under_gvisor(gvisor_daemon: GvisorDockerd, run_label: str, tmp_path: Path) -> None:
    """The history's tar crosses through the repository's own directory: gVisor covers /tmp with a tmpfs of its
    own, where the restore's upload was not seen (the verifier then failed on a missing tar)."""
    repo = make_task(tmp_path / "tasks")
    task = repo["task"]
    assert isinstance(task, Path)
    # its image (git from Debian's archive) is built on the machine's daemon, which has a network, and loaded
    # on the gVisor daemon, whose builds have none; the same content hash finds it there (the machine's copy
    # stays, as tests/harbor/test_git_history.py's does: the same task, the same image)
    tag = DockerBackend().ensure_image(SandboxSpec(run_label=run_label, build_context=str(task / "environment")))
    copy_images(gvisor_daemon.client(300), [tag], gvisor_daemon.root)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST")}
    # the agent's module by its own directory: a `tests` package installed with verl shadows ours in a new process
    path = f"{ROOT}:{ROOT / 'tests' / 'harbor'}"
    done = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "run", f"tasks=[{task}]", f"run_label={run_label}",
         "agent.import_path=agents:GitProbeAgent", "sandbox.hide_git_history=true",
         f"jobs_dir={tmp_path / 'jobs'}", "job_name=job", f"backend.host={gvisor_daemon.url}",
         "sandbox.runtime=runsc", "--format", "json"],
        cwd=ROOT, env=env | {"PYTHONPATH": path, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    [trial] = [p for p in (tmp_path / "jobs" / "job").iterdir() if (p / "agent" / "probe.json").is_file()]
    probe = json.loads((trial / "agent" / "probe.json").read_text())
    assert len(probe["log"]) == 1  # the agent saw one commit
    assert repo["fix"] not in probe["objects"]
    # the verifier saw the original .git byte for byte, under gVisor's kernel
    digest = (trial / "verifier" / "git_digest.txt").read_text()
    assert digest == (trial / "verifier" / "expected_digest.txt").read_text()
    assert (trial / "verifier" / "head.txt").read_text().strip() == repo["head"]
    assert ours(gvisor_daemon, run_label) == []
