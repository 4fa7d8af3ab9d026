"""The run command's small parts, without an engine: tail kill, reasons, record lines, logging, apt's lock."""

from __future__ import annotations

import asyncio
import fcntl
import io
import logging
import os
import threading

import pytest

from harbor_ray.cli import configure_logging
from harbor_ray.harbor.outcome import INFRASTRUCTURE, Reason, reason_for
from harbor_ray.harbor.report import TrialRecord, one_line, summary_table
from harbor_ray.harbor.tail import TailKill, TailKilled
from harbor_ray.ops.images import apt_get

pytestmark = pytest.mark.unit


async def test_tail_kill_cancels_what_runs_past_the_grace_and_lets_its_cleanup_finish() -> None:
    tail = TailKill(total=3, target=0.6, grace_s=0.2, min_tasks=1)
    cleaned = []

    async def work(seconds: float) -> float:
        try:
            await asyncio.sleep(seconds)
            return seconds
        finally:
            await asyncio.sleep(0.05)  # cleanup that awaits must still run to its end
            cleaned.append(seconds)

    async def one(seconds: float) -> float | str:
        try:
            return await tail.run(work(seconds))
        except TailKilled:
            return "killed"
        finally:
            tail.finished()

    assert await asyncio.gather(one(0.01), one(0.05), one(30)) == [0.01, 0.05, "killed"]
    assert sorted(cleaned) == [0.01, 0.05, 30]
    assert tail.needed == 2
    assert tail.grace_over


async def test_tail_kill_waits_for_min_tasks_and_is_off_at_target_one() -> None:
    assert TailKill(total=10, target=0.1, grace_s=1, min_tasks=4).needed == 4
    off = TailKill(total=2, target=1.0, grace_s=0)
    off.finished()
    assert not off.enabled
    assert off.grace_ends_at is None
    assert await off.run(asyncio.sleep(0.01, result="done")) == "done"


async def test_tail_kill_passes_an_outer_cancellation_on_after_the_inner_cleanup() -> None:
    tail = TailKill(total=2, target=0.5, grace_s=60)
    cleaned = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.set()

    runner = asyncio.ensure_future(tail.run(work()))
    await asyncio.sleep(0.05)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert cleaned.is_set()


def test_reasons_of_harbor_and_harbor_ray_errors() -> None:
    assert reason_for(None) is Reason.COMPLETED
    assert reason_for("AgentTimeoutError") is Reason.AGENT_TIMEOUT
    assert reason_for("VerifierTimeoutError") is Reason.VERIFIER_FAILED
    assert reason_for("RewardFileNotFoundError") is Reason.VERIFIER_FAILED
    assert reason_for("EnvironmentStartTimeoutError") is Reason.ENV_SETUP_FAILED
    assert reason_for("SandboxStartError") is Reason.ENV_SETUP_FAILED
    assert reason_for("SandboxGone") is Reason.SANDBOX_LOST
    assert reason_for("BackendUnavailable") is Reason.SANDBOX_LOST
    assert reason_for("CancelledError") is Reason.CANCELLED
    assert reason_for("ContextLengthExceededError") is Reason.OVERLONG
    # an agent's own failure is not the infrastructure's: never retried
    assert reason_for("NonZeroAgentExitCodeError") not in INFRASTRUCTURE
    assert reason_for("RuntimeError") not in INFRASTRUCTURE


def test_a_long_message_keeps_its_tail_and_loses_its_colour_codes() -> None:
    log = "build of /t failed: " + " | ".join(f"Step {i}/40 : RUN something long" for i in range(40))
    line = one_line(log + " | E: the failing step says why")
    assert line is not None
    assert len(line) <= 300
    assert line.startswith("build of /t failed: ")
    assert line.endswith("E: the failing step says why")
    assert one_line("\x1b[31msandbox: its actor died\x1b[0m (\x1b[36mcause\x1b[39m)\nmore") == (
        "sandbox: its actor died (cause)"
    )


def test_the_summary_counts_the_last_try_of_each_trial_by_reason() -> None:
    records = [
        TrialRecord(task="a", trial="a__1", reason="sandbox_lost", error="SandboxGone"),
        TrialRecord(task="a", trial="a__1__try2", reason="completed", try_number=2, reward=1.0),
        TrialRecord(task="b", trial="b__2", reason="tail_killed", error="TailKilled"),
    ]
    caption = str(summary_table(records).caption)
    assert caption.startswith("2 trials (3 tries), 1 errors, mean reward 1.000")
    assert caption.endswith("completed 1, tail_killed 1")
    assert records[1].to_json()["try"] == 2


def emitted(verbosity: int) -> list[str]:
    stream = io.StringIO()
    handler = configure_logging(verbosity, stream)
    try:
        logging.getLogger("harbor.utils.logger.trial").setLevel(logging.DEBUG)  # Harbor sets its own to DEBUG
        logging.getLogger("harbor.utils.logger.trial").debug("harbor-debug")
        logging.getLogger("harbor.utils.logger.trial").info("harbor-info")
        logging.getLogger("harbor_ray.harbor.runner").info("ours-info")
        logging.getLogger("harbor_ray.harbor.runner").debug("ours-debug")
        logging.getLogger("harbor_ray.harbor.runner").warning("ours-warning")
    finally:
        logging.getLogger().removeHandler(handler)
    return [line.rsplit(": ", 1)[1] for line in stream.getvalue().splitlines()]


def test_logging_shows_warnings_quietly_our_info_by_default_and_more_with_v() -> None:
    assert emitted(-1) == ["ours-warning"]  # the demo: progress bar, warnings, the table
    assert emitted(0) == ["ours-info", "ours-warning"]  # no Harbor DEBUG lines
    assert emitted(1) == ["harbor-info", "ours-info", "ours-debug", "ours-warning"]
    assert "harbor-debug" in emitted(2)


def test_apt_waits_for_the_dpkg_lock_another_process_holds() -> None:
    """The base-image step installs mmdebstrap with apt-get (as root, like the test command)."""
    fd = os.open("/var/lib/dpkg/lock-frontend", os.O_RDWR | os.O_CREAT)
    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running apt/dpkg holds it
    threading.Timer(1.0, os.close, (fd,)).start()
    done = apt_get("install", "-y", "-qq", "--no-download", "coreutils")  # already installed: a no-op
    assert done.returncode == 0, done.stderr


def test_every_agent_phase_is_bounded_the_tasks_own_timeout_first(tmp_path) -> None:
    from harbor_ray.config import load_config
    from harbor_ray.harbor.runner import trial_config

    unbounded = tmp_path / "unbounded"
    unbounded.mkdir()
    (unbounded / "task.toml").write_text('schema_version = "1.4"\n')  # no [agent] timeout_sec
    bounded = tmp_path / "bounded"
    bounded.mkdir()
    (bounded / "task.toml").write_text('schema_version = "1.4"\n[agent]\ntimeout_sec = 30.0\n')
    cfg = load_config(["agent.default_timeout_s=45", "agent.timeout_multiplier=2"])
    assert trial_config(cfg, unbounded, tmp_path, "k").agent.override_timeout_sec == 45
    config = trial_config(cfg, bounded, tmp_path, "k")
    assert config.agent.override_timeout_sec is None  # the task's 30 s stands
    assert config.agent_timeout_multiplier == 2
    override = load_config(["agent.override_timeout_s=7"])
    assert trial_config(override, unbounded, tmp_path, "k").agent.override_timeout_sec == 7
