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


class GitProbeAgent(BaseAgent):
    """Looks for the repository's history the way a reward-hacking agent would (`git log --all`, the reflog,
    every object in the store, packed or loose), writes what it saw to `probe.json` in its logs dir, then
    fixes `calc.txt`. With `sleep_s` it first writes `started` and sleeps (a trial to kill mid-agent)."""

    def __init__(self, *args: object, sleep_s: float = 0.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.sleep_s = float(sleep_s)

    @staticmethod
    def name() -> str:
        return "git-probe"

    def version(self) -> str:
        return "1.0"

    async def setup(self, environment: BaseEnvironment) -> None:
        return None

    async def run(self, instruction: str, environment: BaseEnvironment, context: AgentContext) -> None:
        import json

        if self.sleep_s:
            (self.logs_dir / "started").write_text("1")
            await asyncio.sleep(self.sleep_s)
        probes = {
            "log": "git log --all --format=%H",
            "reflog": "git reflog --all --format=%H; git reflog --format=%H",
            "objects": "git cat-file --batch-all-objects --batch-check='%(objectname)'",
            "refs": "git for-each-ref --format='%(refname)'",
            "git_dirs": "find / -xdev -name '*.pack' -o -xdev -name 'packed-refs' -o -xdev -name '*.tar' 2>/dev/null",
        }
        seen = {}
        for key, command in probes.items():
            result = await environment.exec(command)
            seen[key] = (result.stdout or "").split()
        (self.logs_dir / "probe.json").write_text(json.dumps(seen))
        await environment.exec("sed -i 's/answer = 41/answer = 42/' calc.txt")
