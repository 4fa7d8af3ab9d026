"""The main job from the outside: `ray job submit` against a `ray start --head` on loopback, and Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from support.procs import free_port

pytestmark = [pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def wait_http(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_ray_job_submit_runs_trials_and_logs_rewards(run_label: str, tmp_path: Path) -> None:
    port, dashboard = free_port(), free_port()
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--num-cpus=2",
            "--disable-usage-stats",
        ],
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", 90)
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dashboard}",
            "--",
            sys.executable,
            "-m",
            "harbor_ray",
            "run",
            f"tasks=[{ROOT}/examples/tasks/hello-file]",
            f"run_label={run_label}",
            f"jobs_dir={tmp_path}",
            "agent=oracle",
        ]
        deadline = time.monotonic() + 90
        while True:
            job = subprocess.run(submit, env=env(), capture_output=True, text=True, timeout=600)
            # The dashboard answers before the head's job agent has registered; Ray says to try again.
            if "No available agent to submit job" not in job.stdout + job.stderr or time.monotonic() > deadline:
                break
            time.sleep(1)
        logs = job.stdout + job.stderr
        assert job.returncode == 0, logs[-3000:]
        assert "succeeded" in logs
        assert "reward=1.0" in logs  # the per-trial line in the job's logs
        assert "mean reward 1.000" in logs  # the summary table
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_ctrl_c_stops_cleanly_and_removes_every_sandbox(run_label: str, tmp_path: Path, docker_client) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harbor_ray",
            "run",
            f"tasks=[{ROOT}/tests/harbor/tasks/sleepy]",
            "n_attempts=2",
            "n_concurrent=2",
            f"run_label={run_label}",
            f"jobs_dir={tmp_path}",
            "job_name=job",
        ],
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while len(docker_client.containers.list(filters={"label": f"harbor-run={run_label}"})) < 2:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "sandboxes never started"
            time.sleep(0.3)
        time.sleep(2)  # let the oracle's long sleep start inside the sandboxes
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"}) == [], out[-2000:]
