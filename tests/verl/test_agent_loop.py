"""The harbor_sandbox loop inside verl's real AgentLoopWorker, on real sandboxes from the harbor_ray pool.

The path is the trainer's: `python -m harbor_ray verl-dataset` writes the parquet, verl's RLHFDataset and
collate_fn make the batch, `AgentLoopWorker.generate_sequences` instantiates the loop from the shipped
agent-loop YAML (verl's registry + Hydra), runs it, and post-processes the outputs into the training batch
(`_agent_loop_postprocess` + `_postprocess`). `reward_loop_worker_handles=[]` mirrors a trainer without a
reward model: the loop's own `reward_score` must bypass verl's reward workers. Only the LLM server manager
is scripted (tests/verl/conftest.py).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from verl_harness import (
    FIXTURE_TASKS,
    TASKS,
    ScriptedServerManager,
    agent_loop_yaml,
    compose_verl,
    tool_call,
)

pytestmark = [pytest.mark.verl, pytest.mark.ray, pytest.mark.docker]

HELLO_OK = [tool_call("printf 'Hello, world!\\n' > /app/hello.txt"), tool_call("cat /app/hello.txt"), "Done."]
HELLO_WRONG = [tool_call("echo Goodbye > /app/hello.txt"), "Done."]
STATS_OK = [
    tool_call(
        "python3 - <<'PY'\nimport json, re\ntext = open('/app/poem.txt').read()\n"
        'words = re.findall(r"[A-Za-z\']+", text)\n'
        "json.dump({'lines': len(text.splitlines()), 'words': len(words),\n"
        "           'longest_word': max((w.lower() for w in words), key=len)}, open('/app/stats.json', 'w'))\nPY"
    ),
    "Done.",
]
STATS_PARTIAL = [tool_call("""echo '{"lines": 3, "words": 1, "longest_word": "sea"}' > /app/stats.json"""), "Done."]
STATS_KEYS = ["lines", "words", "longest_word"]


def _worker(tiny_model: Path, tmp_path: Path, overrides: list[str], manager: ScriptedServerManager) -> Any:
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    loops = agent_loop_yaml(tmp_path, overrides, reward_keys=STATS_KEYS, command_timeout_s=20)
    config = compose_verl(
        [
            f"actor_rollout_ref.model.path={tiny_model}",
            "actor_rollout_ref.rollout.name=vllm",
            "data.max_prompt_length=2048",
            "data.max_response_length=2048",
            "actor_rollout_ref.rollout.multi_turn.max_assistant_turns=6",
            f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
        ]
    )
    return AgentLoopWorker(config, manager, None, [])


def _manager(tiny_model: Path, scripts: dict[str, list[list[str]]], before_turn: Any = None) -> ScriptedServerManager:
    from verl.utils import hf_tokenizer

    return ScriptedServerManager(hf_tokenizer(str(tiny_model)), scripts, before_turn)


def _batch(worker: Any, tmp_path: Path, tasks: list[Path], repeat: int = 1) -> Any:
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from harbor_ray.verl.dataset import main

    out = tmp_path / "train.parquet"
    assert main([f"tasks={','.join(str(t) for t in tasks)}", f"out={out}"]) == 0
    dataset = RLHFDataset(data_files=[str(out)], tokenizer=worker.tokenizer, config=worker.config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[i] for i in range(len(dataset))]))
    if repeat > 1:
        batch = batch.repeat(repeat_times=repeat, interleave=True)
    batch.meta_info.update({"validate": False, "global_steps": 1})
    return batch


def _pool(overrides: list[str]) -> Any:
    """The same pool handle the agent loops of this event loop use."""
    from harbor_ray.verl.sandboxes import harbor_config, pool_for

    return pool_for(harbor_config(overrides))


async def _no_containers_left(docker_client: Any, run_label: str, within_s: float = 15.0) -> list[Any]:
    """Our containers of this run label, after waiting for the daemon's own auto-remove to finish."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        left = docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"})
        if not left or asyncio.get_running_loop().time() > deadline:
            return left
        await asyncio.sleep(0.2)


