"""`trainer.v1.trainer_mode=harbor`: verl's own sync PPO trainer, with the sandbox pool started while the model loads.

verl's TaskRunner calls `trainer.init()` (worker groups, model load, rollout servers: minutes on a GPU cluster)
before any agent loop exists; left alone, the pool's named actor is created by step 1's first episode, and step 1
pays a cold burst of sandbox actor processes. `HarborSyncTrainer.init` first creates the pool of every agent loop
in `actor_rollout_ref.rollout.agent.agent_loop_config_path` that has harbor_ray overrides (the loops' own config,
composed as they compose it, so they find the same actor with the same settings), without waiting for anything
but the pool actor itself; its upkeep then starts `pool.prestart_actors` idle sandbox actor processes while verl
loads the model. The pool actor asks for no CPU and its sandbox actors only for `pool.sandbox_resource`, so none
of this competes with verl's placement groups.

Each step's metrics gain the pool's numbers under `harbor/pool/…` (sandboxes alive and leased, idle actors,
starts, failures, actors prestarted; `harbor/pool/idle_actors_after_init` once), so they reach verl's loggers.

Registered through verl's `register_trainer` when imported: verl imports this module in every process through
`VERL_USE_EXTERNAL_MODULES=harbor_ray.verl.trainer` (a checkout) or its `verl.plugins` entry point (installed).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.import_utils import resolve_config_path

from harbor_ray.pool import SandboxPool
from harbor_ray.verl.sandboxes import harbor_config

log = logging.getLogger(__name__)

MODE = "harbor"


def loop_pools(config: Any) -> list[SandboxPool]:
    """A handle on each distinct shared pool the configured agent loops use (their actors not created yet)."""
    path = config.actor_rollout_ref.rollout.get("agent", {}).get("agent_loop_config_path")
    if not path:
        return []
    pools: dict[tuple[str, str], SandboxPool] = {}
    entries: Any = OmegaConf.load(resolve_config_path(path))
    for entry in entries:
        overrides = entry.get("harbor_overrides")
        config_file = entry.get("harbor_config_file")
        if overrides is None and config_file is None:
            continue  # not one of harbor_ray's loops
        cfg = harbor_config([str(o) for o in overrides or ()], config_file)
        key = (cfg.pool.namespace, cfg.pool.name)
        if cfg.pool.shared and key not in pools:
            pools[key] = SandboxPool.from_config(cfg)
    return list(pools.values())


def _numbers(stats: dict[str, Any]) -> dict[str, float]:
    return {
        f"harbor/pool/{k}": float(v) for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)
    }


@register_trainer(MODE)
class HarborSyncTrainer(PPOTrainerSync):
    """verl's `PPOTrainerSync` that starts the sandbox pools before the model loads (see the module docstring)."""

    def init(self) -> None:
        self._sandbox_pools = loop_pools(self.config)
        for pool in self._sandbox_pools:
            asyncio.run(pool.start())  # the named pool actor and its upkeep, which starts the idle actors
            log.info(
                "sandbox pool %s started before the model loads (prestart_actors=%d)",
                pool.config.name,
                pool.config.prestart_actors,
            )
        super().init()
        self._after_init = {
            "harbor/pool/idle_actors_after_init": float(sum(p.stats_sync()["idle_actors"] for p in self._sandbox_pools))
        }

    def _update_actor(self, batch: Any, metrics: dict) -> Any:
        for pool in self._sandbox_pools:
            metrics.update(_numbers(pool.stats_sync()))
        metrics.update(self._after_init)
        return super()._update_actor(batch, metrics)
