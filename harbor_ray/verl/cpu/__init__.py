"""A verl plugin that runs verl's own trainer (`python -m verl.trainer.main_ppo`) on a machine without a GPU.

Loaded only through verl's hooks: `VERL_USE_EXTERNAL_MODULES=harbor_ray.verl.cpu.plugin` makes every process
that imports verl (driver, TaskRunner, training ranks, agent-loop workers, reward workers) import this package,
which registers, idempotently (importing this package itself registers nothing):

- the platform `harbor_cpu` (`VERL_PLATFORM=harbor_cpu`): torch on CPU, gloo (`platform.py`);
- verl's FSDP language-model engine for device `cpu` (verl registers it for cuda and npu only);
- the async rollout `hf` (`rollout.name=hf`): a transformers model behind verl's replica/server interface,
  receiving the trainer's weights through verl's own weight sync (`rollout.py`).

`env()` gives the environment variables (with the modules of the shipped estimator and trainer mode);
conf/verl/platform/cpu.yaml is the config overlay. Every verl internal this
touches is listed in docs/verl.md ("Training on CPU") and pinned by tests/verl_train/test_plugin.py.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

MODULE = "harbor_ray.verl.cpu.plugin"  # imported by verl in every process; registers on import
# harbor_ppo.yaml's advantage estimator (harbor_grpo) and trainer mode (harbor): registered on import
SHIPPED_MODULES = "harbor_ray.verl.advantage,harbor_ray.verl.trainer"
PLATFORM_NAME = "harbor_cpu"  # VERL_PLATFORM
ROLLOUT_NAME = "hf"  # actor_rollout_ref.rollout.name
RECORD_MODE = "harbor_record"  # trainer.v1.trainer_mode of record.py's trainer
BATCH_RECORD_ENV = "HARBOR_RAY_BATCH_RECORD"  # record.py: a JSONL file of every trained sample
HF_RECORD_ENV = "HARBOR_RAY_HF_RECORD"  # rollout.py: a JSONL file of the server's generations and weight loads


def env() -> dict[str, str]:
    """The environment that makes verl load this plugin and pick its platform in every process (the plugin first:
    it registers the platform before the other modules import verl's trainer, whose engines resolve it)."""
    return {"VERL_USE_EXTERNAL_MODULES": f"{MODULE},{SHIPPED_MODULES}", "VERL_PLATFORM": PLATFORM_NAME}
