"""One conversation of a session: its token record (segments), its lock and its limits.

A segment is one continuous token stream: its first prompt (rendered with the model's chat template by verl's
Continuous Token builder), then, per call, the new context tokens (mask 0, log-prob 0) and the generated tokens
exactly as `generate` returned them (mask 1, their log-probs). A call is *planned* first (`Conversation.plan`:
which segment it extends and the prompt ids, nothing changed) and *committed* only once `generate` returned
(`Conversation.commit`), so a failed `generate` leaves the record as it was and the agent's retry continues it.

- A call whose messages extend a segment's history (lineage: messages.same_turns, with the session's issued
  tool-call ids) continues it: only the appended messages are rendered (verl's `merge_context_tokens`); the
  assistant turns already in the record are never re-tokenized.
- A call identical to the segment's last call (the reply was generated but never reached the agent: a client
  timeout, a dropped connection) replaces that call: the undelivered generation is dropped and counted
  (`undelivered_tokens`), the new one is recorded in its place.
- Anything else (compaction, an edited turn, changed tools) starts a new segment: a *rewrite*.

Limits: the first segment's prompt must fit `prompt_length`; every segment's tokens must fit `prompt_length +
response_length`, the response part being what follows `min(prompt, prompt_length)` tokens (a late rewrite
whose rendered history is longer than `prompt_length` keeps the excess as mask-0 response tokens, so it is not
ended as `overlong` while the rollout's budget still holds it).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from harbor_ray.verl.gateway import messages as M


class ContextTooLong(ValueError):
    """The prompt does not fit the rollout's prompt/response budget; the conversation is overlong."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(tokens, limit)
        self.tokens, self.limit = tokens, limit

    def __str__(self) -> str:
        return f"This model's maximum context length is {self.limit} tokens; the request has {self.tokens} tokens"


@dataclass
class Segment:
    messages: list[dict[str, Any]]
    tools_key: str
    ids: list[int]
    prompt_len: int
    mask: list[int] = field(default_factory=list)  # response side: len(ids) - prompt_len
    logprobs: list[float] = field(default_factory=list)
    generations: int = 0
    last_generation: int = -1  # the session's call number of its latest generation
    # The latest call: its messages' count and where its generation starts in `ids` (for an undelivered retry).
    last_call: tuple[int, int] | None = None

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len


@dataclass
class Plan:
    """What a call will do to the record once `generate` returned: the prompt ids and where they go."""

    segment: Segment | None  # None: a new segment
    messages: list[dict[str, Any]]  # the segment's history with this call's new messages (the record's turns)
    ids: list[int]
    mask: list[int]
    logprobs: list[float]
    prompt_len: int
    tools_key: str
    undelivered: int = 0  # tokens of a generated-but-undelivered reply this call replaces


