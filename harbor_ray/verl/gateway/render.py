"""How a session renders and parses for one verl agent loop: verl's own pieces, nothing re-implemented.

Prompts are rendered by the loop's Continuous Token builder (`AgentLoopBase.continuous_token_builder`: the
model's chat template through verl's `apply_chat_template`, the loop's `apply_chat_template_kwargs`, the
model family's boundary handling), tool calls are parsed by `ToolParser.get_tool_parser(multi_turn.format)`,
and the budgets are the rollout's `prompt_length` / `response_length`.
"""

from __future__ import annotations

from typing import Any

from harbor_ray.verl.gateway import messages as M
from harbor_ray.verl.gateway.session import Backend


def backend_for(
    agent_loop: Any,
    sampling_params: dict[str, Any],
    model_name: str = "policy",
    volatile_lines: tuple[str, ...] | None = None,
) -> Backend:
    """A session backend over `agent_loop.server_manager` (an `AgentLoopBase`), with verl's sampling params;
    `volatile_lines` None: messages.VOLATILE_LINES."""
    from verl.experimental.agent_loop.tool_parser import ToolParser

    rollout = agent_loop.rollout_config
    return Backend(
        server_manager=agent_loop.server_manager,
        tokenizer=agent_loop.tokenizer,
        builder=agent_loop.continuous_token_builder,
        tool_parser=ToolParser.get_tool_parser(rollout.multi_turn.format, agent_loop.tokenizer),
        sampling_params=dict(sampling_params),
        prompt_length=int(rollout.prompt_length),
        response_length=int(rollout.response_length),
        model_name=model_name,
        volatile_lines=M.VOLATILE_LINES if volatile_lines is None else tuple(volatile_lines),
    )
