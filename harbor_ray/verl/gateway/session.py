"""A gateway session: one trial's calls, sorted into conversations, and the token record the trainer gets.

An agent's calls are not one conversation: claude-code asks for a title or topic with another system prompt,
runs Task sub-agents (another system prompt, the sub-task as first message) next to its main loop, and may
compact its history. A call goes to (`Session.route`):
1. the conversation one of whose segments it continues (by lineage: messages.same_turns) or repeats;
2. else the latest conversation with the same system prompt, or with the same first user message and tools
   (compaction, an edited turn, changed tools, a system line that changes on every call and is not in the
   volatile list: a rewrite there, counted; a title call that repeats the task has no tools);
3. else a new conversation.
Each conversation has its own lock, record and limits (`conversation.py`), so parallel sub-agents do not
serialize each other and a sub-agent's overflow does not end the main agent.

The *main* conversation is what the trainer gets (`Session.result`): among the conversations whose first user
message contains the task's instruction (`Session.task`, when given; else all of them), the one with tools
and then the most calls (earliest on ties). A title call repeats the instruction but has no tools; a sub-agent
has tools but starts from its own sub-task. Side conversations are counted (`gateway/side_calls`,
`gateway/side_tokens`) and never trained with the main reward nor counted as rewrites of it; a trial that ends
while a sub-agent runs trains the main conversation. The record is one segment of the main conversation,
chosen by the rewrite policy (see `RewritePolicy`).
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from harbor_ray.verl.gateway import messages as M
from harbor_ray.verl.gateway.conversation import ContextTooLong, Conversation, Segment

__all__ = ["Backend", "ContextTooLong", "Record", "RewritePolicy", "Session", "SessionClosed"]


class RewritePolicy(StrEnum):
    """What a session whose main conversation has rewrites gives the trainer.

    `last_segment` (default): the segment that holds the main conversation's latest generation (the one that
    ends in the final answer), trained on as usual; its other segments are dropped and counted
    (`gateway/dropped_tokens`). `mask`: the same segment with its whole response masked.
    """

    LAST_SEGMENT = "last_segment"
    MASK = "mask"


class SessionClosed(RuntimeError):
    """The trial ended; a late call from its agent gets 409."""


# First prompts rendered recently, per tokenizer and chat-template kwargs: the n samples of a task (and every
# sub-agent of a kind) share their first prompt, so it is rendered once, not once per session.
_INITIAL_CACHE: OrderedDict[tuple[int, str], list[int]] = OrderedDict()
_INITIAL_CACHE_SIZE = 256


@dataclass
class Backend:
    """What a session generates with: the loop's server manager and tokenizer, and verl's rollout limits.

    `volatile_lines`: regular expressions of system-prompt lines to drop before rendering (messages.VOLATILE_LINES).
    """

    server_manager: Any
    tokenizer: Any
    builder: Any  # verl's ContinuousTokenBuilder for this model
    tool_parser: Any  # verl's ToolParser for multi_turn.format
    sampling_params: dict[str, Any]
    prompt_length: int
    response_length: int
    model_name: str = "policy"
    volatile_lines: tuple[str, ...] = M.VOLATILE_LINES
    volatile: re.Pattern[str] | None = field(init=False, repr=False, default=None)
    stop_ids: frozenset[int] = field(init=False, repr=False, default=frozenset())

    def __post_init__(self) -> None:
        self.volatile = M.volatile_filter(tuple(self.volatile_lines))
        ids = set(self.tool_parser.stop_token_ids or ())
        for token in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id):
            if token is not None:
                ids.add(int(token))
        self.stop_ids = frozenset(ids)

    def initial_tokens(self, messages: list[dict[str, Any]], tools: Any, tools_key: str) -> list[int]:
        """verl's rendering of a first prompt (`build_initial_tokens`), from a small cache of recent ones."""
        key = (id(self.builder), tools_key + json.dumps(messages, sort_keys=True, ensure_ascii=False))
        ids = _INITIAL_CACHE.get(key)
        if ids is None:
            ids = list(self.builder.build_initial_tokens(messages, tools=tools))
            _INITIAL_CACHE[key] = ids
            while len(_INITIAL_CACHE) > _INITIAL_CACHE_SIZE:
                _INITIAL_CACHE.popitem(last=False)
        else:
            _INITIAL_CACHE.move_to_end(key)
        return list(ids)


