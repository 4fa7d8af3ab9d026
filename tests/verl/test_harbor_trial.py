"""The harbor_trial loop in verl's real AgentLoopWorker: Harbor's real Trial and agents, through the gateway.

One batch, five samples of one task on real Docker sandboxes from the harbor_ray pool, only the server
manager scripted: terminus-2 (driving tmux in the sandbox, its calls through LiteLLM's hosted_vllm path to the
gateway) solving the task -> reward 1 and answering wrongly -> 0; a small in-sandbox agent
(tests/verl/agents/gateway_agent.py) calling the gateway's Anthropic endpoint from inside the sandbox over the
"gateway only" network -> reward 1, while another host address is unreachable from that sandbox; the same
agent killing its sandbox mid-run -> sandbox_lost, masked; and running past its timeout -> agent_timeout.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.waiting import wait_released_holders
from verl_harness import FIXTURE_TASKS, ScriptedServerManager, compose_verl

pytestmark = [pytest.mark.verl, pytest.mark.gateway, pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker]

TASK = FIXTURE_TASKS / "hello-terminal"


def terminus(keystrokes: str, complete: bool) -> str:
    commands = [{"keystrokes": keystrokes, "duration": 0.5}] if keystrokes else []
    return json.dumps(
        {"analysis": "The shell is ready.", "plan": "Write the file.", "commands": commands, "task_complete": complete}
    )


TERMINUS_OK = [terminus("printf 'Hello, world!\\n' > /app/hello.txt\n", True), terminus("", True)]
TERMINUS_WRONG = [terminus("echo Goodbye > /app/hello.txt\n", True), terminus("", True)]
INBOX_OK = ["printf 'Hello, world!\\n' > /app/hello.txt", "DONE"]
INBOX_KILLED = ["KILL-MY-SANDBOX", "cat /app/hello.txt", "DONE"]
INBOX_SLOW = ["sleep 60", "DONE"]


@pytest.fixture
async def other_host_server() -> Any:
    """A server on the gateway's address (the Docker bridge), another port: sandboxes must not reach it."""
    from harbor_ray.verl.harbor_trial import gateway_address
    from harbor_ray.verl.sandboxes import harbor_config

    server = await asyncio.start_server(lambda r, w: w.close(), gateway_address(harbor_config(["backend=docker"])), 0)
    host, port = server.sockets[0].getsockname()[:2]
    yield f"{host}:{port}"
    server.close()


def _loops(tmp_path: Path, overrides: list[str], probe: str) -> Path:
    from omegaconf import OmegaConf
    from verl_harness import CONF_VERL

    entries = OmegaConf.load(CONF_VERL / "agent_loop.yaml")
    (shipped,) = [e for e in entries if e.name == "harbor_trial"]
    shipped.harbor_overrides = overrides
    shipped.trials_dir = str(tmp_path / "trials")
    inbox = OmegaConf.merge(shipped, {"name": "gateway_agent"})
    inbox.agent = {
        "import_path": "tests.verl.agents.gateway_agent:GatewayAgent",
        "model_name": "policy",
        "in_sandbox": True,
        "kwargs": {"session_url": "{session_url}", "probe": probe},
    }
    inbox.timeouts = {"agent_timeout_s": 12}
    path = tmp_path / "agent_loop.yaml"
    OmegaConf.save([shipped, inbox], path)
    return path


def _batch(worker: Any, tmp_path: Path, names: list[str]) -> Any:
    from verl.protocol import DataProto
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    from harbor_ray.verl.dataset import main

    out = tmp_path / "train.parquet"
    assert main([f"tasks={TASK}", f"out={out}", "agent_name=harbor_trial"]) == 0
    dataset = RLHFDataset(data_files=[str(out)], tokenizer=worker.tokenizer, config=worker.config.data)
    batch = DataProto.from_single_dict(collate_fn([dataset[0]])).repeat(repeat_times=len(names), interleave=True)
    batch.non_tensor_batch["agent_name"] = np.array(names, dtype=object)
    batch.meta_info.update({"validate": False, "global_steps": 1})
    return batch


def _worker_config(tiny_model: Path, loops: Path, *extra: str) -> Any:
    """verl's trainer config for an AgentLoopWorker of the tiny model with the agent loops of `loops`."""
    overrides = [
        f"actor_rollout_ref.model.path={tiny_model}",
        "actor_rollout_ref.rollout.name=vllm",
        *extra,
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loops}",
    ]
    return compose_verl(overrides)


