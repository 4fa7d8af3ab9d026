"""Retries and tail kill in `run` (issue 12 §3), on the real engine, real Ray and Harbor's own Trial.

Each try is one results.jsonl line with its reason and try number; only infrastructure failures are retried,
each on a fresh sandbox; stragglers past the tail-kill grace are ended, recorded `tail_killed`, released.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import ClassVar

import docker
import pytest
from harbor.agents.base import BaseAgent
from harbor.environments.base import BaseEnvironment
from harbor.models.agent.context import AgentContext

from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials
from harbor_ray.pool import SandboxPool

pytestmark = [pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "tasks"
FIXTURES = Path(__file__).parent / "tasks"
AGENT = "agent.import_path=tests.harbor.test_run_batch:ScriptedAgent"


class ScriptedAgent(BaseAgent):
    """On `doomed` it kills its own sandbox in its first try (as an OOM kill or a lost node would); on
    `hello-file` it fails as an agent (never worth a retry); on any other task it does nothing."""

    @staticmethod
    def name() -> str:
        return "scripted"

    def version(self) -> str:
        return "1.0"

    async def setup(self, environment: BaseEnvironment) -> None:
        return None

    async def run(self, instruction: str, environment: BaseEnvironment, context: AgentContext) -> None:
        first_try = "__try" not in environment.trial_paths.trial_dir.name
        if environment.environment_name == "doomed" and first_try:
            name = environment.last_sandbox  # type: ignore[attr-defined]
            await asyncio.to_thread(lambda: docker.from_env().containers.get(name).kill())
            await environment.exec("echo still there?")
        if environment.environment_name == "hello-file":
            msg = "the agent gave up"
            raise RuntimeError(msg)


class PidAgent(BaseAgent):
    """Notes the pid of the Ray actor process its sandbox lives in (the agent runs in the driver), then waits
    for the batch's other trial to do the same: both sandboxes are leased at once, so the pool's demand is 2."""

    pids: ClassVar[list[int]] = []

    @staticmethod
    def name() -> str:
        return "pid"

    def version(self) -> str:
        return "1.0"

    async def setup(self, environment: BaseEnvironment) -> None:
        return None

    async def run(self, instruction: str, environment: BaseEnvironment, context: AgentContext) -> None:
        sandbox = environment.sandbox  # type: ignore[attr-defined]
        PidAgent.pids.append((await sandbox.actor.info.remote())["pid"])
        async with asyncio.timeout(60):
            while len(PidAgent.pids) < 2:
                await asyncio.sleep(0.05)


def broken_build_task(root: Path) -> Path:
    task = root / "broken-build"
    (task / "environment").mkdir(parents=True)
    (task / "tests").mkdir()
    (task / "task.toml").write_text('schema_version = "1.4"\n[agent]\ntimeout_sec = 60.0\n')
    (task / "instruction.md").write_text("Its image does not build.\n")
    (task / "tests" / "test.sh").write_text("#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n")
    (task / "environment" / "Dockerfile").write_text(  # a long log, then the line that says why it failed
        "FROM harbor-ray/base:bookworm\n"
        "RUN for i in $(seq 30); do echo filler-line-$i-xxxxxxxxxxxx; done; echo the-failing-step-says-why; exit 3\n"
    )
    return task


def results(job_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]


async def test_infrastructure_failures_are_retried_on_a_fresh_sandbox_and_agent_failures_never(
    ray_local, run_label: str, tmp_path: Path
) -> None:
    tasks = f"tasks=[{FIXTURES / 'doomed'},{EXAMPLES / 'hello-file'},{broken_build_task(tmp_path / 'tasks')}]"
    cfg = load_config([f"run_label={run_label}", f"jobs_dir={tmp_path}", "job_name=job", tasks, AGENT, "max_retries=1"])
    records = await run_trials(cfg)
    lines = results(tmp_path / "job")
    assert len(lines) == len(records) == 5
    by_task: dict[str, list[dict]] = {}
    for line in sorted(lines, key=lambda x: x["try"]):
        by_task.setdefault(line["task"], []).append(line)

    lost, retried = by_task["doomed"]  # the sandbox killed mid-trial: retried once, on a fresh sandbox
    assert (lost["reason"], lost["try"], lost["error"]) == ("sandbox_lost", 1, "SandboxGone")
    assert (retried["reason"], retried["try"], retried["error"]) == ("completed", 2, None)
    assert retried["reward"] == 1.0
    assert lost["sandbox"]
    assert retried["sandbox"]
    assert lost["sandbox"] != retried["sandbox"]
    assert retried["trial"] == f"{lost['trial']}__try2"

    [gave_up] = by_task["hello-file"]  # the agent's own failure: recorded, never retried
    assert (gave_up["reason"], gave_up["try"], gave_up["error"]) == ("completed", 1, "RuntimeError")

    first, second = by_task["broken-build"]  # an environment that never started: retried, recorded per try
    assert [first["reason"], second["reason"]] == ["env_setup_failed", "env_setup_failed"]
    assert [first["try"], second["try"]] == [1, 2]
    assert "the-failing-step-says-why" in first["error_message"]  # the build log's tail, not its head
    assert first["error_message"].startswith("build of ")


async def test_tail_kill_ends_the_straggler_and_releases_its_sandbox(
    ray_local, run_label: str, tmp_path: Path, docker_client
) -> None:
    tasks = f"tasks=[{EXAMPLES / 'hello-file'},{FIXTURES / 'sleepy'}]"  # sleepy's solve.sh sleeps 120 s
    tail = ["tail_kill_target=0.5", "tail_kill_grace_s=2", "tail_kill_min_tasks=1"]
    cfg = load_config([f"run_label={run_label}", f"jobs_dir={tmp_path}", "job_name=job", tasks, *tail])
    records = await run_trials(cfg)
    by_task = {r.task: r for r in records}
    assert (by_task["hello-file"].reason, by_task["hello-file"].reward) == ("completed", 1.0)
    straggler = by_task["sleepy"]
    assert (straggler.reason, straggler.error, straggler.reward) == ("tail_killed", "TailKilled", None)
    assert straggler.sandbox
    assert straggler.sandbox.startswith(run_label)
    assert {line["reason"] for line in results(tmp_path / "job")} == {"completed", "tail_killed"}
    assert docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"}) == []


async def test_a_pool_given_to_run_trials_serves_each_batch_and_stays_up(
    ray_local, run_label: str, tmp_path: Path
) -> None:
    agent = "agent.import_path=tests.harbor.test_run_batch:PidAgent"
    tasks = f"tasks=[{EXAMPLES / 'hello-file'}]"
    cfg = load_config(
        [f"run_label={run_label}", f"jobs_dir={tmp_path}", tasks, agent, "n_attempts=2", "n_concurrent=2"]
    )
    pool = SandboxPool.from_config(cfg)
    try:
        batches = []
        for _ in range(2):
            PidAgent.pids.clear()
            records = await run_trials(cfg, pool=pool)
            assert [r.reason for r in records] == ["completed", "completed"]
            batches.append(set(PidAgent.pids))
            assert (await pool.stats())["idle_actors"] == 2  # still up, its actors kept for the next batch
        first, second = batches
        assert len(first) == 2
        assert second == first  # the second batch ran in the first batch's actor processes
    finally:
        await pool.shutdown()
