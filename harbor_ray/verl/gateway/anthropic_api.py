"""Anthropic Messages on the wire: request -> ChatRequest, Completion -> message or its SSE event sequence, errors.

System prompt and text blocks become system/user/assistant turns; `tool_use` blocks become assistant tool calls
and `tool_result` blocks tool turns (in order, before the user's text of the same message), as verl's chat
templates expect. Thinking blocks sent back by the client are dropped (the record keeps the tokens).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

from harbor_ray.verl.gateway import messages as M
from harbor_ray.verl.gateway.engine import ChatRequest, Completion

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def _blocks(content: Any, field: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    msg = f"{field}: a string or a list of content blocks"
    raise M.BadRequest(msg)


def _turns(i: int, raw: Any, counts: Counter[str]) -> list[dict[str, Any]]:
    field = f"messages[{i}]"
    if not isinstance(raw, dict) or raw.get("role") not in ("user", "assistant"):
        msg = f"{field}.role: user or assistant"
        raise M.BadRequest(msg)
    blocks = _blocks(raw.get("content"), f"{field}.content")
    if raw["role"] == "assistant":
        text = M.text_of([b for b in blocks if b.get("type") != "tool_use"], f"{field}.content", counts)
        calls = [
            M.tool_call(b.get("id", ""), b.get("name", ""), b.get("input") or {})
            for b in blocks
            if b.get("type") == "tool_use"
        ]
        return [M.assistant(text, calls)]
    turns: list[dict[str, Any]] = []
    rest = []
    for b in blocks:
        if b.get("type") == "tool_result":
            content = b.get("content")
            text = M.text_of(content if content is not None else "", f"{field}.content.tool_result", counts)
            if b.get("is_error"):
                text = f"[error] {text}"
            turns.append({"role": "tool", "content": text, "tool_call_id": str(b.get("tool_use_id", ""))})
        else:
            rest.append(b)
    if rest or not turns:
        turns.append({"role": "user", "content": M.text_of(rest, f"{field}.content", counts)})
    return turns


def _system(raw: Any, volatile: re.Pattern[str] | None) -> str:
    """The system blocks as one text, each block without its volatile lines (a block that was only volatile
    lines, like claude-code's billing-header block, disappears)."""
    blocks = _blocks(raw, "system")
    return "".join(M.strip_volatile(M.text_of([b], "system"), volatile) for b in blocks)


def parse_request(body: Any, volatile: re.Pattern[str] | None = None) -> ChatRequest:
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        msg = "messages: required, a list of messages"
        raise M.BadRequest(msg)
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or max_tokens < 1:
        msg = "max_tokens: required, a positive integer"
        raise M.BadRequest(msg)
    out: list[dict[str, Any]] = []
    counts: Counter[str] = Counter()
    system = _system(body["system"], volatile) if body.get("system") else ""
    if system:
        out.append({"role": "system", "content": system})
    for i, raw in enumerate(body["messages"]):
        out.extend(_turns(i, raw, counts))
    tools = None
    if body.get("tools"):
        try:
            tools = [
                {
                    "type": "function",
                    "function": {
                        "name": t["name"],
                        "description": t.get("description", ""),
                        "parameters": t.get("input_schema") or {"type": "object"},
                    },
                }
                for t in body["tools"]
            ]
        except (KeyError, TypeError) as e:
            msg = "tools: a list of {name, description, input_schema}"
            raise M.BadRequest(msg) from e
    choice = body.get("tool_choice") or {}
    return ChatRequest(
        out,
        tools,
        max_tokens,
        parse_tools=not (isinstance(choice, dict) and choice.get("type") == "none"),
        counts=counts,
    )


def _content(c: Completion) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": c.content}] if c.content or not c.tool_calls else []
    for call in c.tool_calls:
        args = call["function"]["arguments"]
        blocks.append(
            {
                "type": "tool_use",
                "id": "toolu_" + call["id"].removeprefix("call_"),
                "name": call["function"]["name"],
                "input": args if isinstance(args, dict) else {"raw": args},
            }
        )
    return blocks


def response(c: Completion, model: str) -> dict[str, Any]:
    return {
        "id": f"msg_{c.id}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": _content(c),
        "stop_reason": STOP_REASONS[c.finish],
        "stop_sequence": None,
        "usage": {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens},
    }


def stream(c: Completion, model: str) -> Iterator[bytes]:
    """message_start, per block content_block_start/delta/stop, message_delta, message_stop."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    head = {**response(c, model), "content": [], "stop_reason": None}
    head["usage"] = {"input_tokens": c.prompt_tokens, "output_tokens": 0}
    yield event("message_start", {"message": head})
    for i, block in enumerate(_content(c)):
        if block["type"] == "text":
            yield event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}})
            yield event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": block["text"]}})
        else:
            yield event("content_block_start", {"index": i, "content_block": {**block, "input": {}}})
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            yield event("content_block_delta", {"index": i, "delta": delta})
        yield event("content_block_stop", {"index": i})
    yield event(
        "message_delta",
        {
            "delta": {"stop_reason": STOP_REASONS[c.finish], "stop_sequence": None},
            "usage": {"output_tokens": c.completion_tokens},
        },
    )
    yield event("message_stop", {})


ERROR_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    500: "api_error",
}


def error(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