def _worker(tiny_model: Path, loops: Path, manager: Any, *extra: str) -> Any:
    """verl's real AgentLoopWorker over the scripted server manager, with the agent loops of `loops`."""
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker

    return AgentLoopWorker(_worker_config(tiny_model, loops, *extra), manager, None, [])


def _sample(out: Any, i: int) -> dict[str, Any]:
    prompt_len = out.batch["prompts"].shape[1]
    n = int(out.batch["attention_mask"][i, prompt_len:].sum())
    return {
        "ids": out.batch["responses"][i, :n].tolist(),
        "mask": out.batch["response_mask"][i, :n].tolist(),
        "logprobs": out.batch["rollout_log_probs"][i, :n].tolist(),
        "rm": float(out.batch["rm_scores"][i].sum()),
        "info": {k: out.non_tensor_batch[k][i] for k in out.meta_info["reward_extra_keys"]},
        "metrics": out.meta_info["metrics"][i],
    }


def _relay(container) -> bool:
    """The shared relay of "gateway only" sandboxes and the stock of network holders outlive them on purpose
    (docs/network.md; the run_label fixture drains the stock)."""
    kind = container.labels.get("harbor-ray/kind")
    return kind == "relay" or (kind == "holder" and "-stock-" in container.name)


async def test_harbor_trials_through_the_gateway(
    tiny_model, tmp_path, harbor_overrides, run_label, docker_client, other_host_server
):
    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(str(tiny_model))
    scripts = {"keystrokes": [TERMINUS_OK, TERMINUS_WRONG], "hello.txt": [INBOX_OK, INBOX_KILLED, INBOX_SLOW]}
    manager = ScriptedServerManager(tokenizer, scripts)
    loops = _loops(tmp_path, harbor_overrides, other_host_server)
    worker = _worker(tiny_model, loops, manager, "data.max_prompt_length=8192", "data.max_response_length=8192")
    names = ["harbor_trial", "harbor_trial", "gateway_agent", "gateway_agent", "gateway_agent"]

    out = await worker.generate_sequences(_batch(worker, tmp_path, names))

    seen: dict[str, dict[str, Any]] = {}
    for i in range(len(names)):
        sample = _sample(out, i)
        text = tokenizer.decode(sample["ids"])
        kind = next(k for k in ("Goodbye", "KILL-MY", "sleep 60", "keystrokes", "DONE") if k in text)
        seen[kind] = sample
    assert set(seen) == {"Goodbye", "KILL-MY", "sleep 60", "keystrokes", "DONE"}, "every scripted trial ran"

    solved, wrong = seen["keystrokes"], seen["Goodbye"]
    for sample, reward in ((solved, 1.0), (wrong, 0.0)):
        assert (sample["info"]["harbor_termination"], sample["info"]["harbor_reward"], sample["rm"]) == (
            "completed",
            reward,
            reward,
        )
        assert sample["info"]["gateway/calls"] == 2.0
        assert sample["info"]["gateway/rewrites"] == 0.0
        # Mask-1 tokens are exactly what generate returned for one trajectory, with its log-probs.
        policy = [(t, lp) for t, m, lp in zip(sample["ids"], sample["mask"], sample["logprobs"], strict=True) if m]
        (sent,) = [s for s in manager.sent.values() if [t for ids, _ in s for t in ids] == [t for t, _ in policy]]
        assert [lp for _, lp in policy] == pytest.approx([lp for _, lps in sent for lp in lps])
        assert sample["metrics"]["agent_execution"] > 0
        assert sample["metrics"]["verifier"] > 0
        assert Path(sample["info"]["harbor_trial_dir"], "result.json").is_file()

    inbox = seen["DONE"] if "KILL-MY" not in tokenizer.decode(seen["DONE"]["ids"]) else None
    assert inbox is not None
    assert (inbox["info"]["harbor_termination"], inbox["rm"]) == ("completed", 1.0)
    probe = json.loads(Path(inbox["info"]["harbor_trial_dir"], "agent", "probe.json").read_text())
    assert probe["gateway"] == "reached", probe
    assert probe["other"].startswith("unreachable"), probe

    killed = seen["KILL-MY"]
    assert killed["info"]["harbor_termination"] == "sandbox_lost", killed["info"]["harbor_error"]
    assert (killed["info"]["harbor_masked"], set(killed["mask"]), killed["rm"]) == (1.0, {0}, 0.0)

    slow = seen["sleep 60"]
    assert slow["info"]["harbor_termination"] == "agent_timeout", slow["info"]["harbor_error"]
    assert slow["info"]["harbor_masked"] == 0.0
    assert 1 in slow["mask"]

    assert wait_released_holders(docker_client, run_label) == []  # each ends a second after its sandbox
    left = docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"})
    assert [c.name for c in left if c.status == "running" and not _relay(c)] == []


