"""verl's own trainer runs GRPO steps through harbor_ray on CPU; every check reads what verl produced."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from smoke_harness import SmokeResult

pytestmark = [pytest.mark.verl_train, pytest.mark.docker, pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1800)]


def _generated_positions(sample: dict[str, Any], generations: list[dict[str, Any]]) -> dict[int, float]:
    """Response positions whose token is one the rollout generated right there (prefix match), with its log-prob."""
    prompt, response = sample["prompts"], sample["responses"]
    seq = prompt + response
    found: dict[int, float] = {}
    for gen in generations:
        ids = gen["prompt_ids"]
        if len(ids) < len(prompt) or seq[: len(ids)] != ids:
            continue
        tokens = gen["token_ids"]
        window = seq[len(ids) : len(ids) + len(tokens)]
        if not window or window != tokens[: len(window)]:
            continue
        for k, lp in enumerate(gen["log_probs"][: len(window)]):
            found[len(ids) - len(prompt) + k] = lp
    return found


def test_both_steps_complete_and_nothing_is_left(smoke: SmokeResult) -> None:
    assert smoke.returncode == 0, smoke.stdout[-3000:]
    assert sorted(smoke.metrics) == [1, 2, 3]
    assert smoke.summary["sandboxes_left"] == []  # nothing labeled with the run's label on the daemon
    assert smoke.summary["processes_left"] == []  # the run's Ray cluster (raylet, workers) is gone
    for step in (1, 2, 3):
        assert f"step {step}: rewards" in smoke.stdout


def test_a_step_learns_and_the_rollout_serves_the_new_weights(smoke: SmokeResult) -> None:
    rewards = [sum(s["rm_scores"]) for step in (1, 2) for s in smoke.samples(step)]
    assert len(rewards) == 16
    assert 0 < sum(rewards) < 16, rewards  # the warm start solves it some of the time
    # a step where some GRPO group's rewards differ (each group of 4 is mixed with probability ~0.8)
    learning = [step for step in (1, 2) if any(abs(a) > 0 for s in smoke.samples(step) for a in s["advantages"])]
    assert learning, "no group with differing rewards in two steps"
    step = learning[0]
    assert smoke.metrics[step]["actor/grad_norm"] > 0
    loads = [e for e in smoke.server if e["event"] in ("loaded", "weights")]
    # the initial sync, then one after each step's update
    assert [e["weight_version"] for e in loads] == [0, 1, 2, 3, 4]
    before, after = loads[step], loads[step + 1]  # the syncs before and after that step's update
    assert after["global_steps"] == 1 + before["global_steps"] == step
    # the log-prob of a fixed token sequence, scored by the rollout server, moves with the actor's update
    assert after["probe_log_prob"] != pytest.approx(before["probe_log_prob"], abs=1e-6)
    # step 1 sampled from the initially synced weights, step 2 from the weights step 1 trained
    by_version = {e["weight_version"] for e in smoke.server if e["event"] == "generate"}
    assert by_version == {1, 2}
    step2_ids = {tuple(s["responses"]) for s in smoke.samples(2)}
    step2_gens = [e for e in smoke.server if e["event"] == "generate" and e["weight_version"] == 2]
    assert any(tuple(e["token_ids"]) == r[: len(e["token_ids"])] for e in step2_gens for r in step2_ids)


def test_trained_tokens_are_the_generated_ids(smoke: SmokeResult) -> None:
    checked = {"harbor_trial": 0, "harbor_sandbox": 0}
    for sample in smoke.samples(1) + smoke.samples(2):
        # step s samples from weights version s (a memorised reply recurs across steps, its log-probs do not)
        generations = [e for e in smoke.server if e["event"] == "generate" and e["weight_version"] == sample["step"]]
        info = sample["reward_extra_info"]
        mask = sample["response_mask"]
        assert len(mask) == len(sample["responses"]) == len(sample["rollout_log_probs"])
        if info.get("harbor_masked"):
            assert not any(mask)
            continue
        found = _generated_positions(sample, generations)
        ones = {i for i, m in enumerate(mask) if m}
        assert ones, "an unmasked sample trains on some tokens"
        assert ones == set(found), "mask 1 exactly on the tokens the rollout generated, 0 on the context"
        for i in ones:
            assert sample["rollout_log_probs"][i] == pytest.approx(found[i], abs=1e-4)
            # the rollout's log-prob is the one verl's actor computes for the token (up to its bf16 forward)
            assert abs(sample["rollout_log_probs"][i] - sample["old_log_probs"][i]) < 0.25
        loop = "harbor_trial" if info.get("harbor_trial_dir") else "harbor_sandbox"
        checked[loop] += 1
    assert all(checked.values()), checked


def _disk_reward(trial_dir: str) -> float:
    result = json.loads((Path(trial_dir) / "result.json").read_text())
    return float(result["verifier_result"]["rewards"]["reward"])


def test_reward_metric_is_the_mean_of_the_verifiers(smoke: SmokeResult) -> None:
    samples = smoke.samples(1)
    scores = [sum(s["rm_scores"]) for s in samples]
    assert smoke.metrics[1]["critic/score/mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
    on_disk = 0
    for sample, score in zip(samples, scores, strict=True):
        info = sample["reward_extra_info"]
        if info.get("harbor_trial_dir"):
            assert score == pytest.approx(_disk_reward(info["harbor_trial_dir"]))  # Harbor's result.json
            on_disk += 1
        else:
            assert score == pytest.approx(float(info["harbor_reward"]))
    assert on_disk == 4


def test_a_step_with_every_sample_masked_trains_nothing(smoke: SmokeResult) -> None:
    samples = smoke.samples(3)
    assert len(samples) == 8
    assert all(s["reward_extra_info"]["harbor_masked"] for s in samples)
    assert {s["reward_extra_info"]["harbor_termination"] for s in samples} == {"env_setup_failed"}
    assert not any(m for s in samples for m in s["response_mask"])
    step3 = smoke.metrics[3]
    assert step3["critic/score/mean"] == 0
    # no token to train on: verl's policy loss is undefined (logged as null/NaN) and the gradient is zero
    grad_norm = step3["actor/grad_norm"]
    assert grad_norm == 0 or not math.isfinite(grad_norm)
    assert step3["actor/pg_loss"] is None or not math.isfinite(step3["actor/pg_loss"])
    assert "masked 8" in smoke.stdout  # the smoke command says so


def test_the_sandbox_pool_starts_while_the_model_loads(smoke: SmokeResult) -> None:
    """Trainer mode harbor (harbor_ppo.yaml's, under the recording mode) starts the loops' pool before verl's
    init: its idle actor processes are up when the model is loaded, and step 1's leases take them."""
    step1 = smoke.metrics[1]
    assert step1["harbor/pool/idle_actors_after_init"] >= 1
    assert step1["harbor/pool/actors_prestarted"] >= 1
    assert step1["harbor/pool/leases"] >= 8  # the pool's own count, in verl's metrics
