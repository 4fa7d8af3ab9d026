"""The `harbor_grpo` advantage estimator in verl's real `compute_advantage` path (verl.trainer.ppo.ray_trainer).

A GRPO group with one all-masked sample (a trial masked for infrastructure, reward 0) must give the other
samples exactly the advantages of the same group without it; verl's own `grpo` does not (the test shows it).
The estimator is found through verl's registry, loaded the way a trainer process loads it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = [pytest.mark.verl, pytest.mark.unit]


def _batch(scores: list[float], uids: list[str], masked: set[int], lengths: list[int] | None = None, length: int = 6):
    from verl import DataProto

    n = len(scores)
    mask = torch.ones(n, length)
    lengths = lengths or [length] * n
    for i, end in enumerate(lengths):
        mask[i, end:] = 0
    for i in masked:
        mask[i] = 0
    rewards = torch.zeros(n, length)
    for i, end in enumerate(lengths):
        rewards[i, end - 1] = scores[i]  # the score on the last response token, as verl puts rm_scores
    return DataProto.from_dict(
        tensors={"token_level_rewards": rewards, "response_mask": mask},
        non_tensors={"uid": np.array(uids, dtype=object)},
    )


def _advantages(data, estimator: str) -> torch.Tensor:
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    import harbor_ray.verl.advantage  # noqa: F401  (registers harbor_grpo)

    out = compute_advantage(data, adv_estimator=estimator, num_repeat=1, config=AlgoConfig(adv_estimator=estimator))
    return out.batch["advantages"]


def test_a_masked_sample_does_not_move_its_groups_advantages() -> None:
    # Group a: three real samples and one masked (reward 0); group b: untouched.
    scores = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    uids = ["a", "a", "a", "a", "b", "b", "b"]
    lengths = [6, 5, 4, 6, 6, 5, 4]  # responses of different lengths
    with_masked = _advantages(_batch(scores, uids, {3}, lengths), "harbor_grpo")
    keep = [0, 1, 2, 4, 5, 6]

    def kept(values: list) -> list:
        return [values[i] for i in keep]

    without = _advantages(_batch(kept(scores), kept(uids), set(), kept(lengths)), "harbor_grpo")

    assert torch.allclose(with_masked[keep], without)
    assert torch.count_nonzero(with_masked[3]) == 0
    assert torch.count_nonzero(with_masked[0]) > 0
    # The same group without the masked sample under verl's own grpo: identical (nothing was left out) ...
    assert torch.allclose(without, _advantages(_batch(kept(scores), kept(uids), set(), kept(lengths)), "grpo"))
    # ... while verl's grpo with the masked sample shifts the others (the reason for harbor_grpo).
    plain = _advantages(_batch(scores, uids, {3}, lengths), "grpo")
    assert not torch.allclose(plain[[0, 1, 2]], without[[0, 1, 2]])


def test_a_group_of_only_masked_samples_gets_zero_advantages() -> None:
    adv = _advantages(_batch([0.0, 0.0, 1.0, 0.0], ["a", "a", "b", "b"], masked={0, 1}), "harbor_grpo")
    assert torch.count_nonzero(adv[:2]) == 0
    assert torch.count_nonzero(adv[2:]) > 0


def test_verl_loads_the_estimator_by_its_external_modules_setting() -> None:
    # The trainer's processes get it on `import verl` (VERL_USE_EXTERNAL_MODULES, or the installed entry point).
    code = (
        "import verl; from verl.trainer.ppo.core_algos import get_adv_estimator_fn as g; "
        "print(g('harbor_grpo').__name__)"
    )
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "harbor_ray.verl.advantage"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "compute_harbor_grpo_advantage"


def test_harbor_ppo_defaults_to_harbor_grpo() -> None:
    from verl_harness import compose_verl

    assert compose_verl(["actor_rollout_ref.model.path=unused"]).algorithm.adv_estimator == "harbor_grpo"
