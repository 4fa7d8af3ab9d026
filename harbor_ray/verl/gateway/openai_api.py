"""OpenAI Chat Completions on the wire: request -> ChatRequest, Completion -> response or SSE chunks, error bodies."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from harbor_ray.verl.gateway import messages as M
from harbor_ray.verl.gateway.engine import ChatRequest, Completion

ROLES = {"system", "developer", "user", "assistant", "tool"}


def parse_request(body: Any, volatile: re.Pattern[str] | None = None) -> ChatRequest:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        msg = "messages: required, a list of chat messages"
        raise M.BadRequest(msg)
    out: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    for i, raw in enumerate(body["messages"]):
        field = f"messages[{i}]"
        if not isinstance(raw, dict) or raw.get("role") not in ROLES:
            msg = f"{field}.role: one of {', '.join(sorted(ROLES))}"
            raise M.BadRequest(msg)
        role = "system" if raw["role"] == "developer" else raw["role"]
        text = M.text_of(raw.get("content"), f"{field}.content", counts)
        if role == "system":
            text = M.strip_volatile(text, volatile)
        message: dict[str, Any] = {"role": role, "content": text}
        if role == "assistant" and raw.get("tool_calls"):
            try:
                message["tool_calls"] = [
                    M.tool_call(c.get("id", ""), c["function"]["name"], c["function"].get("arguments", ""))
                    for c in raw["tool_calls"]
                ]
            except (KeyError, TypeError, AttributeError) as e:
                msg = f"{field}.tool_calls: each needs function.name and function.arguments"
                raise M.BadRequest(msg) from e
        if role == "tool":
            message["tool_call_id"] = str(raw.get("tool_call_id", ""))
        out.append(message)
    tools = body.get("tools") or None
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) and "function" in t for t in tools)
    ):
        msg = "tools: a list of {type: function, function: {name, parameters}}"
        raise M.BadRequest(msg)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
        msg = "max_tokens: a positive integer"
        raise M.BadRequest(msg)
    return ChatRequest(out, tools, max_tokens, parse_tools=body.get("tool_choice") != "none", counts=counts)


def _calls(completion: Completion) -> list[dict[str, Any]]:
    return [
        {
            "id": c["id"],
            "type": "function",
            "function": {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])},
        }
        for c in completion.tool_calls
    ]


def _arguments(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def _usage(c: Completion) -> dict[str, int]:
    return {
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    }


def response(c: Completion, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": c.content or (None if c.tool_calls else "")}
    if c.tool_calls:
        message["tool_calls"] = _calls(c)
    return {
        "id": f"chatcmpl-{c.id}",
        "object": "chat.completion",
        "created": c.created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": c.finish, "logprobs": None}],
        "usage": _usage(c),
    }


def stream(c: Completion, model: str, include_usage: bool) -> Iterator[bytes]:
    """The whole reply as SSE chunks (generation is not incremental; the chunks follow OpenAI's sequence)."""
    base = {"id": f"chatcmpl-{c.id}", "object": "chat.completion.chunk", "created": c.created, "model": model}

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        data = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}], **extra}
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    yield chunk({"role": "assistant", "content": ""})
    if c.content:
        yield chunk({"content": c.content})
    for i, call in enumerate(_calls(c)):
        yield chunk({"tool_calls": [{"index": i, **call}]})
    yield chunk({}, c.finish)
    if include_usage:
        yield b"data: " + json.dumps({**base, "choices": [], "usage": _usage(c)}).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


def error(message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
