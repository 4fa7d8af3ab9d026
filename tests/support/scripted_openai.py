"""A scripted policy behind an OpenAI-compatible `/v1/chat/completions` (what LiteLLM, and so mini-swe-agent, calls),
served on the address sandboxes reach as their gateway. Turn n of a conversation (n = the tool results it
already holds) gets the n-th scripted bash call, in the OpenAI tool-call shape of the API reference
(https://platform.openai.com/docs/api-reference/chat/object). Every request body is kept for the test."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedPolicy:
    def __init__(self, host: str, commands: list[str]) -> None:
        self.commands = commands
        self.requests: list[dict[str, Any]] = []
        policy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                policy.requests.append({"path": self.path, "body": body})
                reply = json.dumps(policy.reply(body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reply(self, body: dict[str, Any]) -> dict[str, Any]:
        turn = sum(1 for m in body.get("messages", []) if m.get("role") == "tool")
        command = self.commands[min(turn, len(self.commands) - 1)]
        call = {
            "id": f"call_{turn}",
            "type": "function",
            "function": {"name": "bash", "arguments": json.dumps({"command": command})},
        }
        message = {"role": "assistant", "content": f"Step {turn}.", "tool_calls": [call]}
        return {
            "id": f"chatcmpl-{turn}",
            "object": "chat.completion",
            "created": 1700000000,
            "model": body.get("model", "policy"),
            "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": None}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