@dataclass
class Record:
    """The trainer's view of a session (one segment of its main conversation) plus the gateway's counts."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    generations: int
    counts: dict[str, float]


def _first(messages: list[dict[str, Any]], role: str) -> str:
    return next((str(m.get("content") or "") for m in messages if m["role"] == role), "")


class Session:
    def __init__(self, backend: Backend, session_id: str | None = None, task: str | None = None) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.backend = backend
        self.task = " ".join(task.split()) if task else None  # whitespace-normalized instruction
        self.conversations: list[Conversation] = []
        self.issued: set[str] = set()  # tool-call ids (without prefix) this session's replies carried
        self.closed = False
        self.calls = 0
        self.generated_tokens = 0  # every token `generate` returned, in any conversation, delivered or not
        self.errors = 0
        self.counts_in: Counter[str] = Counter()  # images replaced by placeholders, …
        self.generate_s = 0.0  # time spent in server_manager.generate

    def route(self, messages: list[dict[str, Any]], tools_key: str) -> Conversation:
        """The conversation this call belongs to (see the module docstring)."""
        for conv in reversed(self.conversations):
            if conv.extended_by(messages, self.issued):
                return conv
        system, first_user = _first(messages, "system"), _first(messages, "user")
        for conv in reversed(self.conversations):
            if conv.system == system or (conv.first_user == first_user and conv.tools_key == tools_key):
                return conv
        conv = Conversation(len(self.conversations), system, first_user, tools_key)
        self.conversations.append(conv)
        return conv

    # --- what the trainer gets ------------------------------------------------------------------------

    @property
    def main(self) -> Conversation | None:
        started = [c for c in self.conversations if c.calls]
        if self.task:
            with_task = [c for c in started if self.task in " ".join(c.first_user.split())]
            started = with_task or started
        if not started:
            return None
        return max(started, key=lambda c: (c.has_tools, c.calls, -c.index))

    @property
    def overlong(self) -> bool:
        """Whether the main conversation ran out of its budget (the trial's `overlong`)."""
        main = self.main
        return bool(main and main.overlong)

    @property
    def segments(self) -> list[Segment]:
        main = self.main
        return main.segments if main else []

    @property
    def rewrites(self) -> int:
        main = self.main
        return main.rewrites if main else 0

    def result(self, policy: RewritePolicy = RewritePolicy.LAST_SEGMENT) -> Record | None:
        """The main conversation's segment the trainer gets, or None when it generated nothing."""
        main = self.main
        chosen = main.latest() if main else None
        if main is None or chosen is None:
            return None
        mask = chosen.mask if policy == RewritePolicy.LAST_SEGMENT or not main.rewrites else [0] * len(chosen.mask)
        # A rewrite's prompt longer than prompt_length: the excess is context on the response side (mask 0).
        cut = min(chosen.prompt_len, self.backend.prompt_length)
        extra = chosen.prompt_len - cut
        dropped = sum(len(s.ids) for s in main.segments if s is not chosen)
        return Record(
            prompt_ids=chosen.ids[:cut],
            response_ids=chosen.ids[cut:],
            response_mask=[0] * extra + list(mask),
            response_logprobs=[0.0] * extra + list(chosen.logprobs),
            generations=chosen.generations,
            counts=self.counts(dropped),
        )

    def counts(self, dropped_tokens: int = 0) -> dict[str, float]:
        main = self.main
        side = [c for c in self.conversations if c is not main]
        return {
            "gateway/calls": float(self.calls),
            "gateway/rewrites": float(main.rewrites if main else 0),
            "gateway/segments": float(len(main.segments) if main else 0),
            "gateway/dropped_tokens": float(dropped_tokens),
            "gateway/undelivered_tokens": float(main.undelivered_tokens if main else 0),
            "gateway/conversations": float(len(self.conversations)),
            "gateway/side_calls": float(sum(c.calls for c in side)),
            "gateway/side_tokens": float(sum(c.generated_tokens for c in side)),
            "gateway/images": float(self.counts_in["images"]),
            "gateway/errors": float(self.errors),
            "gateway/overlong": float(bool(main and main.overlong)),
            "gateway/generate_s": round(self.generate_s, 6),
        }