class Conversation:
    """A lineage of calls sharing a first turn: the main agent's, a sub-agent's, a title call's…"""

    def __init__(self, index: int, system: str, first_user: str, tools_key: str) -> None:
        self.index = index
        self.system = system
        self.first_user = first_user
        self.tools_key = tools_key  # its first call's tools
        self.segments: list[Segment] = []
        self.lock = asyncio.Lock()  # one call at a time per conversation: each call extends its record
        self.overlong = False
        self.calls = 0
        self.rewrites = 0
        self.undelivered_tokens = 0
        self.generated_tokens = 0

    # --- routing --------------------------------------------------------------------------------------

    def extended_by(self, messages: list[dict[str, Any]], issued: set[str]) -> bool:
        """Whether this call continues one of this conversation's segments (or repeats its last call)."""
        return any(_extends(s, messages, issued) or _repeats(s, messages, issued) for s in self.segments)

    # --- planning and committing ----------------------------------------------------------------------

    def plan(self, backend: Any, messages: list[dict[str, Any]], tools: Any, tools_key: str, issued: set[str]) -> Plan:
        """The call's prompt, nothing changed yet (see the module docstring for the three cases)."""
        for segment in reversed(self.segments):
            if segment.tools_key == tools_key and _extends(segment, messages, issued):
                seen = len(segment.messages)
                updated = segment.messages + messages[seen:]
                try:
                    merge = backend.builder.merge_context_tokens(segment.messages, updated, segment.ids, tools=tools)
                except ValueError:  # verl's builder cannot append these turns (e.g. two user turns in a row)
                    break
                mask, logprobs = backend.builder.align_response_metadata(merge, segment.mask, segment.logprobs)
                return Plan(
                    segment, updated, merge.token_ids, mask, list(logprobs or []), segment.prompt_len, tools_key
                )
        latest = self.latest()
        if latest is not None and latest.tools_key == tools_key and _repeats(latest, messages, issued):
            count, start = latest.last_call  # type: ignore[misc]
            cut = start - latest.prompt_len
            return Plan(
                latest,
                latest.messages[:count],
                latest.ids[:start],
                latest.mask[: max(cut, 0)],
                latest.logprobs[: max(cut, 0)],
                latest.prompt_len,
                tools_key,
                undelivered=len(latest.ids) - start,
            )
        ids = backend.initial_tokens(messages, tools, tools_key)
        return Plan(None, list(messages), ids, [], [], len(ids), tools_key)

    def check(self, plan: Plan, prompt_length: int, response_length: int) -> int:
        """The room left for this call's generation; raises ContextTooLong (and marks the conversation)."""
        first = not self.segments or plan.segment is self.segments[0]
        if first and plan.prompt_len > prompt_length:
            self.overlong = True
            raise ContextTooLong(plan.prompt_len, prompt_length)
        room = response_length - (len(plan.ids) - min(plan.prompt_len, prompt_length))
        if room <= 0 or self.overlong:
            self.overlong = True
            raise ContextTooLong(len(plan.ids), prompt_length + response_length)
        return room

    def commit(
        self, plan: Plan, ids: list[int], logprobs: list[float] | None, reply: dict[str, Any], call: int
    ) -> Segment:
        segment = plan.segment
        if segment is None:
            if self.segments:
                self.rewrites += 1
            segment = Segment(messages=[], tools_key=plan.tools_key, ids=[], prompt_len=plan.prompt_len)
            self.segments.append(segment)
        if plan.undelivered:
            segment.generations -= 1
            self.undelivered_tokens += plan.undelivered
            self.generated_tokens -= plan.undelivered
        segment.last_call = (len(plan.messages), len(plan.ids))
        segment.ids = plan.ids + list(ids)
        segment.mask = plan.mask + [1] * len(ids)
        segment.logprobs = plan.logprobs + (list(logprobs) if logprobs else [0.0] * len(ids))
        segment.messages = plan.messages + [reply]
        segment.generations += 1
        segment.last_generation = call
        self.generated_tokens += len(ids)
        return segment

    # --- the record -----------------------------------------------------------------------------------

    def latest(self) -> Segment | None:
        generated = [s for s in self.segments if s.generations]
        return max(generated, key=lambda s: s.last_generation) if generated else None

    @property
    def has_tools(self) -> bool:
        return any(s.tools_key != "[]" for s in self.segments)

    @property
    def generations(self) -> int:
        return sum(s.generations for s in self.segments)


def _extends(segment: Segment, messages: list[dict[str, Any]], issued: set[str]) -> bool:
    seen = len(segment.messages)
    return (
        len(messages) > seen
        and messages[-1]["role"] != "assistant"
        and M.same_turns(segment.messages, messages[:seen], issued)
    )


def _repeats(segment: Segment, messages: list[dict[str, Any]], issued: set[str]) -> bool:
    """The agent sent its last call again: the reply the record holds never reached it."""
    if segment.last_call is None:
        return False
    count = segment.last_call[0]
    return len(messages) == count and M.same_turns(segment.messages[:count], messages, issued)
