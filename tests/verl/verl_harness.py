"""Helpers for the verl tier (imported by conftest.py and the tests): the tiny offline tokenizer/model dir,
verl's Hydra config composed from conf/verl, the shipped agent-loop YAML with a test's overrides, and the
scripted LLM server manager, the only fake, as in verl's own *_on_cpu.py agent-loop tests.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from harbor_ray.verl.cpu.tiny_model import CHAT_TEMPLATE, build_tiny_model

__all__ = ["CHAT_TEMPLATE", "build_tiny_model"]  # the shared offline builder (harbor_ray.verl.cpu.tiny_model)

ROOT = Path(__file__).resolve().parents[2]
CONF_VERL = ROOT / "conf" / "verl"
TASKS = ROOT / "examples" / "tasks"
FIXTURE_TASKS = Path(__file__).resolve().parent / "fixtures" / "tasks"
SANDBOX_RESOURCE = "sandbox_slot"


def compose_verl(overrides: list[str]) -> Any:
    """verl's trainer config exactly as `main_ppo --config-path conf/verl --config-name harbor_ppo` composes it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_VERL), version_base=None):
        return compose(config_name="harbor_ppo", overrides=overrides)


def agent_loop_yaml(tmp_path: Path, harbor_overrides: list[str], name: str = "harbor_sandbox", **kwargs: Any) -> Path:
    """The shipped conf/verl/agent_loop.yaml with this test's harbor_ray overrides for loop `name`."""
    from omegaconf import OmegaConf

    entries = OmegaConf.load(CONF_VERL / "agent_loop.yaml")
    (entry,) = [e for e in entries if e.name == name]
    entry.harbor_overrides = harbor_overrides
    for key, value in kwargs.items():
        entry[key] = value
    path = tmp_path / "agent_loop.yaml"
    OmegaConf.save(entries, path)
    return path


def tool_call(command: str) -> str:
    return "<tool_call>\n" + json.dumps({"name": "bash", "arguments": {"command": command}}) + "\n</tool_call>"


class ScriptedServerManager:
    """The LLM server manager's `generate`, playing one scripted list of assistant turns per trajectory.

    `scripts` maps a text found in the prompt (e.g. a task's file name) to the scripts to hand out, one per
    new trajectory, in order. `before_turn(request_id, turn)` runs before a turn is returned (to kill a
    sandbox between turns, or to block until cancelled). Every reply is recorded with its log-probs.
    """

    def __init__(
        self,
        tokenizer: Any,
        scripts: dict[str, list[list[str]]],
        before_turn: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.scripts = {key: list(value) for key, value in scripts.items()}
        self.before_turn = before_turn
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.turns: dict[str, list[str]] = {}
        self.sent: dict[str, list[tuple[list[int], list[float]]]] = {}

    def _script_for(self, prompt_ids: list[int]) -> list[str]:
        text = self.tokenizer.decode(prompt_ids)
        for key, queue in self.scripts.items():
            if key in text and queue:
                return queue.pop(0)
        msg = f"no script left for a prompt containing any of {list(self.scripts)}"
        raise AssertionError(msg)

    async def generate(
        self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs: Any
    ) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        if request_id not in self.turns:
            self.turns[request_id] = self._script_for(prompt_ids)
            self.sent[request_id] = []
        turn = len(self.sent[request_id])
        if self.before_turn is not None:
            await self.before_turn(request_id, turn)
        script = self.turns[request_id]
        text = script[turn] if turn < len(script) else "Done."
        ids = [*self.tokenizer.encode(text, add_special_tokens=False), self.end_id]
        # Distinct, recognisable log-probs: turn t, token k -> -(t + 1) - k / 1000.
        log_probs = [-(turn + 1) - k / 1000 for k in range(len(ids))]
        self.sent[request_id].append((ids, log_probs))
        return TokenOutput(token_ids=ids, log_probs=log_probs if sampling_params.get("logprobs") else None)


def gateway_backend(
    tokenizer: Any, manager: Any, *, prompt_length: int = 2048, response_length: int = 2048, logprobs: bool = True
) -> Any:
    """A gateway session backend from verl's own builder and hermes tool parser, over a scripted manager."""
    from verl.experimental.agent_loop.tool_parser import ToolParser
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    from harbor_ray.verl.gateway import Backend

    return Backend(
        server_manager=manager,
        tokenizer=tokenizer,
        builder=create_continuous_token_builder(tokenizer, hf_model_type="qwen2"),
        tool_parser=ToolParser.get_tool_parser("hermes", tokenizer),
        sampling_params={"temperature": 1.0, "top_p": 1.0, "logprobs": logprobs},
        prompt_length=prompt_length,
        response_length=response_length,
    )
