"""`python -m harbor_ray run` with a backend or task list that cannot work: one line, exit 2, before Ray starts.

Run as a user runs it (a subprocess). "Before Ray" is seen in what is printed: no Ray start line, no traceback.
"""

from __future__ import annotations

import os
import shutil
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


def test_a_bogus_agent_name_is_refused_with_the_closest_names() -> None:
    """Issue 29: it used to start Ray and fail every trial with Harbor's ValueError listing 49 names."""
    line = the_error(run("agent.name=bogus-agent"))
    assert line.startswith("error: agent.name='bogus-agent': not one of Harbor's ")
    assert "the closest: swe-agent, " in line
    assert "claude-code" in the_error(run("agent.name=claude_code")).split("the closest:")[1]


def test_an_agent_import_path_naming_a_missing_module_or_class() -> None:
    assert the_error(run("agent.import_path=harbor.agents.oracel:OracleAgent")).startswith(
        "error: agent.import_path=harbor.agents.oracel:OracleAgent: no module harbor.agents.oracel; "
        "the closest in harbor.agents: harbor.agents.oracle, "
    )
    line = the_error(run("agent.import_path=harbor.agents.oracle:OracleAgnt"))
    assert line.startswith(
        "error: agent.import_path=harbor.agents.oracle:OracleAgnt: module harbor.agents.oracle has no OracleAgnt; "
        "the closest: harbor.agents.oracle:OracleAgent"
    )
    assert the_error(run("agent.import_path=harbor.agents.oracle")).endswith("use 'module.path:ClassName'")


def test_an_environment_import_path_naming_a_missing_module() -> None:
    line = the_error(run("environment_import_path=harbor.environments.dockr:DockerEnvironment"))
    assert line.startswith(
        "error: environment_import_path=harbor.environments.dockr:DockerEnvironment: no module "
        "harbor.environments.dockr; the closest in harbor.environments: harbor.environments.docker"
    )


def invalid_tasks(root: Path) -> Path:
    """hello-file, and three copies of it each missing what a trial needs."""
    for name, missing in (
        ("no-dockerfile", "environment/Dockerfile"),
        ("no-tests", "tests/test.sh"),
        ("no-instruction", "instruction.md"),
        ("fine", None),
    ):
        shutil.copytree(HELLO, root / name)
        if missing:
            (root / name / missing).unlink()
    return root


def test_invalid_tasks_are_named_one_line_each_before_ray_starts(tmp_path: Path) -> None:
    tasks = invalid_tasks(tmp_path / "tasks")
    done = run(f"tasks=[{tasks}]", "backend.host=unix:///nonexistent/docker.sock")  # stops at the backend check
    the_error(done)
    warned = [line for line in done.stderr.splitlines() if " will fail: " in line]
    assert warned == [
        "WARNING harbor_ray.ops.preflight: task no-dockerfile will fail: no environment/Dockerfile and no "
        f"[environment] docker_image in task.toml ({tasks}/no-dockerfile)",
        f"WARNING harbor_ray.ops.preflight: task no-instruction will fail: no instruction.md ({tasks}/no-instruction)",
        f"WARNING harbor_ray.ops.preflight: task no-tests will fail: no tests/test.sh ({tasks}/no-tests)",
    ]
    assert "running all 4 tasks; the 3 above will be recorded as failed (--strict refuses)" in done.stderr
    # the verifier off: a task without tests is fine
    done = run(f"tasks=[{tasks}]", "verifier_enabled=false", "backend.host=unix:///nonexistent/docker.sock")
    assert "task no-tests" not in done.stderr


def test_strict_refuses_a_batch_with_invalid_tasks(tmp_path: Path) -> None:
    tasks = invalid_tasks(tmp_path / "tasks")
    done = run(f"tasks=[{tasks}]", "--strict")  # refused before the backend is asked
    assert the_error(done) == "error: --strict: 3 of 4 tasks are invalid (the warnings above); fix or drop them"
    assert done.stderr.count(" will fail: ") == 3
