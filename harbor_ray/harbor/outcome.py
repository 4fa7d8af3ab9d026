"""How a trial ended, in the same words everywhere: `results.jsonl`, the run summary, both verl agent loops.

A trial ends for exactly one `Reason`. What a training sample does with each reason is a `Policy`:
`train` keeps the response mask and the verifier's reward (0 when there is none), `zero` keeps the mask and
forces reward 0, `mask` zeroes the response mask and the reward so the sample carries no gradient. The defaults
train on what the policy caused (its answer, its timeouts, its over-long context, a verifier it broke) and mask
what the infrastructure caused (a sandbox that never started or was lost, a cancelled or tail-killed trial).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Reason(StrEnum):
    COMPLETED = "completed"
    AGENT_TIMEOUT = "agent_timeout"
    OVERLONG = "overlong"
    ENV_SETUP_FAILED = "env_setup_failed"
    SANDBOX_LOST = "sandbox_lost"
    VERIFIER_FAILED = "verifier_failed"
    CANCELLED = "cancelled"
    TAIL_KILLED = "tail_killed"


class Policy(StrEnum):
    TRAIN = "train"
    ZERO = "zero"
    MASK = "mask"


DEFAULT_POLICY: Mapping[Reason, Policy] = {
    Reason.COMPLETED: Policy.TRAIN,
    Reason.AGENT_TIMEOUT: Policy.TRAIN,
    Reason.OVERLONG: Policy.TRAIN,
    Reason.VERIFIER_FAILED: Policy.ZERO,
    Reason.ENV_SETUP_FAILED: Policy.MASK,
    Reason.SANDBOX_LOST: Policy.MASK,
    Reason.CANCELLED: Policy.MASK,
    Reason.TAIL_KILLED: Policy.MASK,
}

# Reasons caused by the infrastructure, not by the agent or the verifier: the only ones worth a retry.
INFRASTRUCTURE: frozenset[Reason] = frozenset({Reason.ENV_SETUP_FAILED, Reason.SANDBOX_LOST})


def policy_for(reason: Reason, overrides: Mapping[str, str] | None = None) -> Policy:
    """The policy for `reason`: `overrides` (reason name -> policy name, e.g. from config) over the defaults."""
    if overrides and str(reason) in overrides:
        return Policy(overrides[str(reason)])
    return DEFAULT_POLICY[reason]


def check_policy_overrides(overrides: Mapping[str, str], field: str) -> None:
    """ValueError naming `field` when a key is not a Reason or a value not a Policy."""
    for key, value in overrides.items():
        if key not in Reason.__members__.values():
            msg = f"{field}.{key}: unknown termination reason; use one of {', '.join(Reason)}"
            raise ValueError(msg)
        if value not in Policy.__members__.values():
            msg = f"{field}.{key}={value!r}: unknown policy; use one of {', '.join(Policy)}"
            raise ValueError(msg)


# Exception class names (Harbor's `TrialResult.exception_info.exception_type`, or ours from harbor_ray.errors)
# -> the reason a trial ended. Names, not classes: stored results and errors that crossed a Ray boundary
# resolve the same way, and nothing here imports Harbor.
_REASON_BY_ERROR: Mapping[str, Reason] = {
    # the agent ran out of time or context
    "AgentTimeoutError": Reason.AGENT_TIMEOUT,
    "ContextWindowExceededError": Reason.OVERLONG,
    "ContextLengthExceededError": Reason.OVERLONG,
    "OutputTokenExceededError": Reason.OVERLONG,
    "OutputLengthExceededError": Reason.OVERLONG,
    # the verifier could not produce a reward
    "VerifierTimeoutError": Reason.VERIFIER_FAILED,
    "RewardFileNotFoundError": Reason.VERIFIER_FAILED,
    "RewardFileEmptyError": Reason.VERIFIER_FAILED,
    "VerifierOutputParseError": Reason.VERIFIER_FAILED,
    "RewardParseError": Reason.VERIFIER_FAILED,
    # the sandbox never became usable
    "EnvironmentStartTimeoutError": Reason.ENV_SETUP_FAILED,
    "SandboxBuildFailedError": Reason.ENV_SETUP_FAILED,
    "HealthcheckError": Reason.ENV_SETUP_FAILED,
    "AgentSetupTimeoutError": Reason.ENV_SETUP_FAILED,
    "SandboxStartError": Reason.ENV_SETUP_FAILED,
    "ImageBuildError": Reason.ENV_SETUP_FAILED,
    "BaseImageError": Reason.ENV_SETUP_FAILED,
    "CircuitOpen": Reason.ENV_SETUP_FAILED,
    # the sandbox (or the daemon/API behind it) went away mid-trial
    "SandboxGone": Reason.SANDBOX_LOST,
    "BackendUnavailable": Reason.SANDBOX_LOST,
    "SandboxLikelyOutOfMemoryError": Reason.SANDBOX_LOST,
    "MemoryLimitExceededError": Reason.SANDBOX_LOST,
    "AddTestsDirError": Reason.SANDBOX_LOST,
    "DownloadVerifierDirError": Reason.SANDBOX_LOST,
    "ActorDiedError": Reason.SANDBOX_LOST,
    "ActorUnavailableError": Reason.SANDBOX_LOST,
    # stopped by us
    "CancelledError": Reason.CANCELLED,
}


def reason_for(exception_type: str | None) -> Reason:
    """The reason a trial ended, from the class name of the exception that ended it (None: it did not fail).

    Any other failure (the agent's own error, a non-zero agent exit, a model API error) is `completed`: the
    trial ran its course as far as the infrastructure is concerned, the record's `error` says what went wrong,
    and it is never retried.

    >>> reason_for("AgentTimeoutError"), reason_for("SandboxGone"), reason_for(None), reason_for("ValueError")
    (<Reason.AGENT_TIMEOUT: 'agent_timeout'>, <Reason.SANDBOX_LOST: 'sandbox_lost'>, \
<Reason.COMPLETED: 'completed'>, <Reason.COMPLETED: 'completed'>)
    """
    if exception_type is None:
        return Reason.COMPLETED
    return _REASON_BY_ERROR.get(exception_type, Reason.COMPLETED)
