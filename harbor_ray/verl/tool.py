"""BashTool: a verl `BaseTool` that runs one bash command in the episode's sandbox.

verl's `ToolAgentLoop` calls `create(create_kwargs=tools_kwargs["bash"]["create_kwargs"])`, then `execute`,
then `release`, for every tool call. The `harbor_sandbox` agent loop puts a `BashSession` (the leased
sandbox plus its limits) into those create_kwargs, so one tool object serves every trajectory.

A command that fails or times out is an observation for the policy. A sandbox that dies is recorded on
the session (`session.error`) and raised, so the loop can end the episode and mask the sample.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from verl.tools.base_tool import BaseTool
from verl.tools.schemas import OpenAIFunctionToolSchema, ToolResponse

from harbor_ray.backends.base import ExecResult
from harbor_ray.errors import ExecTimeout, HarborRayError
from harbor_ray.sandbox import Sandbox

log = logging.getLogger(__name__)

TOOL_NAME = "bash"


def bash_tool_schema(name: str = TOOL_NAME) -> OpenAIFunctionToolSchema:
    """The OpenAI function schema the chat template renders for the policy."""
    return OpenAIFunctionToolSchema.model_validate(
        {
            "type": "function",
            "function": {
                "name": name,
                "description": (
                    "Run a bash command in the task's sandbox and return its output and exit code. "
                    "State (files, the working directory's contents) persists between calls."
                ),
                "parameters": {
                    "type": "object",
                    "properties": {"command": {"type": "string", "description": "The bash command to run."}},
                    "required": ["command"],
                },
            },
        }
    )


@dataclass
class BashSession:
    """One trajectory's sandbox and the limits every command in it runs with."""

    sandbox: Sandbox
    timeout_s: float = 60.0
    cwd: str | None = None
    user: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    error: str = ""  # set when the sandbox failed; the agent loop ends the episode and masks the sample
    calls: int = 0
    timeouts: int = 0


def format_observation(result: ExecResult) -> str:
    """stdout, then stderr, then the exit code: what the policy sees after a command.

    >>> format_observation(ExecResult("hi\\n", "", 0))
    'hi\\n[exit code: 0]'
    """
    text = result.stdout
    if result.stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + result.stderr
    if text and not text.endswith("\n"):
        text += "\n"
    return f"{text or '(no output)\n'}[exit code: {result.return_code}]"


class BashTool(BaseTool):
    """Runs `command` with bash in the sandbox of the trajectory that called it.

    >>> tool = BashTool()  # doctest: +SKIP
    >>> iid, _ = await tool.create(create_kwargs={"session": BashSession(sandbox)})  # doctest: +SKIP
    >>> (await tool.execute(iid, {"command": "echo hi"}))[0].text  # doctest: +SKIP
    'hi\\n[exit code: 0]'
    """

    def __init__(self, config: dict[str, Any] | None = None, tool_schema: OpenAIFunctionToolSchema | None = None):
        super().__init__(config or {}, tool_schema or bash_tool_schema())
        self._sessions: dict[str, BashSession] = {}

    async def create(self, instance_id: str | None = None, **kwargs: Any) -> tuple[str, ToolResponse]:
        session = (kwargs.get("create_kwargs") or {}).get("session")
        if not isinstance(session, BashSession):
            msg = f"{self.name}: no sandbox for this trajectory; run it with the harbor_sandbox agent loop"
            raise ValueError(msg)
        instance_id = instance_id or uuid4().hex
        self._sessions[instance_id] = session
        return instance_id, ToolResponse()

    async def execute(
        self, instance_id: str, parameters: dict[str, Any], **kwargs: Any
    ) -> tuple[ToolResponse, float, dict[str, Any]]:
        session = self._sessions[instance_id]
        command = parameters.get("command")
        if not isinstance(command, str) or not command.strip():
            return ToolResponse(text='error: pass {"command": "<a bash command>"}'), 0.0, {}
        if session.error:
            return ToolResponse(text=f"error: the sandbox is gone ({session.error})"), 0.0, {}
        session.calls += 1
        try:
            result = await session.sandbox.exec(
                command,
                cwd=session.cwd,
                env=session.env or None,
                timeout_s=session.timeout_s,
                user=session.user,
            )
        except ExecTimeout:
            session.timeouts += 1
            text = f"(no output)\n[command timed out after {session.timeout_s:g}s and was killed]"
            return ToolResponse(text=text), 0.0, {"timed_out": True}
        except HarborRayError as e:
            session.error = str(e)
            log.warning("sandbox failed during a command: %s", e)
            raise
        return ToolResponse(text=format_observation(result)), 0.0, {"exit_code": result.return_code}

    async def release(self, instance_id: str, **kwargs: Any) -> None:
        self._sessions.pop(instance_id, None)
