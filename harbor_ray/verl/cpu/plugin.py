"""The module verl imports in every process (`VERL_USE_EXTERNAL_MODULES=harbor_ray.verl.cpu.plugin`): it
registers harbor_ray's CPU platform, the CPU FSDP engine and the `hf` rollout with verl on import.
"""

from __future__ import annotations

import os


def register() -> None:
    """Register the platform, the CPU FSDP engine and the `hf` rollout with verl (idempotent)."""
    from harbor_ray.verl.cpu import platform

    if hasattr(platform, "register"):  # absent only while platform.py itself is importing verl
        platform.register()  # first: importing verl's engines resolves the platform at module level

    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead
    from verl.workers.rollout import base as rollout_base
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    from harbor_ray.verl.cpu import BATCH_RECORD_ENV, ROLLOUT_NAME

    engines = EngineRegistry._engines.setdefault("language_model", {})
    for backend in ("fsdp", "fsdp2"):
        if "cpu" not in engines.get(backend, {}):
            EngineRegistry.register(model_type="language_model", backend=backend, device="cpu")(FSDPEngineWithLMHead)
    # verl keys its rollout classes by (name, mode) in a module dict with no register function.
    rollout_base._ROLLOUT_REGISTRY[(ROLLOUT_NAME, "async")] = "harbor_ray.verl.cpu.rollout.HFServerAdapter"
    RolloutReplicaRegistry.register(ROLLOUT_NAME, _load_replica)
    _gloo_process_group()
    if os.environ.get(BATCH_RECORD_ENV):
        import harbor_ray.verl.cpu.record  # noqa: F401  (registers trainer mode harbor_record)


def _load_replica() -> type:
    # imported when verl asks, not here: this module runs while verl itself is still being imported
    from harbor_ray.verl.cpu.rollout import HFReplica

    return HFReplica


def _gloo_process_group() -> None:
    """verl's training ranks call `initialize_global_process_group_ray()`, whose default backend string is
    `cpu:gloo,<device>:<comm>`; on a CPU platform that is `cpu:gloo,cpu:gloo`, which torch rejects. The ranks'
    binding (imported by name into verl.workers.engine_workers) is wrapped to default to `cpu:gloo`."""
    from verl.utils import distributed
    from verl.workers import engine_workers

    original = distributed.initialize_global_process_group_ray
    if getattr(engine_workers.initialize_global_process_group_ray, "__harbor_ray__", False):
        return

    def initialize_global_process_group_ray(timeout_second: int | None = None, backend: str | None = None) -> None:
        original(timeout_second=timeout_second, backend=backend or "cpu:gloo")

    initialize_global_process_group_ray.__harbor_ray__ = True  # type: ignore[attr-defined]
    engine_workers.initialize_global_process_group_ray = initialize_global_process_group_ray


register()