def _sample(out: Any, i: int) -> dict[str, Any]:
    """Sample i of the training batch, cut to its real (unpadded) response."""
    prompt_len = out.batch["prompts"].shape[1]
    n = int(out.batch["attention_mask"][i, prompt_len:].sum())
    return {
        "n": n,
        "ids": out.batch["responses"][i, :n].tolist(),
        "mask": out.batch["response_mask"][i, :n].tolist(),
        "pad_mask": out.batch["response_mask"][i, n:].tolist(),
        "logprobs": out.batch["rollout_log_probs"][i, :n].tolist(),
        "rm": out.batch["rm_scores"][i].tolist(),
        "info": {k: out.non_tensor_batch[k][i] for k in out.meta_info["reward_extra_keys"]},
    }


def _check_alignment(sample: dict[str, Any], manager: ScriptedServerManager, tokenizer: Any) -> str:
    """Mask-1 tokens are exactly what the policy produced, with its log-probs; the rest are observations.

    Returns the request id whose turns this sample holds.
    """
    policy = [(t, lp) for t, m, lp in zip(sample["ids"], sample["mask"], sample["logprobs"], strict=True) if m == 1]
    matches = [
        rid for rid, sent in manager.sent.items() if [t for ids, _ in sent for t in ids] == [t for t, _ in policy]
    ]
    assert len(matches) == 1, "the mask-1 tokens are not exactly one trajectory's generated tokens"
    sent = manager.sent[matches[0]]
    assert [lp for _, lp in policy] == pytest.approx([lp for _, lps in sent for lp in lps])
    observed = [t for t, m in zip(sample["ids"], sample["mask"], strict=True) if m == 0]
    assert all(lp == 0.0 for lp, m in zip(sample["logprobs"], sample["mask"], strict=True) if m == 0)
    if len(sent) > 1:
        assert "<tool_response>" in tokenizer.decode(observed)
    assert set(sample["pad_mask"]) <= {0}
    return matches[0]


async def test_episodes_are_scored_by_the_harbor_verifier(tiny_model, tmp_path, harbor_overrides):
    """Correct episodes score 1.0, wrong ones 0.0 (reward.txt) or partial (reward.json, every key logged)."""
    manager = _manager(tiny_model, {"hello.txt": [HELLO_OK, HELLO_WRONG], "poem.txt": [STATS_OK, STATS_PARTIAL]})
    worker = _worker(tiny_model, tmp_path, harbor_overrides, manager)
    batch = _batch(worker, tmp_path, [TASKS / "hello-file", TASKS / "word-stats"], repeat=2)

    out = await worker.generate_sequences(batch)

    assert len(out) == 4
    rewards_seen = {}
    for i in range(4):
        sample = _sample(out, i)
        rid = _check_alignment(sample, manager, worker.tokenizer)
        text = worker.tokenizer.decode(sample["ids"])
        task = batch.non_tensor_batch["extra_info"][i]["task_name"]  # the trainer unions input and output
        if task == "hello-file":
            ok = "Goodbye" not in text
            expected = 1.0 if ok else 0.0
            if ok:
                assert "Hello, world!\n[exit code: 0]" in text  # the sandbox's real output came back
        else:
            ok = "longest_word': max" in text
            expected = 1.0 if ok else pytest.approx(1 / 3)
            assert json.loads(sample["info"]["harbor_rewards"]).keys() == {"reward", *STATS_KEYS}
            assert sample["info"]["harbor/lines"] == 1.0
            assert sample["info"]["harbor/words"] == (1.0 if ok else 0.0)
        assert sample["info"]["harbor_reward"] == expected
        assert sample["info"]["harbor_failed"] == 0.0
        assert sample["info"]["harbor_error"] == ""
        assert (sample["info"]["harbor_termination"], sample["info"]["harbor_masked"]) == ("completed", 0.0)
        # verl put the score on the last response token, and nowhere else.
        assert sample["rm"][sample["n"] - 1] == expected
        assert sum(sample["rm"]) == expected
        assert out.non_tensor_batch["__num_turns__"][i] == 2 * len(manager.sent[rid])
        rewards_seen[(task, ok)] = sample["info"]["harbor_reward"]
    assert set(rewards_seen) == {
        ("hello-file", True),
        ("hello-file", False),
        ("word-stats", True),
        ("word-stats", False),
    }

    stats = await _pool(harbor_overrides).stats()
    assert (stats["leases"], stats["released"], stats["alive"]) == (4, 4, 0)