async def test_cancelled_trial_releases_its_sandbox(tiny_model, tmp_path, harbor_overrides, run_label, docker_client):
    from verl.utils import hf_tokenizer

    from harbor_ray.verl.sandboxes import harbor_config, pool_for

    reached = asyncio.Event()

    async def hang_on_first_turn(request_id: str, turn: int) -> None:
        reached.set()
        await asyncio.Event().wait()  # a generation that never finishes, until verl aborts the rollout

    manager = ScriptedServerManager(hf_tokenizer(str(tiny_model)), {"hello.txt": [INBOX_OK]}, hang_on_first_turn)
    loops = _loops(tmp_path, harbor_overrides, probe="")
    worker = _worker(tiny_model, loops, manager)
    task = asyncio.ensure_future(worker.generate_sequences(_batch(worker, tmp_path, ["gateway_agent"])))
    await asyncio.wait_for(reached.wait(), 120)
    running = docker_client.containers.list(filters={"label": f"harbor-run={run_label}"})
    assert [c.labels.get("harbor-ray/kind", "sandbox") for c in running].count("relay") == 1  # gateway only
    assert [c.labels.get("harbor-ray/kind", "sandbox") for c in running].count("sandbox") == 1  # (+ its holder)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    stats = await pool_for(harbor_config(harbor_overrides)).stats()
    assert (stats["alive"], stats["leased"], stats["released"]) == (0, 0, 1)
    deadline = asyncio.get_running_loop().time() + 15
    # the sandbox and its network go; the shared relay stays until it has been idle a minute (docs/network.md)
    while [
        c
        for c in docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"})
        if not _relay(c)
    ] or [
        n for n in docker_client.networks.list(filters={"label": f"harbor-run={run_label}"}) if "-stock-" not in n.name
    ]:
        assert asyncio.get_running_loop().time() < deadline, "the cancelled trial's sandbox was left behind"
        await asyncio.sleep(0.2)


async def test_tail_kill_ends_the_straggler_masked_and_releases_its_sandbox(
    tiny_model, tmp_path, harbor_overrides, run_label, docker_client
):
    # Half the batch done, then a 1 s grace: the sample still sleeping is tail_killed (masked), the other kept.
    from omegaconf import OmegaConf
    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(str(tiny_model))
    manager = ScriptedServerManager(tokenizer, {"hello.txt": [INBOX_OK, INBOX_SLOW]})
    overrides = [*harbor_overrides, "tail_kill_target=0.5", "tail_kill_grace_s=1"]
    loops = _loops(tmp_path, overrides, probe="")
    entries = OmegaConf.load(loops)
    entries[1].timeouts = {"agent_timeout_s": 300}  # only the tail kill can end the sleeper in time
    OmegaConf.save(entries, loops)
    worker = _worker(tiny_model, loops, manager)

    out = await worker.generate_sequences(_batch(worker, tmp_path, ["gateway_agent", "gateway_agent"]))

    samples = [_sample(out, i) for i in range(2)]
    by_reason = {s["info"]["harbor_termination"]: s for s in samples}
    assert set(by_reason) == {"completed", "tail_killed"}, [s["info"]["harbor_error"] for s in samples]
    assert by_reason["completed"]["rm"] == 1.0
    killed = by_reason["tail_killed"]
    assert (killed["info"]["harbor_masked"], set(killed["mask"]), killed["rm"]) == (1.0, {0}, 0.0)
    assert "sleep 60" in tokenizer.decode(killed["ids"])
    deadline = asyncio.get_running_loop().time() + 15
    while [c for c in docker_client.containers.list(filters={"label": f"harbor-run={run_label}"}) if not _relay(c)]:
        assert asyncio.get_running_loop().time() < deadline, "the tail-killed trial's sandbox was left running"
        await asyncio.sleep(0.2)
