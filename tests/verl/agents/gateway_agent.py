"""A small Harbor agent that runs its model calls *inside* the sandbox, as installed agents (claude-code…) do.

Each turn it runs the image's python3 in the sandbox to POST the conversation to the gateway's Anthropic
endpoint (`session_url`, i.e. http://gateway.harbor-ray.internal:PORT/<session>), takes the reply text as
one shell command, runs it, and sends its output back as the next user turn, until the reply is `DONE`.
The reply `KILL-MY-SANDBOX` makes it kill its own container (as a crashed node would) and go on.
With `kill_first` (a host path) it kills its own sandbox before its first model call unless that file exists,
creating it: the first try of a trial loses its sandbox before the policy generated anything, a retry does not.
With `probe` ("HOST:PORT") it first tries to open that address from the same sandbox and writes what
happened to `<logs_dir>/probe.json`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
from pathlib import Path

import docker
from harbor.agents.base import BaseAgent
from harbor.environments.base import BaseEnvironment
from harbor.models.agent.context import AgentContext

CALL = """
import base64, json, sys, urllib.request
url, body = sys.argv[1], base64.b64decode(sys.argv[2])
req = urllib.request.Request(url, data=body, headers={"content-type": "application/json", "x-api-key": "x",
                                                      "anthropic-version": "2023-06-01"})
try:
    print(urllib.request.urlopen(req, timeout=60).read().decode())
except urllib.error.HTTPError as e:
    print(json.dumps({"http_error": e.code, "body": e.read().decode()}))
except OSError as e:  # not answered at all (refused, reset, timed out): say so rather than print nothing
    print(json.dumps({"http_error": type(e).__name__, "body": str(e)}))
"""

PROBE = """
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
try:
    socket.create_connection((host, int(port)), timeout=3).close()
    print("reached")
except OSError as e:
    print("unreachable: " + type(e).__name__)
"""


class GatewayAgent(BaseAgent):
    def __init__(
        self, *args, session_url: str = "", probe: str = "", max_turns: int = 8, kill_first: str = "", **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self.session_url = session_url
        self.probe = probe
        self.kill_first = kill_first
        self.max_turns = int(max_turns)

    @staticmethod
    def name() -> str:
        return "gateway-agent"

    def version(self) -> str:
        return "1.0"

    async def setup(self, environment: BaseEnvironment) -> None:
        return None

    async def _python(self, environment: BaseEnvironment, script: str, *args: str) -> str:
        command = "python3 -c " + shlex.quote(script) + "".join(" " + shlex.quote(a) for a in args)
        result = await environment.exec(command, timeout_sec=90)
        return (result.stdout or "").strip()

    async def run(self, instruction: str, environment: BaseEnvironment, context: AgentContext) -> None:
        if self.probe:
            gateway = await self._python(environment, PROBE, self.session_url.split("/")[2])
            other = await self._python(environment, PROBE, self.probe)
            (self.logs_dir / "probe.json").write_text(json.dumps({"gateway": gateway, "other": other}))
        if self.kill_first and not Path(self.kill_first).exists():
            Path(self.kill_first).write_text("killed")
            await asyncio.to_thread(_kill, environment.last_sandbox)  # type: ignore[attr-defined]
        messages = [{"role": "user", "content": instruction}]
        for _ in range(self.max_turns):
            body = json.dumps({"model": "policy", "max_tokens": 256, "messages": messages}).encode()
            raw = await self._python(
                environment, CALL, f"{self.session_url}/v1/messages", base64.b64encode(body).decode()
            )
            reply = json.loads(raw)
            if "http_error" in reply:
                msg = f"gateway answered {reply['http_error']}: {reply['body'][:200]}"
                raise RuntimeError(msg)
            text = "".join(b.get("text", "") for b in reply["content"] if b["type"] == "text").strip()
            messages.append({"role": "assistant", "content": text})
            if text == "DONE":
                return
            if text == "KILL-MY-SANDBOX":
                await asyncio.to_thread(_kill, environment.last_sandbox)  # type: ignore[attr-defined]
                text = "true"
            result = await environment.exec(text, timeout_sec=30)
            messages.append({"role": "user", "content": f"exit {result.return_code}: {result.stdout or ''}"})


def _kill(container: str) -> None:
    docker.from_env().containers.get(container).kill()
