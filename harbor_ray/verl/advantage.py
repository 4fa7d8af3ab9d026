"""`harbor_grpo`: verl's GRPO advantage, with masked samples left out of their group's statistics.

A sample whose whole response mask is 0 (a trial masked by its termination policy: `env_setup_failed`,
`sandbox_lost`, `tail_killed`, `cancelled`…, reward 0) carries no gradient, but under verl's `grpo` it still
counts in its group's mean and standard deviation with reward 0 and so shifts every other sample's advantage:
an infrastructure failure would read as "the others did better than average". `harbor_grpo` computes verl's
own `compute_grpo_outcome_advantage` over the samples that have at least one mask-1 token and gives the masked
ones advantage 0: the other samples get exactly the advantages of the group without the masked one.

Registered through verl's public registry (`verl.trainer.ppo.core_algos.register_adv_est`) when this module is
imported. verl imports it in every process that does `import verl` through its plugin entry point
(`verl.plugins` in pyproject.toml: installed harbor-ray) or `VERL_USE_EXTERNAL_MODULES=harbor_ray.verl.advantage`
(a checkout on PYTHONPATH); conf/verl/harbor_ppo.yaml makes it the default `algorithm.adv_estimator`.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from verl.trainer.ppo import core_algos

log = logging.getLogger(__name__)

NAME = "harbor_grpo"


def _norm_by_std(config: Any) -> bool:
    if config is None:
        return True
    getter = getattr(config, "get", None)
    value = getter("norm_adv_by_std_in_grpo", True) if getter else getattr(config, "norm_adv_by_std_in_grpo", True)
    return bool(value)


def compute_harbor_grpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    index: np.ndarray,
    epsilon: float = 1e-6,
    config: Any = None,
    **_: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), each (batch, response_length): verl's GRPO over the unmasked samples, 0 for the rest."""
    kept = response_mask.sum(dim=-1) > 0
    advantages = torch.zeros_like(token_level_rewards)
    if bool(kept.any()):
        rows = torch.nonzero(kept, as_tuple=True)[0]
        sub, _ = core_algos.compute_grpo_outcome_advantage(
            token_level_rewards=token_level_rewards[rows],
            response_mask=response_mask[rows],
            index=np.asarray(index)[rows.cpu().numpy()],
            epsilon=epsilon,
            norm_adv_by_std_in_grpo=_norm_by_std(config),
        )
        advantages[rows] = sub.to(advantages.dtype)
    left_out = int((~kept).sum())
    if left_out:
        log.debug("harbor_grpo: %d masked samples left out of their groups' statistics", left_out)
    return advantages, advantages


if NAME not in core_algos.ADV_ESTIMATOR_REGISTRY:
    core_algos.register_adv_est(NAME)(compute_harbor_grpo_advantage)
