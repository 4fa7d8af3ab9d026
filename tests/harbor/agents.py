"""A Harbor agent for tests: on the task named `doomed` it kills its own sandbox's container mid-run,
as a crashed node or an OOM kill would; on every other task it does nothing (like `nop`)."""

from __future__ import annotations

import asyncio

import docker
from harbor.agents.base import BaseAgent
from harbor.environments.base import BaseEnvironment
from harbor.models.agent.context import AgentContext


class KillSandboxAgent(BaseAgent):
    @staticmethod
    def name() -> str:
        return "kill-sandbox"

    def version(self) -> str:
        return "1.0"

    async def setup(self, environment: BaseEnvironment) -> None:
        return None

    async def run(self, instruction: str, environment: BaseEnvironment, context: AgentContext) -> None:
        if environment.environment_name != "doomed":
            return
        name = environment.last_sandbox  # type: ignore[attr-defined]
        await asyncio.to_thread(lambda: docker.from_env().containers.get(name).kill())
        await environment.exec("echo still there?")
