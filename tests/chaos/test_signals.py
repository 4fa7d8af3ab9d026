"""Signals to a real `python -m harbor_ray run` mid-trial (issue 13, items 6 and 8).

SIGTERM and SIGINT: the trials are cancelled, recorded `cancelled` in results.jsonl, their sandboxes
removed, the summary printed, one `interrupted (…)` line, exit 128 + the signal (143, 130). SIGKILL: nothing
of ours runs, so `clean --orphans` (the owner proven gone) must remove what the run left, within a bound.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, child_env, names

pytestmark = [pytest.mark.chaos, pytest.mark.docker, pytest.mark.harbor, pytest.mark.slow]

SLEEPY = ROOT / "tests" / "harbor" / "tasks" / "sleepy"  # its solve.sh sleeps 120 s
CLEAN_BOUND_S = 60


def start_run(run_label: str, jobs: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "harbor_ray", "run", f"tasks=[{SLEEPY}]", f"run_label={run_label}",
         f"jobs_dir={jobs}", "job_name=job", "agent=oracle"],
        cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_agent_phase(run: subprocess.Popen[str], docker_client, run_label: str) -> str:
    """The sandbox's name once the oracle's `sleep` runs in it."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()[1][-3000:]
        for container in docker_client.containers.list(filters={"label": f"harbor-run={run_label}"}):
            if "sleep 120" in " ".join(" ".join(p) for p in container.top().get("Processes") or []):
                return str(container.name)
        time.sleep(0.5)
    pytest.fail("the agent phase never started")


def results(jobs: Path) -> list[dict]:
    path = jobs / "job" / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_cancels_records_cleans_and_exits(signum, code, run_label, tmp_path, docker_client) -> None:
    run = start_run(run_label, tmp_path)
    try:
        sandbox = wait_for_agent_phase(run, docker_client, run_label)
        run.send_signal(signum)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    name = signal.Signals(signum).name
    assert run.returncode == code, err[-3000:]
    assert err.count(f"interrupted ({name})") == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "*** SIG" not in err, err[-3000:]  # no C++ stack dump from Ray
    [record] = results(tmp_path)
    assert (record["task"], record["reason"], record["try"], record["sandbox"]) == ("sleepy", "cancelled", 1, sandbox)
    assert record["reward"] is None
    assert names(docker_client, run_label) == set()  # removed before the driver exited


def test_sigkill_leaves_sandboxes_that_clean_orphans_removes(run_label, tmp_path, docker_client) -> None:
    run = start_run(run_label, tmp_path)
    try:
        sandbox = wait_for_agent_phase(run, docker_client, run_label)
        run.send_signal(signal.SIGKILL)
        run.wait(30)
    finally:
        if run.poll() is None:
            run.kill()
    assert results(tmp_path) == []  # nothing of ours ran after the kill
    deadline = time.monotonic() + CLEAN_BOUND_S
    while sandbox in names(docker_client, run_label):
        assert time.monotonic() < deadline, f"clean --orphans left {sandbox} for {CLEAN_BOUND_S}s"
        done = subprocess.run(
            [sys.executable, "-m", "harbor_ray", "clean", "--containers", "--orphans", f"run_label={run_label}"],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(1)
    assert names(docker_client, run_label) == set()
