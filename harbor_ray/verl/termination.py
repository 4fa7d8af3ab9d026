"""Termination reasons for verl samples, shared by both agent loops: classify, apply the policy, name the metrics.

Reasons and policies are harbor_ray's (`harbor_ray.harbor.outcome`). Every sample of either loop carries
`harbor_termination` (the reason) and `harbor_masked` (1.0 when its response mask was zeroed) in
`reward_extra_info`, so the two loops log under the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from harbor_ray.harbor.outcome import Policy, Reason, check_policy_overrides, policy_for, reason_for


def reason_for_trial(exception_type: str | None, *, overlong: bool, agent_started: bool) -> Reason:
    """The reason a Harbor trial ended: harbor_ray's `reason_for(exception_type)`, plus what the gateway saw.

    A session that hit the context limit is `overlong` whatever the agent made of the error; an exception that
    `reason_for` does not know ends the trial as `env_setup_failed` when the agent never started, else
    `completed` (the agent's own failure: the policy may have caused it; the reward is the verifier's or 0).
    """
    if overlong:
        return Reason.OVERLONG
    reason = reason_for(exception_type)
    if reason == Reason.COMPLETED and exception_type is not None and not agent_started:
        return Reason.ENV_SETUP_FAILED
    return reason


def policy_table(overrides: Mapping[str, str] | None, field: str = "termination_policy") -> dict[str, str]:
    """Config overrides checked now (one error line naming the key), as plain strings."""
    table = {str(k): str(v) for k, v in (overrides or {}).items()}
    check_policy_overrides(table, field)
    return table


def apply(output: Any, reason: Reason, score: float, overrides: Mapping[str, str]) -> tuple[float, bool]:
    """Set `output.reward_score` and the response mask by the reason's policy; return (score, masked)."""
    policy = policy_for(reason, overrides)
    if policy == Policy.MASK:
        output.response_mask = [0] * len(output.response_mask)
        output.reward_score = 0.0
        return 0.0, True
    if policy == Policy.ZERO:
        score = 0.0
    output.reward_score = float(score)
    return float(score), False


def extra(reason: Reason, masked: bool) -> dict[str, Any]:
    return {"harbor_termination": str(reason), "harbor_masked": float(masked)}


def weights_versions(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`min_global_steps`/`max_global_steps` for a sample whose generations did not report them (none ran, or
    they went through the gateway): verl's v1 trainer reads them from every sample (its staleness metrics) and
    fails on None. Within a synchronous step the rollout serves the weights of step `global_steps - 1`."""
    step = kwargs.get("global_steps")
    if step is None:
        return {}
    version = max(int(step) - 1, 0)
    return {"min_global_steps": version, "max_global_steps": version}
