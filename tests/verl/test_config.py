"""The shipped verl configuration, checked with verl's own machinery (no GPU, no model weights needed).

- conf/verl/agent_loop.yaml is read the way AgentLoopWorker reads it (verl's resolve_config_path +
  OmegaConf.load) and each entry instantiates the way verl instantiates it (hydra.utils.instantiate kwargs).
- conf/verl/harbor_ppo.yaml plus every override of examples/verl/run_harbor_grpo.sh composes with verl's
  Hydra config tree and passes verl's `validate_config` and its dataclass conversion of the rollout config.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from verl_harness import CONF_VERL, ROOT, compose_verl

pytestmark = [pytest.mark.unit, pytest.mark.verl]

EXAMPLE = ROOT / "examples" / "verl" / "run_harbor_grpo.sh"


def example_overrides(model_path: Path) -> list[str]:
    """The OVERRIDES=( ... ) array of the example script, with its shell variables filled in."""
    text = EXAMPLE.read_text()
    block = re.search(r"^OVERRIDES=\(\n(.*?)^\)", text, re.S | re.M)
    assert block, f"{EXAMPLE}: no OVERRIDES=( ... ) block"
    values = {"MODEL_PATH": str(model_path), "N_GPUS": "8"}
    lines = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    return [re.sub(r"\$(\w+)", lambda m: values[m.group(1)], line) for line in lines if line]


def test_agent_loop_yaml_loads_and_binds_like_verl_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import hydra
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import AgentLoopBase
    from verl.experimental.agent_loop.tool_agent_loop import ToolAgentLoop
    from verl.utils.import_utils import resolve_config_path

    monkeypatch.chdir(ROOT)  # the trainer job runs in the repository (its working_dir)
    monkeypatch.delenv("HARBOR_RAY_TASK_ROOT", raising=False)
    entries = OmegaConf.load(resolve_config_path("conf/verl/agent_loop.yaml"))
    assert [e.name for e in entries] == ["harbor_sandbox", "harbor_trial", "harbor_trial_claude_code"]
    for entry in entries:
        cls = hydra.utils.get_class(entry._target_)
        assert issubclass(cls, ToolAgentLoop if entry.name == "harbor_sandbox" else AgentLoopBase)
        kwargs = {k: v for k, v in OmegaConf.to_container(entry, resolve=True).items() if k not in ("name", "_target_")}
        assert kwargs["task_root"] is None
        inspect.signature(cls.__init__).bind_partial(None, **kwargs)  # every key is a real keyword argument

        from harbor_ray.verl.sandboxes import harbor_config

        cfg = harbor_config(kwargs["harbor_overrides"])
        assert (cfg.pool.sandbox_resource, cfg.pool.shared) == ("sandbox_slot", True)

    monkeypatch.setenv("HARBOR_RAY_TASK_ROOT", "examples/tasks")
    assert OmegaConf.to_container(entries[0], resolve=True)["task_root"] == "examples/tasks"


def test_termination_policy_names_are_checked() -> None:
    from harbor_ray.verl.termination import policy_table

    assert policy_table({"agent_timeout": "mask"}) == {"agent_timeout": "mask"}
    with pytest.raises(ValueError, match="termination_policy.timeout: unknown termination reason"):
        policy_table({"timeout": "mask"})
    with pytest.raises(ValueError, match="termination_policy.overlong='skip': unknown policy"):
        policy_table({"overlong": "skip"})


def test_example_overrides_pass_verls_own_validation(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.utils.import_utils import resolve_config_path

    overrides = example_overrides(tiny_model)
    assert any(o.startswith("actor_rollout_ref.rollout.agent.agent_loop_config_path=") for o in overrides)
    config = compose_verl(overrides)

    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    rollout = omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    assert rollout.mode == "async"
    assert rollout.agent.default_agent_loop == "harbor_sandbox"
    assert rollout.multi_turn.format == "hermes"
    assert config.algorithm.adv_estimator == "harbor_grpo"
    monkeypatch.chdir(ROOT)
    names = [e.name for e in OmegaConf.load(resolve_config_path(rollout.agent.agent_loop_config_path))]
    assert rollout.agent.default_agent_loop in names


def test_harbor_ppo_extends_verls_ppo_trainer() -> None:
    """Defaults come from verl's own ppo_trainer.yaml; harbor_ppo.yaml changes only what the loop needs."""
    config = compose_verl(["actor_rollout_ref.model.path=unused"])
    assert config.actor_rollout_ref.rollout.agent.agent_loop_config_path == "conf/verl/agent_loop.yaml"
    assert config.trainer.project_name  # a key only verl's tree defines
    assert (CONF_VERL / "agent_loop.yaml").is_file()


def test_gateway_auto_binds_the_node_ip_when_a_pool_host_is_another_daemon() -> None:
    # A relay on another host's daemon cannot reach this machine's Docker bridge address (each host has its own):
    # `gateway_host: auto` must bind the node's IP (tests/hosts/test_verl_hosts.py runs it across hosts).
    import ray

    from harbor_ray.config import load_config
    from harbor_ray.verl.harbor_trial import gateway_address

    cfg = load_config(["backend=docker", "pool.hosts=[{name: a, url: 'tcp://192.0.2.9:2376', slots: 2}]"])
    assert gateway_address(cfg) == ray.util.get_node_ip_address()
