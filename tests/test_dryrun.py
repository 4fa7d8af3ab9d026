"""`python -m harbor_ray dryrun`, run as a user runs it (a subprocess), against the real engine.

The remote-TLS cases are in tests/docker_remote/test_dryrun_remote.py (they need the session's TLS
listener), the missing-namespace case in tests/k8s/test_dryrun_k8s.py (it needs the test apiserver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKER_LINES = [
    "docker SDK",
    "DockerClient",
    "TLS / port",
    "daemon ping",
    "API version",
    "base image",
    "agent runtime",
    "sandbox runtime",
    "probe container",
    "free slots",
    "hardening",
]


def dryrun(
    *args: str, path_first: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST")} | (env or {})
    env["PYTHONPATH"] = os.pathsep.join([*([str(path_first)] if path_first else []), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "harbor_ray", "dryrun", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def line(out: str, name: str) -> str:
    found = [x.strip() for x in out.splitlines() if x.strip()[2:].startswith(f"{name}: ")]
    assert len(found) == 1, f"no single line for {name!r} in:\n{out}"
    return found[0]


@pytest.mark.docker
def test_healthy_local_docker_passes(run_label):
    done = dryrun(f"run_label={run_label}", "backend.slots=1000", "sandbox.memory_mb=1024")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in DOCKER_LINES + ["Ray", "Ray resources"]:
        assert line(done.stdout, name).startswith("✓ "), done.stdout
    assert "probe container: created, exec'd and removed" in done.stdout
    # every non-default hardening override is shown
    assert "overrides: sandbox.memory_mb=1024 (default 2048)" in line(done.stdout, "hardening")
    assert "cap_drop=['ALL']" in done.stdout
    assert "security_opt=['no-new-privileges']" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("READY: 13 passed, 0 warnings, 0 failed")


@pytest.mark.docker
def test_relays_and_network_holders_take_no_slot(run_label, docker_client):
    """Free slots count sandboxes: a run's relay and network holder (docs/network.md) serve sandboxes, and a
    pool with its gateway up would otherwise see its own free slots shrink by them."""
    from harbor_ray import labels as L
    from harbor_ray.backends.images import BUSYBOX_IMAGE

    made = [
        docker_client.containers.run(
            BUSYBOX_IMAGE,
            ["sleep", "120"],
            name=f"{run_label}-{kind}",
            labels={L.RUN: run_label, L.KIND: kind},
            network_mode="none",
            detach=True,
        )  # fmt: skip
        for kind in ("relay", "holder", "sandbox")
    ]
    try:
        done = dryrun(f"run_label={run_label}", "backend.slots=1000")
        assert f", 1 of {run_label})" in line(done.stdout, "free slots"), done.stdout
    finally:
        for c in made:
            c.remove(force=True)


@pytest.mark.docker
def test_json_is_one_object_on_stdout(run_label):
    overrides = ["sandbox.network=true", "sandbox.pids_limit=64", "sandbox.read_only_root=true"]
    done = dryrun("--json", f"run_label={run_label}", "backend.slots=1000", *overrides)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)  # nothing but the object on stdout
    assert (report["ok"], report["backend"], report["run_label"]) == (True, "docker", run_label)
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == DOCKER_LINES + ["Ray", "Ray resources"]
    assert checks["hardening"]["status"] == "warn"  # a risky override warns, and is named
    assert "every sandbox gets network" in checks["hardening"]["detail"]
    hardening = checks["hardening"]["detail"]
    for shown in (
        "sandbox.network=True (default False)",
        "sandbox.pids_limit=64 (default 512)",
        "sandbox.read_only_root=True (default False)",  # the overrides, named
        "pids_limit=64,",
        "read_only_root=True,",
        "network=bridge",
    ):  # and in effect on the probe
        assert shown in hardening
    assert report["counts"] == {"pass": 12, "warn": 1, "fail": 0, "skip": 0}


@pytest.mark.docker
def test_shadowing_docker_package_is_detected(tmp_path):
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "__init__.py").write_text("# not the SDK: e.g. a project's own docker/ helpers\n")
    done = dryrun(path_first=tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    sdk = line(done.stdout, "docker SDK")
    shadow = tmp_path / "docker" / "__init__.py"
    assert sdk.startswith(f"✗ docker SDK: `import docker` loads {shadow}, which is not the docker SDK")
    assert "→ fix: rename that folder or drop its parent from PYTHONPATH/sys.path" in sdk
    assert line(done.stdout, "daemon ping") == "– daemon ping: not run: needs DockerClient"


@pytest.mark.docker
def test_docker_folder_without_the_sdk_earlier_on_path_warns(tmp_path, run_label):
    (tmp_path / "docker").mkdir()  # like verl/docker/: Dockerfiles, no package; it shadows nothing today
    (tmp_path / "docker" / "Dockerfile.rocm").write_text("FROM scratch\n")
    done = dryrun(f"run_label={run_label}", "backend.slots=1000", path_first=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert line(done.stdout, "docker SDK").startswith("⚠ docker SDK: docker ")
    assert f"but {tmp_path}/docker comes first on sys.path" in done.stdout


@pytest.mark.unit
def test_bad_kubeconfig_fails_without_an_apiserver(tmp_path):
    missing = tmp_path / "missing.yaml"
    done = dryrun("backend=k8s", f"backend.kubeconfig={missing}")
    assert done.returncode == 1, done.stdout + done.stderr
    assert line(done.stdout, "k8s config").startswith(f"✗ k8s config: backend.kubeconfig={missing}")
    garbage = tmp_path / "garbage.yaml"
    garbage.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    done = dryrun("--json", "backend=k8s", f"backend.kubeconfig={garbage}")
    assert done.returncode == 1
    [k8s] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "k8s config"]
    assert k8s["status"] == "fail"
    assert str(garbage) in k8s["detail"]
    assert k8s["fix"]


@pytest.mark.unit
def test_config_error_is_the_one_failing_line():
    done = dryrun("--json", "backend=docker_remote", "backend.host=tcp://10.0.0.5:2375")
    assert done.returncode == 1
    [check] = json.loads(done.stdout)["checks"]
    assert (check["name"], check["status"]) == ("config", "fail")
    assert check["detail"].startswith("backend.host=tcp://10.0.0.5:2375: refused, port 2375")


@pytest.mark.unit
def test_unreachable_ray_address_fails_fast():
    done = dryrun("backend=docker", "backend.host=unix:///nonexistent/docker.sock", "ray.address=127.0.0.1:1")
    assert done.returncode == 1
    assert line(done.stdout, "daemon ping").startswith(
        "✗ daemon ping: docker at unix:///nonexistent/docker.sock: the socket does not exist"
    )
    assert line(done.stdout, "Ray").startswith("✗ Ray: cannot reach Ray at 127.0.0.1:1")
    assert line(done.stdout, "Ray resources") == "– Ray resources: not run: needs Ray"


@pytest.mark.unit
def test_sandbox_resource_on_a_local_ray_is_declared_by_the_run():
    done = dryrun("backend=k8s", "backend.kubeconfig=/nonexistent", "pool.sandbox_resource=sandbox_slot")
    assert "✓ Ray resources: Ray starts locally in the run and declares sandbox_slot=16" in done.stdout


@pytest.mark.unit
def test_an_unreachable_daemon_shows_no_hardening_it_never_saw():
    done = dryrun("backend.host=unix:///nonexistent/docker.sock")
    assert line(done.stdout, "hardening") == "– hardening: not run: needs probe container"


@pytest.mark.docker
def test_docker_host_wins_over_the_default_socket_and_is_named(run_label):
    env_host = {"DOCKER_HOST": "unix:///nonexistent/other.sock"}
    done = dryrun(f"run_label={run_label}", env=env_host)
    assert line(done.stdout, "TLS / port") == (
        "✓ TLS / port: unix:///nonexistent/other.sock (local socket, from DOCKER_HOST)"
    )
    assert line(done.stdout, "daemon ping").startswith(
        "✗ daemon ping: docker at unix:///nonexistent/other.sock (DOCKER_HOST): the socket does not exist"
    )
    done = dryrun(f"run_label={run_label}", "backend.host=unix:///var/run/docker.sock", env=env_host)
    assert "from backend.host" in line(done.stdout, "TLS / port")  # an explicit backend.host wins
    assert line(done.stdout, "daemon ping").startswith("✓ daemon ping: Docker ")
