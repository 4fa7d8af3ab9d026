"""`python -m harbor_ray run` with a backend or task list that cannot work: one line, exit 2, before Ray starts.

Run as a user runs it (a subprocess). "Before Ray" is seen in what is printed: no Ray start line, no traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.procs import free_port

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "examples" / "tasks" / "hello-file"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "DOCKER_HOST", "KUBECONFIG")}
    return subprocess.run(
        [sys.executable, "-m", "harbor_ray", "run", f"tasks=[{HELLO}]", "run_label=t-preflight", *args],
        cwd=ROOT,
        env=base | {"PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"} | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def the_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one error line; nothing started (no Ray, no traceback, no trial)."""
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    for started in ("Traceback", "Ray", "trial"):
        assert started not in out, out
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out
    return errors[0]


def test_a_missing_socket() -> None:
    assert the_error(run("backend.host=unix:///nonexistent/docker.sock")) == (
        "error: docker at unix:///nonexistent/docker.sock: the socket does not exist; "
        "is the Docker daemon running on this machine?"
    )


def test_docker_host_is_honoured_and_named() -> None:
    line = the_error(run(env={"DOCKER_HOST": "unix:///nonexistent/other.sock"}))
    assert line.startswith("error: docker at unix:///nonexistent/other.sock (DOCKER_HOST): the socket does not exist")


def test_a_closed_port() -> None:
    host = f"tcp://127.0.0.1:{free_port()}"
    line = the_error(run("backend=docker_remote", f"backend.host={host}", "backend.allow_insecure=true"))
    assert line.startswith(f"error: docker at {host}: connection refused")


def test_bad_tls_files(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("not a PEM file\n")
    line = the_error(
        run("backend=docker_remote", "backend.host=tcp://127.0.0.1:2376", f"backend.tls.cert_path={tmp_path}")
    )
    assert line.startswith(f"error: backend.tls.ca_cert={tmp_path}/ca.pem: not a PEM CA certificate")


def test_missing_malformed_and_unreachable_kubeconfigs(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert the_error(run("backend=k8s", f"backend.kubeconfig={missing}")).startswith(
        f"error: backend.kubeconfig={missing}: no such readable file"
    )
    malformed = tmp_path / "malformed.yaml"
    malformed.write_text("apiVersion: v1\nkind: Config\nclusters: [\n")
    assert the_error(run("backend=k8s", f"backend.kubeconfig={malformed}")).startswith(
        f"error: backend.kubeconfig={malformed}: "
    )
    server = f"https://127.0.0.1:{free_port()}"
    unreachable = tmp_path / "unreachable.yaml"
    unreachable.write_text(
        f"apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{{name: k, cluster: {{server: '{server}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    assert the_error(run("backend=k8s", f"backend.kubeconfig={unreachable}")).startswith(
        f"error: k8s API at {server} unreachable"
    )


def test_no_tasks_is_an_error() -> None:
    assert the_error(run("tasks=[]")).startswith("error: tasks=[]: no task to run")


def test_risky_capabilities_are_warned_about_as_dryrun_does() -> None:
    done = run("sandbox.cap_add=[CHOWN,SYS_ADMIN,NET_ADMIN]", "backend.host=unix:///nonexistent/docker.sock")
    the_error(done)
    assert "WARNING harbor_ray.ops.preflight: sandbox.cap_add grants NET_ADMIN, SYS_ADMIN" in done.stderr
