"""Every verl internal the CPU plugin (harbor_ray.verl.cpu) touches, pinned: each test fails if verl moves it.

The hooks are public (`VERL_USE_EXTERNAL_MODULES`, `VERL_PLATFORM`, `PlatformRegistry.register`,
`EngineRegistry.register`, `RolloutReplicaRegistry.register`, `register_trainer`); three are not:
`verl.workers.rollout.base._ROLLOUT_REGISTRY` (no register function), the training ranks' default
process-group backend string (`initialize_global_process_group_ray`, wrapped), and the members verl calls on
its device module (`get_torch_device().X`). The `hf` rollout server is also exercised here on its own.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

pytestmark = [pytest.mark.verl_train, pytest.mark.verl]

ROOT = Path(__file__).resolve().parents[2]


def _in_plugin_process(code: str) -> str:
    from harbor_ray.verl.cpu import env

    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, **env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_verl_loads_the_plugin_and_picks_the_cpu_platform_in_a_fresh_process() -> None:
    out = _in_plugin_process(
        "import verl\n"
        "from verl.utils.device import get_device_name, get_nccl_backend, get_device_id, get_resource_name\n"
        "from verl.workers.engine.base import EngineRegistry\n"
        "from verl.workers.rollout.base import get_rollout_class\n"
        "from verl.workers.rollout.replica import get_rollout_replica_class\n"
        "from verl.workers import engine_workers\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
        "print(get_device_name(), get_nccl_backend(), get_device_id(), get_resource_name(),\n"
        "      EngineRegistry.get_engine_cls('language_model', 'fsdp2').__name__,\n"
        "      get_rollout_class('hf').__name__, get_rollout_replica_class('hf').__name__,\n"
        "      getattr(engine_workers.initialize_global_process_group_ray, '__harbor_ray__', False),\n"
        "      get_trainer_cls('harbor').__name__, get_adv_estimator_fn('harbor_grpo').__name__)"
    )
    assert out.split() == [
        "cpu",
        "gloo",
        "cpu",
        "GPU",
        "FSDPEngineWithLMHead",
        "HFServerAdapter",
        "HFReplica",
        "True",
        "HarborSyncTrainer",  # harbor_ppo.yaml's trainer mode and estimator, registered by the same environment
        "compute_harbor_grpo_advantage",
    ]


def test_verl_still_defaults_the_rank_process_group_to_a_duplicate_on_cpu() -> None:
    """Why the wrapper exists: verl builds `cpu:gloo,<device>:<comm>`, imported by name into engine_workers."""
    from verl.utils import distributed
    from verl.workers import engine_workers

    source = inspect.getsource(distributed.initialize_global_process_group_ray)
    assert 'f"cpu:gloo,{get_device_name()}:{get_nccl_backend()}"' in source
    assert "initialize_global_process_group_ray(timeout_second=None)" in inspect.getsource(
        engine_workers.TrainingWorker.__init__
    )


def test_the_private_rollout_registry_is_still_a_dict_keyed_by_name_and_mode() -> None:
    from verl.workers.rollout import base

    assert isinstance(base._ROLLOUT_REGISTRY, dict)
    assert ("vllm", "async") in base._ROLLOUT_REGISTRY
    assert "_ROLLOUT_REGISTRY[(rollout_name, mode)]" in inspect.getsource(base.get_rollout_class)


def test_the_engine_registry_keys_by_device_and_the_record_trainer_registers() -> None:
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer, get_trainer_cls
    from verl.workers.engine.base import EngineRegistry

    import harbor_ray.verl.cpu.record as record

    assert "cuda" in EngineRegistry._engines["language_model"]["fsdp"]
    trainer = get_trainer_cls(record.MODE)
    assert trainer is record.RecordingSyncTrainer
    assert issubclass(trainer, PPOTrainer)
    assert "_update_actor" in vars(PPOTrainer)


def test_the_cpu_device_module_has_every_member_verl_calls() -> None:
    import verl

    from harbor_ray.verl.cpu.platform import _CPU_DEVICE

    root = Path(verl.__file__).parent
    called = set()
    for path in root.rglob("*.py"):
        called |= set(re.findall(r"get_torch_device\(\)\.([A-Za-z_]+)", path.read_text(errors="ignore")))
    assert called
    missing = sorted(name for name in called if not hasattr(_CPU_DEVICE, name))
    assert not missing, f"verl calls get_torch_device().{missing} that the CPU device module lacks"


def test_hf_server_generates_with_actor_log_probs_and_loads_weights(tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from harbor_ray.verl.cpu.rollout import PROBE, HFRolloutServer
    from harbor_ray.verl.cpu.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "m", hidden_size=32, intermediate_size=64, num_layers=1, save_weights=True)
    config = types.SimpleNamespace(prompt_length=64, response_length=16, max_model_len=None, seed=0)
    server = HFRolloutServer(config, types.SimpleNamespace(local_path=str(path)), 0)
    prompt = [5, 6, 7, 8]
    out = asyncio.run(server.generate(prompt, {"temperature": 1.0, "logprobs": True, "max_tokens": 8}, "r1"))
    assert 1 <= len(out.token_ids) <= 8
    assert len(out.log_probs) == len(out.token_ids)
    # the same quantity verl's actor computes: log_softmax(logits / temperature) of each generated token
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + out.token_ids])).logits[0].float()
    expected = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    expected = expected.gather(1, torch.tensor(out.token_ids)[:, None])[:, 0].tolist()
    assert out.log_probs == pytest.approx(expected, abs=1e-4)
    before = sum(server._score(PROBE, 1, 1.0))
    state = {name: p.detach() + 0.05 for name, p in model.named_parameters()}
    assert asyncio.run(server.update_weights(state, global_steps=1)) == 1
    assert sum(server._score(PROBE, 1, 1.0)) != pytest.approx(before, abs=1e-6)
    with pytest.raises(ValueError, match="lacks"):
        asyncio.run(server.update_weights({}, global_steps=2))
