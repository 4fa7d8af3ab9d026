"""Chat messages in one canonical form (OpenAI chat format, what HF chat templates take), and their comparison.

Both protocols are converted to this form before rendering: `{"role", "content": str}` plus, on assistant turns,
`tool_calls: [{"id", "type": "function", "function": {"name", "arguments": dict}}]` and, on tool turns,
`tool_call_id`. Arguments are kept as a dict because chat templates (Qwen, Llama…) `tojson` them.
`same_turns` decides whether an agent's history still matches the session's record: it compares what the
model saw (role, text, tool names and arguments), not transport details (ids, cache_control, names).
"""

from __future__ import annotations

import json
from typing import Any


class BadRequest(ValueError):
    """A request the protocol layer rejects with 400 (message names the field)."""


def text_of(content: Any, field: str) -> str:
    """A message's content as text: a string, or a list of text parts/blocks (other parts are refused)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
            elif isinstance(part, dict) and part.get("type") in ("thinking", "redacted_thinking"):
                continue  # reasoning echoed back by clients; the record keeps the tokens themselves
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                msg = f"{field}: content part of type {kind!r} is not supported (text only)"
                raise BadRequest(msg)
        return "".join(parts)
    msg = f"{field}: content must be a string or a list of text parts"
    raise BadRequest(msg)


def parse_arguments(arguments: Any) -> Any:
    """Tool-call arguments as the template wants them: a dict when they are a JSON object, else as given."""
    if isinstance(arguments, dict):
        return arguments
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return arguments
        return value if isinstance(value, dict) else arguments
    return arguments


def tool_call(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": parse_arguments(arguments)}}


def assistant(content: str, calls: list[dict[str, Any]]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = calls
    return message


def _key(message: dict[str, Any]) -> tuple:
    calls = tuple(
        (c["function"]["name"], json.dumps(c["function"]["arguments"], sort_keys=True))
        for c in message.get("tool_calls") or ()
    )
    return (message["role"], str(message.get("content") or "").strip(), calls)


def same_turns(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two histories show the model the same turns (see the module docstring)."""
    return len(a) == len(b) and all(_key(x) == _key(y) for x, y in zip(a, b, strict=True))


def tools_key(tools: list[dict[str, Any]] | None) -> str:
    return json.dumps(tools or [], sort_keys=True)
