"""The main job from the outside: `ray job submit` against a `ray start --head` on loopback, a pipe, and Ctrl-C.

What a user reads (issue 29): the summary in a job log or a pipe shows whole task names; a failed image build
is a record, not a traceback on stderr; Ray's worker-start warning is not in the output. In the pipe's run the
raylet is made to send that warning at once (`RAY_worker_maximum_startup_concurrency=1`, no IO workers counted),
as a bigger pool makes it send it on any machine.
"""

from __future__ import annotations

import json
import os
import shutil
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


HELLO = ROOT / "examples" / "tasks" / "hello-file"
LONG = "hello-file-under-a-name-longer-than-a-table-cell-gets-in-eighty-columns"  # 71 characters
WORKER_START_WARNING = "maximum expected startup concurrency"
EAGER_WARNINGS = {"RAY_worker_maximum_startup_concurrency": "1", "RAY_max_io_workers": "0"}


def env(**extra: str) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", **extra)


def long_named_task(root: Path) -> Path:
    return Path(shutil.copytree(HELLO, root / LONG))


def broken_build_task(root: Path) -> Path:
    """hello-file whose image does not build."""
    task = Path(shutil.copytree(HELLO, root / "broken-build"))
    (task / "environment" / "Dockerfile").write_text(
        "FROM harbor-ray/base:bookworm\nRUN echo the-failing-step; exit 3\n"
    )
    return task


def assert_whole_names_in_table(out: str, *names: str) -> None:
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rows, out[-3000:]
    for name in names:
        assert any(line.startswith(f"│ {name} ") for line in rows), out[-3000:]
    assert not any("…" in line for line in rows), out[-3000:]


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
        wait_http(f"http://127.0.0.1:{dashboard}/api/version", 180)
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
            f"tasks=[{HELLO},{long_named_task(tmp_path / 'tasks')}]",
            f"run_label={run_label}",
            f"jobs_dir={tmp_path}",
            "agent=oracle",
            "n_attempts=2",
        ]
        deadline = time.monotonic() + 360  # the job agent registered after 270 s once (load 22)
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
        assert_whole_names_in_table(logs, "hello-file", LONG)  # a job log is no terminal: not cut to 80 columns
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=60)


def test_through_a_pipe_a_failed_build_is_one_record_and_names_are_whole(run_label: str, tmp_path: Path) -> None:
    tasks = f"tasks=[{broken_build_task(tmp_path / 'tasks')},{long_named_task(tmp_path / 'tasks')}]"
    done = subprocess.run(
        [sys.executable, "-m", "harbor_ray", "run", tasks, f"run_label={run_label}", f"jobs_dir={tmp_path}"]
        + ["job_name=job", "agent=oracle", "n_attempts=2"],
        env=env(**EAGER_WARNINGS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # Harbor's Trial still collects the agent's logs from the environment that never started: no error, no stack
    assert "Traceback" not in done.stderr, done.stderr
    assert "ERROR" not in done.stderr, done.stderr
    assert_whole_names_in_table(done.stdout, "broken-build", LONG)
    assert "env_setup_failed 2" in done.stdout
    assert WORKER_START_WARNING not in done.stdout + done.stderr
    records = [json.loads(line) for line in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]
    broken = [r for r in records if r["task"] == "broken-build"]
    assert [(r["reason"], r["error"]) for r in broken] == [("env_setup_failed", "ImageBuildError")] * 2
    assert "the-failing-step" in broken[0]["error_message"]


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