@pytest.mark.parametrize("how", ["docker_kill", "ray_kill"])
async def test_sandbox_killed_mid_episode_is_a_recorded_masked_failure(
    how, tiny_model, tmp_path, run_label, harbor_overrides, docker_client
):
    import ray

    overrides = harbor_overrides

    async def kill_before_second_turn(request_id: str, turn: int) -> None:
        if turn != 1:
            return
        if how == "docker_kill":
            (container,) = docker_client.containers.list(filters={"label": f"harbor-run={run_label}"})
            container.kill()
        else:
            # This process's open lease holds the only handle to the (unnamed) sandbox actor.
            (lease,) = list(_pool(overrides)._open)
            ray.kill(lease.sandbox.actor, no_restart=True)

    script = [tool_call("echo started > /app/hello.txt"), tool_call("cat /app/hello.txt"), tool_call("ls"), "Done."]
    manager = _manager(tiny_model, {"hello.txt": [script]}, kill_before_second_turn)
    worker = _worker(tiny_model, tmp_path, overrides, manager)

    out = await worker.generate_sequences(_batch(worker, tmp_path, [TASKS / "hello-file"]))

    sample = _sample(out, 0)
    (sent,) = manager.sent.values()
    assert len(sent) == 2, "the episode should end at the first tool call after the sandbox died"
    assert set(sample["mask"]) == {0}, "a failed sample must not be trained on"
    assert sample["ids"][: len(sent[0][0])] == sent[0][0], "the tokens stay on record"
    assert sample["info"]["harbor_failed"] == 1.0
    assert sample["info"]["harbor_reward"] == 0.0
    assert sample["info"]["harbor_error"].startswith("sandbox:")
    assert (sample["info"]["harbor_termination"], sample["info"]["harbor_masked"]) == ("sandbox_lost", 1.0)
    assert sum(sample["rm"]) == 0.0
    stats = await _pool(overrides).stats()
    assert (stats["alive"], stats["leased"], stats["released"]) == (0, 0, 1)
    assert await _no_containers_left(docker_client, run_label) == []


async def test_cancelled_episode_releases_its_sandbox(tiny_model, tmp_path, run_label, harbor_overrides, docker_client):
    overrides = harbor_overrides
    reached = asyncio.Event()

    async def hang_on_second_turn(request_id: str, turn: int) -> None:
        if turn == 1:
            reached.set()
            await asyncio.Event().wait()  # a generation that never finishes

    manager = _manager(tiny_model, {"hello.txt": [HELLO_OK]}, hang_on_second_turn)
    worker = _worker(tiny_model, tmp_path, overrides, manager)
    task = asyncio.ensure_future(worker.generate_sequences(_batch(worker, tmp_path, [TASKS / "hello-file"])))
    await asyncio.wait_for(reached.wait(), 120)
    assert len(docker_client.containers.list(filters={"label": f"harbor-run={run_label}"})) == 1

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stats = await _pool(overrides).stats()
    assert (stats["alive"], stats["leased"], stats["released"]) == (0, 0, 1)
    assert await _no_containers_left(docker_client, run_label) == []


