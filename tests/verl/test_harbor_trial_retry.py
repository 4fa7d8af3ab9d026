"""harbor_trial's retries in verl's real AgentLoopWorker: Harbor's real Trial on real Docker sandboxes.

The in-sandbox agent (tests/verl/agents/gateway_agent.py, `kill_first`) kills its own sandbox before its first
model call on the first try: the trial ends `sandbox_lost` with no token generated, so the loop tries again on
a fresh sandbox and a fresh session; the second try solves the task -> reward 1, both tries recorded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from omegaconf import OmegaConf
from support.waiting import wait_released_holders
from test_harbor_trial import INBOX_OK, _batch, _loops, _sample, _worker
from verl_harness import ScriptedServerManager

pytestmark = [pytest.mark.verl, pytest.mark.gateway, pytest.mark.harbor, pytest.mark.ray, pytest.mark.docker]


async def test_sandbox_lost_before_the_first_token_is_retried_on_a_fresh_sandbox(
    tiny_model, tmp_path, harbor_overrides, run_label, docker_client
):
    from verl.utils import hf_tokenizer

    tokenizer = hf_tokenizer(str(tiny_model))
    manager = ScriptedServerManager(tokenizer, {"hello.txt": [INBOX_OK]})
    loops = _loops(tmp_path, harbor_overrides, probe="")
    entries = OmegaConf.load(loops)
    marker = tmp_path / "killed-once"
    entries[1].agent.kwargs.kill_first = str(marker)
    OmegaConf.save(entries, loops)
    worker = _worker(tiny_model, loops, manager)

    out = await worker.generate_sequences(_batch(worker, tmp_path, ["gateway_agent"]))

    sample: dict[str, Any] = _sample(out, 0)
    info = sample["info"]
    assert marker.read_text() == "killed"  # the first try did lose its sandbox
    assert json.loads(info["harbor_try_reasons"]) == ["sandbox_lost", "completed"], info["harbor_error"]
    assert info["harbor_tries"] == 2.0
    assert (info["harbor_termination"], info["harbor_reward"], sample["rm"]) == ("completed", 1.0, 1.0)
    assert info["harbor_masked"] == 0.0
    # One session generated: the second try's; its tokens are what is trained.
    (sent,) = manager.sent.values()
    assert [t for t, m in zip(sample["ids"], sample["mask"], strict=True) if m] == [t for ids, _ in sent for t in ids]
    assert info["gateway/calls"] == 2.0
    assert wait_released_holders(docker_client, run_label) == []  # each ends a second after its sandbox
    left = docker_client.containers.list(all=True, filters={"label": f"harbor-run={run_label}"})
    # the shared relay of "gateway only" sandboxes and the stock of network holders outlive them on purpose
    # (docs/network.md; the run_label fixture drains the stock)
    kept = [c for c in left if c.labels.get("harbor-ray/kind") == "relay" or "-stock-" in c.name]
    assert [c.name for c in left if c.status == "running" and c not in kept] == []
