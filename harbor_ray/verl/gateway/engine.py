"""One model call of a session, protocol-neutral: record the prompt, `generate`, parse tool calls, record the reply.

Sampling is the trainer's (`Backend.sampling_params`, what verl passed to the agent loop): the agent's own
temperature/top_p are ignored so that rollouts stay on-policy; the agent's `max_tokens` is honoured, capped by
what is left of the rollout's response budget. Tool calls are parsed by verl's parser for
`multi_turn.format`, from the generated ids without their end-of-turn token.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from harbor_ray.verl.gateway import messages as M
from harbor_ray.verl.gateway.session import Session, SessionClosed


@dataclass
class ChatRequest:
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools
    max_tokens: int | None = None
    parse_tools: bool = True  # False for tool_choice "none"
    counts: Counter[str] = field(default_factory=Counter)  # images replaced by placeholders


@dataclass
class Completion:
    content: str
    tool_calls: list[dict[str, Any]]  # canonical (messages.tool_call)
    finish: str  # "stop" | "length" | "tool_calls"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])


async def complete(session: Session, request: ChatRequest) -> Completion:
    """Raises SessionClosed (409) or ContextTooLong (the protocol's context-length error; the conversation is
    overlong). A failing `generate` raises and leaves the record as it was."""
    if not request.messages:
        msg = "messages: at least one message is required"
        raise M.BadRequest(msg)
    if session.closed:
        msg = f"session {session.id} is closed (its trial has ended)"
        raise SessionClosed(msg)
    backend = session.backend
    session.calls += 1
    session.counts_in.update(request.counts)
    tools_key = M.tools_key(request.tools)
    conversation = session.route(request.messages, tools_key)
    async with conversation.lock:
        if session.closed:
            msg = f"session {session.id} is closed (its trial has ended)"
            raise SessionClosed(msg)
        conversation.calls += 1
        call = session.calls
        plan = conversation.plan(backend, request.messages, request.tools, tools_key, session.issued)
        room = conversation.check(plan, backend.prompt_length, backend.response_length)
        max_tokens = min(request.max_tokens or room, room)
        params = {**backend.sampling_params, "max_tokens": max_tokens}
        if backend.tool_parser.stop_token_ids:
            params["stop_token_ids"] = sorted(
                set(params.get("stop_token_ids") or ()) | set(backend.tool_parser.stop_token_ids)
            )
        started = time.perf_counter()
        try:
            out = await backend.server_manager.generate(
                request_id=session.id, prompt_ids=list(plan.ids), sampling_params=params
            )
        finally:
            session.generate_s += time.perf_counter() - started
        ids = list(out.token_ids)
        session.generated_tokens += len(ids)
        body = list(ids)
        stop_ids = backend.stop_ids
        stopped = bool(body) and body[-1] in stop_ids
        while body and body[-1] in stop_ids:
            body.pop()
        calls: list[dict[str, Any]] = []
        if request.tools and request.parse_tools:
            content, parsed = await _parse_tools(backend, body)
            calls = [M.tool_call(f"call_{uuid.uuid4().hex[:16]}", c.name, c.arguments) for c in parsed]
            session.issued.update(M.call_key(c["id"]) for c in calls)
        else:
            content = backend.tokenizer.decode(body, skip_special_tokens=True)
        content = content.strip()
        conversation.commit(plan, ids, out.log_probs, M.assistant(content, calls), call)
    finish = "tool_calls" if calls else ("stop" if stopped or len(ids) < max_tokens else "length")
    return Completion(content, calls, finish, len(plan.ids), len(ids), token_ids=ids)


async def _parse_tools(backend: Any, body: list[int]) -> tuple[str, list[Any]]:
    """verl's parser for `multi_turn.format`; a reply without the format's start token is its text as the parser
    would return it, without the parser's thread-pool hop (verl decodes in the default executor: ~0.2 ms, more
    under load, on every call)."""
    parser = backend.tool_parser
    start = getattr(parser, "tool_call_start_token", None)
    if isinstance(start, str) and start:
        text = backend.tokenizer.decode(body)
        if start not in text:
            return text, []
    content, parsed = await parser.extract_tool_calls(body, None)
    return content, list(parsed)