async def test_sandbox_that_cannot_start_is_recorded_next_to_good_samples(tiny_model, tmp_path, harbor_overrides):
    manager = _manager(tiny_model, {"hello.txt": [HELLO_OK]})
    worker = _worker(tiny_model, tmp_path, harbor_overrides, manager)
    batch = _batch(worker, tmp_path, [FIXTURE_TASKS / "broken-build", TASKS / "hello-file"])

    out = await worker.generate_sequences(batch)

    broken, good = _sample(out, 0), _sample(out, 1)
    assert batch.non_tensor_batch["extra_info"][0]["task_name"] == "broken-build"
    assert (broken["n"], broken["mask"], broken["logprobs"]) == (1, [0], [0.0])
    assert broken["info"]["harbor_failed"] == 1.0
    assert "sandbox:" in broken["info"]["harbor_error"]
    assert broken["info"]["harbor_termination"] == "env_setup_failed"
    assert good["info"]["harbor_termination"] == "completed"
    assert broken["rm"][0] == 0.0
    assert good["info"]["harbor_reward"] == 1.0
    assert len(manager.sent) == 1, "no generation is spent on a sample without a sandbox"


async def test_tail_kill_ends_the_straggler_masked(tiny_model, tmp_path, harbor_overrides, run_label, docker_client):
    """Half the batch done, then a 1 s grace: the episode still running is tail_killed, masked, its lease released."""
    slow = [tool_call("sleep 18"), tool_call("sleep 18"), tool_call("sleep 18"), "Done."]
    manager = _manager(tiny_model, {"hello.txt": [HELLO_OK, slow]})
    overrides = [*harbor_overrides, "tail_kill_target=0.5", "tail_kill_grace_s=1"]
    worker = _worker(tiny_model, tmp_path, overrides, manager)

    out = await worker.generate_sequences(_batch(worker, tmp_path, [TASKS / "hello-file"], repeat=2))

    samples = {_sample(out, i)["info"]["harbor_termination"]: _sample(out, i) for i in range(2)}
    assert set(samples) == {"completed", "tail_killed"}
    assert samples["completed"]["info"]["harbor_reward"] == 1.0
    killed = samples["tail_killed"]
    assert (killed["info"]["harbor_masked"], set(killed["mask"]), sum(killed["rm"])) == (1.0, {0}, 0.0)
    assert "tail killed" in killed["info"]["harbor_error"]
    assert await _no_containers_left(docker_client, run_label) == []
    stats = await _pool(overrides).stats()
    assert (stats["alive"], stats["leased"]) == (0, 0)


async def test_git_history_is_hidden_from_the_policy_and_restored_for_the_verifier(
    tiny_model, tmp_path, harbor_overrides
):
    """sandbox.hide_git_history in this loop: the policy's `git log --all` and object store show one new commit and
    nothing of the fix; the verifier's reward (1 only when .git is byte for byte the original) is 1."""
    from support.git_task import make_task

    repo = make_task(tmp_path / "tasks")
    probe = "git log --all --format=%H; git reflog --format=%H; git cat-file --batch-all-objects --batch-check"
    script = [tool_call(probe), tool_call("sed -i 's/answer = 41/answer = 42/' calc.txt"), "Done."]
    overrides = [*harbor_overrides, "sandbox.hide_git_history=true"]
    worker = _worker(tiny_model, tmp_path, overrides, _manager(tiny_model, {"calc.txt": [script]}))
    out = await worker.generate_sequences(_batch(worker, tmp_path, [repo["task"]]))
    sample = _sample(out, 0)
    text = worker.tokenizer.decode(sample["ids"])
    assert "[exit code: 0]" in text
    assert str(repo["fix"]) not in text
    assert str(repo["head"]) not in text
    assert sample["info"]["harbor_error"] == ""
    assert sample["info"]["harbor_reward"] == 1.0
