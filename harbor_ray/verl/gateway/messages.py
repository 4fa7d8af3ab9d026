"""Chat messages in one canonical form (OpenAI chat format, what HF chat templates take), and their comparison.

Both protocols are converted to this form before rendering: `{"role", "content": str}` plus, on assistant turns,
`tool_calls: [{"id", "type": "function", "function": {"name", "arguments": dict}}]` and, on tool turns,
`tool_call_id`. Arguments are kept as a dict because chat templates (Qwen, Llama…) `tojson` them.
`same_turns` decides whether an agent's history still matches the session's record: an assistant turn whose
tool calls carry ids the gateway issued is the gateway's own turn (lineage), whatever the agent did to the calls'
names or arguments when it re-serialized them; any other turn is compared by what the model saw (role, text,
tool names and arguments), not by transport details (cache_control, key order, whitespace).

Volatile lines (`VOLATILE_LINES`): lines that clients inject into the system prompt and change on every request
(claude-code's `x-anthropic-billing-header: cc_version=…; cch=…;`) are removed before rendering, so they never
break the record's prefix. The list is configurable per agent loop (`gateway.volatile_lines`).
Images in user turns and tool results become `IMAGE_PLACEHOLDER` (counted), since the record is text tokens.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

# Regular expressions, each matching one whole line (re.fullmatch) of a system prompt to drop before rendering.
VOLATILE_LINES: tuple[str, ...] = (r"x-anthropic-billing-header:.*",)
IMAGE_PLACEHOLDER = "[image omitted]"
IMAGE_TYPES = ("image", "image_url", "input_image")


def volatile_filter(patterns: tuple[str, ...] | list[str]) -> re.Pattern[str] | None:
    """One compiled pattern matching any volatile line (with its newline), or None for an empty list."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:^(?:{p})$\\n?)" for p in patterns), re.MULTILINE)


def strip_volatile(text: str, volatile: re.Pattern[str] | None) -> str:
    return volatile.sub("", text) if volatile is not None else text


class BadRequest(ValueError):
    """A request the protocol layer rejects with 400 (message names the field)."""


def text_of(content: Any, field: str, counts: Counter[str] | None = None) -> str:
    """A message's content as text: a string, or a list of text parts/blocks; images become a placeholder
    (counted in `counts["images"]`), other parts are refused."""
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
            elif isinstance(part, dict) and part.get("type") in IMAGE_TYPES:
                parts.append(IMAGE_PLACEHOLDER)
                if counts is not None:
                    counts["images"] += 1
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                msg = f"{field}: content part of type {kind!r} is not supported (text and images only)"
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


def call_key(call_id: str) -> str:
    """A tool-call id without its protocol prefix (`call_…` for OpenAI, `toolu_…` for Anthropic)."""
    return call_id.split("_", 1)[-1]


def _call_ids(message: dict[str, Any]) -> list[str]:
    return [call_key(str(c.get("id") or "")) for c in message.get("tool_calls") or ()]


def same_turn(record: dict[str, Any], sent: dict[str, Any], issued: set[str] | frozenset[str] = frozenset()) -> bool:
    """Whether the agent's turn `sent` is the record's turn: by lineage (the tool-call ids the gateway issued for
    it, in order) for the gateway's own assistant turns, else by what the model saw."""
    if record["role"] == "assistant" and sent["role"] == "assistant":
        ids = _call_ids(record)
        if ids and all(i in issued for i in ids) and _call_ids(sent) == ids:
            return True
    return _key(record) == _key(sent)


def same_turns(
    a: list[dict[str, Any]], b: list[dict[str, Any]], issued: set[str] | frozenset[str] = frozenset()
) -> bool:
    """Whether two histories show the model the same turns (see the module docstring)."""
    return len(a) == len(b) and all(same_turn(x, y, issued) for x, y in zip(a, b, strict=True))


def tools_key(tools: list[dict[str, Any]] | None) -> str:
    return json.dumps(tools or [], sort_keys=True)
