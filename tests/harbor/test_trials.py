"""Harbor's own Trial on the sandbox pool, end to end on the real engine and real Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harbor_ray.config import load_config
from harbor_ray.harbor.runner import run_trials

pytestmark = [pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "tasks"
FIXTURES = Path(__file__).parent / "tasks"


def config(run_label: str, tmp_path: Path, *overrides: str):
    return load_config([f"run_label={run_label}", f"jobs_dir={tmp_path}", "job_name=job", *overrides])


def read_results(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "job" / "results.jsonl").read_text().splitlines()]


async def test_oracle_scores_one_on_every_example(ray_local, run_label: str, tmp_path: Path) -> None:
    records = await run_trials(config(run_label, tmp_path, f"tasks=[{EXAMPLES}]", "agent=oracle", "n_concurrent=4"))
    assert len(records) == len(list(EXAMPLES.iterdir())) >= 4
    assert {r.task: r.reward for r in records} == {r.task: 1.0 for r in records}
    assert all(r.error is None and r.sandbox and r.sandbox.startswith(run_label) for r in records)
    assert len({r.sandbox for r in records}) == len(records)  # a fresh sandbox per trial
    lines = read_results(tmp_path)
    assert sorted(line["task"] for line in lines) == sorted(r.task for r in records)
    stats = next(line for line in lines if line["task"] == "word-stats")
    assert stats["rewards"] == {"lines": 1.0, "words": 1.0, "longest_word": 1.0, "reward": 1.0}
    assert {"environment_setup", "agent_execution", "verifier", "total"} <= set(stats["timings_s"])
    # Harbor's own trial directories are written
    assert (tmp_path / "job" / stats["trial"] / "result.json").is_file()


async def test_nop_scores_zero(ray_local, run_label: str, tmp_path: Path) -> None:
    tasks = f"tasks=[{EXAMPLES / 'hello-file'},{EXAMPLES / 'word-stats'}]"
    records = await run_trials(config(run_label, tmp_path, tasks, "agent=nop"))
    assert {r.task: r.reward for r in records} == {"hello-file": 0.0, "word-stats": 0.0}
    assert [r for r in records if r.task == "word-stats"][0].rewards["words"] == 0.0


async def test_verifier_timeout_is_recorded_as_such(ray_local, run_label: str, tmp_path: Path) -> None:
    [record] = await run_trials(config(run_label, tmp_path, f"tasks=[{FIXTURES / 'slow-verifier'}]"))
    assert (record.error, record.reason, record.try_number) == ("VerifierTimeoutError", "verifier_failed", 1)
    assert record.reward is None
    assert read_results(tmp_path)[0]["error"] == "VerifierTimeoutError"
    assert read_results(tmp_path)[0]["reason"] == "verifier_failed"


async def test_sandbox_dying_mid_trial_is_an_error_and_the_batch_finishes(
    ray_local, run_label: str, tmp_path: Path
) -> None:
    tasks = f"tasks=[{FIXTURES / 'doomed'},{EXAMPLES / 'hello-file'},{EXAMPLES / 'sum-numbers'}]"
    agent = "agent.import_path=tests.harbor.agents:KillSandboxAgent"
    records = await run_trials(config(run_label, tmp_path, tasks, agent, "n_concurrent=3"))
    by_task = {r.task: r for r in records}
    assert set(by_task) == {"doomed", "hello-file", "sum-numbers"}
    assert by_task["doomed"].error is not None
    assert by_task["doomed"].reward is None
    assert by_task["hello-file"].error is None
    assert by_task["hello-file"].reward == 0.0
    assert by_task["sum-numbers"].error is None
    assert by_task["sum-numbers"].reward == 0.0
    assert len(read_results(tmp_path)) == 3


async def test_bad_task_dir_is_one_clear_error(ray_local, run_label: str, tmp_path: Path) -> None:
    from harbor_ray.errors import TaskError

    with pytest.raises(TaskError, match="no task.toml below it"):
        await run_trials(config(run_label, tmp_path, f"tasks=[{tmp_path}]"))


async def test_delete_false_keeps_the_sandbox_for_inspection(
    ray_local, run_label: str, tmp_path: Path, docker_client
) -> None:
    from harbor_ray.backends.docker.backend import DockerBackend
    from harbor_ray.ops.clean import clean_sandboxes

    [record] = await run_trials(config(run_label, tmp_path, f"tasks=[{EXAMPLES / 'hello-file'}]", "delete=false"))
    assert record.reward == 1.0
    kept = docker_client.containers.list(filters={"label": f"harbor-run={run_label}"})
    assert [c.name for c in kept] == [record.sandbox]
    assert kept[0].exec_run(["cat", "/app/hello.txt"]).output == b"Hello, world!\n"  # the trial's state is there
    assert clean_sandboxes(DockerBackend(), run_label, dry_run=False) == [record.sandbox]
