"""Harbor's verifier contract, run in the episode's own sandbox.

Exactly what Harbor's `Verifier.verify()` does for a single-step Linux task, over a harbor_ray `Sandbox`
instead of a Harbor `BaseEnvironment` (which would need a trial directory and a started environment):
stale reward files are removed, `tests/` is uploaded to `/tests`, `/tests/test.sh` runs with the task's
verifier env, user and timeout (stdout and stderr to `/logs/verifier/test-stdout.txt`), and the rewards are
read from `/logs/verifier/reward.json` (every key) or else `/logs/verifier/reward.txt` (key `reward`).

A verifier that times out or writes no valid reward is a *result* (`VerifierOutcome.error`): the agent may
have caused it. A sandbox that dies or refuses a transfer raises a harbor_ray error: that is infrastructure.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from dataclasses import dataclass, field
from typing import Any

from harbor_ray.errors import ExecTimeout, RewardParseError
from harbor_ray.sandbox import Sandbox
from harbor_ray.verl.task import HarborTask

log = logging.getLogger(__name__)

TESTS_DIR = "/tests"
VERIFIER_DIR = "/logs/verifier"
REWARD_TXT = f"{VERIFIER_DIR}/reward.txt"
REWARD_JSON = f"{VERIFIER_DIR}/reward.json"
TEST_STDOUT = f"{VERIFIER_DIR}/test-stdout.txt"
_MARK = "__harbor_ray_reward__"


@dataclass
class VerifierOutcome:
    """Rewards by key (empty when the verifier failed), the failure in one line, and the log's tail."""

    rewards: dict[str, float] = field(default_factory=dict)
    error: str = ""
    return_code: int | None = None
    duration_s: float = 0.0
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def parse_reward_text(text: str) -> dict[str, float]:
    """reward.txt: one finite number, as Harbor reads it.

    >>> parse_reward_text("1\\n")
    {'reward': 1.0}
    """
    if not text.strip():
        msg = "reward.txt is empty"
        raise RewardParseError(msg)
    try:
        value = float(text)
    except ValueError as e:
        msg = f"reward.txt is not a number: {text.strip()[:80]!r}"
        raise RewardParseError(msg) from e
    if not math.isfinite(value):
        msg = f"reward.txt holds a non-finite reward {value!r}"
        raise RewardParseError(msg)
    return {"reward": value}


def parse_reward_json(text: str) -> dict[str, float]:
    """reward.json: an object of finite numbers (every key kept), or one bare number as `reward`.

    >>> parse_reward_json('{"reward": 0.5, "tests_passed": 3}')
    {'reward': 0.5, 'tests_passed': 3.0}
    """
    if not text.strip():
        msg = "reward.json is empty"
        raise RewardParseError(msg)
    try:
        data: Any = json.loads(text)
    except ValueError as e:
        msg = f"reward.json is not JSON: {text.strip()[:80]!r}"
        raise RewardParseError(msg) from e
    items = data.items() if isinstance(data, dict) else [("reward", data)]
    rewards: dict[str, float] = {}
    for key, value in items:
        if isinstance(value, bool) or not isinstance(value, int | float):
            msg = f"reward.json: {key!r} is {value!r}, not a number"
            raise RewardParseError(msg)
        if not math.isfinite(value):
            msg = f"reward.json: {key!r} is non-finite ({value!r})"
            raise RewardParseError(msg)
        rewards[str(key)] = float(value)
    if not rewards:
        msg = "reward.json holds no rewards"
        raise RewardParseError(msg)
    return rewards


async def run_verifier(sandbox: Sandbox, task: HarborTask, *, timeout_s: float | None = None) -> VerifierOutcome:
    """Run the task's tests in `sandbox` and read its rewards.

    Raises:
        SandboxGone, TransferError, BackendUnavailable: the sandbox itself failed (infrastructure).
    """
    from harbor.models.task.config import TaskOS
    from harbor.utils.scripts import build_execution_command

    started = time.monotonic()
    limit = timeout_s or task.verifier_timeout_s
    script = f"{TESTS_DIR}/{task.test_script}"
    # Fresh /tests (nothing the agent left there survives) and no stale rewards, as root like Harbor.
    await sandbox.exec(
        f"rm -rf {TESTS_DIR} {REWARD_TXT} {REWARD_JSON} && mkdir -p {VERIFIER_DIR} && chmod 777 {VERIFIER_DIR}",
        user="root",
        timeout_s=60,
    )
    await sandbox.upload(task.tests_dir, TESTS_DIR)
    await sandbox.exec(f"chmod +x {shlex.quote(script)}", user="root", timeout_s=60)
    outcome = VerifierOutcome()
    try:
        result = await sandbox.exec(
            build_execution_command(script, stdout_path=TEST_STDOUT, task_os=TaskOS.LINUX),
            cwd=task.workdir,
            env=task.verifier_env or None,
            timeout_s=limit,
            user=task.verifier_user,
        )
        outcome.return_code = result.return_code
    except ExecTimeout:
        outcome.error = f"verifier timed out after {limit:g}s"
    if not outcome.error:
        await _read_rewards(sandbox, outcome)
    if outcome.error:
        tail = await sandbox.exec(f"tail -c 600 {TEST_STDOUT} 2>/dev/null", user="root", timeout_s=30)
        outcome.log_tail = tail.stdout
        log.info("%s: %s (test.sh exit %s)", task.name, outcome.error, outcome.return_code)
    outcome.duration_s = time.monotonic() - started
    return outcome


async def _read_rewards(sandbox: Sandbox, outcome: VerifierOutcome) -> None:
    """reward.json wins over reward.txt, as in Harbor; one exec reads whichever exists."""
    probe = (
        f"if [ -f {REWARD_JSON} ]; then echo json{_MARK}; cat {REWARD_JSON}; "
        f"elif [ -f {REWARD_TXT} ]; then echo txt{_MARK}; cat {REWARD_TXT}; else echo none{_MARK}; fi"
    )
    read = await sandbox.exec(probe, user="root", timeout_s=60)
    kind, _, body = read.stdout.partition(f"{_MARK}\n")
    try:
        if kind == "json":
            outcome.rewards = parse_reward_json(body)
        elif kind == "txt":
            outcome.rewards = parse_reward_text(body)
        else:
            outcome.error = f"no reward file: test.sh wrote neither {REWARD_TXT} nor {REWARD_JSON}"
    except RewardParseError as e:
        outcome.error = str(e)
