"""What `run` prints (issue 29): the summary where no terminal is, its plain and JSON forms, and Ray's worker-start
warning dropped by Ray's own log deduplicator while Ray's other warnings pass."""

from __future__ import annotations

import io
import json

import pytest
from ray._private.ray_logging import LogDeduplicator
from rich.console import Console

from harbor_ray.harbor.report import TrialRecord, print_summary
from harbor_ray.ops.ray_output import SKIP_ENV, quiet_worker_start_warnings, skip_pattern

pytestmark = pytest.mark.unit

LONG_TASK = "swe-bench-verified__django__django-11099-username-validator-trailing-newline"
SANDBOX = "t-4f1c2d9a7b-0e564f175e0e564f175e"


def records() -> list[TrialRecord]:
    return [
        TrialRecord(
            task=LONG_TASK,
            trial=f"{LONG_TASK}__ab12cd3",
            reward=1.0,
            rewards={"reward": 1.0, "tests_passed": 0.75, "lint": 1.0},
            sandbox=SANDBOX,
            timings_s={"total": 41.25},
        ),
        TrialRecord(
            task="broken-build",
            trial="broken-build__9f8e7d6",
            error="ImageBuildError",
            error_message="build of …/environment failed: … returned a non-zero code: 3",
            reason="env_setup_failed",
        ),
    ]


def printed(fmt: str, console: Console) -> str:
    print_summary(records(), console, fmt)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_the_table_in_a_log_shows_whole_cells() -> None:
    """Where no terminal is (a pipe, a file, `ray job submit`'s log) rich used to cut the table to 80 columns."""
    out = printed("table", Console(file=io.StringIO()))
    assert LONG_TASK in out
    assert SANDBOX in out
    assert "reward=1, tests_passed=0.75, lint=1" in out  # the rewards cell on one line, not wrapped
    assert "…" not in out
    assert "2 trials, 1 errors, mean reward 1.000; completed 1, env_setup_failed 1" in out


def test_on_a_terminal_the_table_fits_the_terminal_as_before() -> None:
    out = printed("table", Console(file=io.StringIO(), force_terminal=True, width=80, color_system=None))
    assert max(len(line) for line in out.splitlines()) <= 80
    assert LONG_TASK not in out  # rich shortens it to fit, as the demo shows it


def test_plain_is_aligned_text_with_whole_cells() -> None:
    lines = printed("plain", Console(file=io.StringIO(), force_terminal=True, width=60)).splitlines()
    assert lines[0].split() == ["task", "reward", "rewards", "reason", "try", "error", "sandbox", "total", "s"]
    assert lines[1].startswith("broken-build ")
    assert lines[2].startswith(LONG_TASK + "  ")
    assert lines[2].index("1 ") == lines[0].index("reward")  # columns aligned under their headers
    assert SANDBOX in lines[2]
    assert lines[-1] == "2 trials, 1 errors, mean reward 1.000; completed 1, env_setup_failed 1"


def test_json_is_one_object_of_records_and_counts() -> None:
    data = json.loads(printed("json", Console(file=io.StringIO(), force_terminal=True, width=40)))
    assert data["summary"] == {
        "trials": 2,
        "tries": 2,
        "errors": 1,
        "mean_reward": 1.0,
        "reasons": {"completed": 1, "env_setup_failed": 1},
    }
    assert [t["task"] for t in data["trials"]] == ["broken-build", LONG_TASK]
    assert data["trials"][1]["rewards"]["tests_passed"] == 0.75
    assert data["trials"][0]["try"] == 1


# The raylet's message as Ray 2.60 sends it to drivers (its text, from the raylet binary and a run on this machine).
WORKER_START = (
    "WARNING: 6 PYTHON worker processes have been started on node: 413474e420e2d489bc79b28e0d1c911f787b97a10a41a763"
    "b991a248 with address: 192.0.2.2, which is 6x the maximum expected startup concurrency (1). This could be a "
    "result of using a large number of actors, tasks blocked in ray.get() calls, or tasks with fractional CPU "
    "requests (e.g., num_cpus=0.1) allowing high concurrency. See https://github.com/ray-project/ray/issues/3644 "
    "for some discussion of workarounds."
)
OTHER = "WARNING: The node with node id: 4134 has been marked dead because the detector has missed too many heartbeats"


def shown(pattern: str | None, lines: list[str]) -> list[str]:
    """What Ray's driver prints of a raylet batch, through Ray's own deduplicator built as the driver builds it."""
    dedup = LogDeduplicator(5, None, pattern)
    batches = dedup.deduplicate({"lines": lines, "pid": "raylet", "ip": "192.0.2.2", "is_err": False})
    return [line for batch in [*batches, *dedup.flush()] for line in batch["lines"]]


def test_ray_drops_the_worker_start_warning_and_shows_its_other_warnings() -> None:
    assert shown(None, [WORKER_START, OTHER]) == [WORKER_START, OTHER]  # Ray as it is
    assert shown(skip_pattern(None), [WORKER_START, OTHER]) == [OTHER]


def test_a_users_skip_pattern_is_kept_beside_ours() -> None:
    env = {SKIP_ENV: "heartbeats"}
    assert quiet_worker_start_warnings(env)
    assert shown(env[SKIP_ENV], [WORKER_START, OTHER, "INFO something else"]) == ["INFO something else"]
    assert quiet_worker_start_warnings(env)
    assert env[SKIP_ENV] == skip_pattern("heartbeats")  # set once, not again each run
