"""`sandbox.runtime` on the real engine: the container gets it, and a runtime the daemon lacks is one line naming
the key and the fix — from a start, from `run` (before Ray, exit 2) and from `dryrun` — with no sandbox left.

The machine's own daemon has only runc registered (it is shared: it is never reconfigured here); a trial under
gVisor on a daemon that registers runsc is tests/hosts/test_gvisor.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harbor_ray.backends.base import SandboxSpec
from harbor_ray.backends.docker.backend import DockerBackend
from harbor_ray.backends.images import BUSYBOX_IMAGE
from harbor_ray.errors import SandboxStartError

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "tasks" / "hello-file"
MISSING = "nosuch-runtime"


def cli(command: str, run_label: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST")}
    return subprocess.run(
        [sys.executable, "-m", "harbor_ray", command, f"run_label={run_label}", *args],
        cwd=ROOT,
        env=env | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_container_runs_under_the_named_runtime(run_label: str, docker_client) -> None:
    backend = DockerBackend()
    assert "runc" in backend.runtimes()
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, ttl_s=60, runtime="runc")
    handle = backend.create(spec, BUSYBOX_IMAGE)
    try:
        assert docker_client.api.inspect_container(handle.id)["HostConfig"]["Runtime"] == "runc"
    finally:
        backend.destroy(handle)


def test_a_runtime_the_daemon_lacks_fails_the_start_in_one_line(run_label: str, docker_client) -> None:
    backend = DockerBackend()
    spec = SandboxSpec(run_label=run_label, image=BUSYBOX_IMAGE, ttl_s=60, runtime=MISSING)
    with pytest.raises(SandboxStartError) as err:
        backend.create(spec, BUSYBOX_IMAGE)
    msg = str(err.value)
    assert msg.startswith(f"sandbox.runtime={MISSING}: the daemon at unix:///var/run/docker.sock runs "), msg
    assert "runc" in msg
    assert f"register {MISSING} there" in msg
    assert "or set sandbox.runtime=''" in msg
    assert "\n" not in msg
    assert docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"}) == []


def test_run_refuses_before_ray_in_one_line(run_label: str) -> None:
    done = cli("run", run_label, f"tasks=[{HELLO}]", f"sandbox.runtime={MISSING}")
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    assert errors[0].startswith(f"error: sandbox.runtime={MISSING}: the daemon at unix:///var/run/docker.sock runs ")
    for started in ("Traceback", "Ray", "trial"):
        assert started not in out, out


def test_dryrun_names_the_missing_runtime_and_runs_no_probe(run_label: str) -> None:
    done = cli("dryrun", run_label, f"sandbox.runtime={MISSING}")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [x.strip() for x in done.stdout.splitlines()]
    [runtime] = [x for x in lines if x[2:].startswith("sandbox runtime: ")]
    assert runtime.startswith(f"✗ sandbox runtime: sandbox.runtime={MISSING}: the daemon at "), done.stdout
    assert "probe container: not run: needs sandbox runtime" in done.stdout


def test_dryrun_shows_the_default_runtime(run_label: str) -> None:
    done = cli("dryrun", run_label, "backend.slots=1000", "sandbox.memory_mb=1024")
    assert "✓ sandbox runtime: the default runtime (sandbox.runtime=''): runc at unix:///var/run/docker.sock" in (
        done.stdout
    ), done.stdout
    assert "runtime=runc" in done.stdout  # the hardening line: what the probe container got
