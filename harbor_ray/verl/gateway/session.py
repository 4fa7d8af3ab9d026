"""A gateway session: one trial's token record, built from what `server_manager.generate` returned.

The record is a list of segments. A segment is one continuous token stream: its first prompt (rendered with
the model's chat template by verl's Continuous Token builder, as verl renders prompts), then, per call, the
new context tokens (mask 0, log-prob 0) and the generated tokens exactly as `generate` returned them (mask 1,
their log-probs). A call whose messages extend a segment's history (same turns, same tools) continues it: only
the appended messages are rendered (verl's `merge_context_tokens`), the assistant turns already in the record
are never re-tokenized. A call that does not (the agent compacted or edited its history, changed its tools, or
retried a turn) starts a new segment and counts as a *rewrite*. What the trainer gets (`Session.result`) is one
segment, chosen by the rewrite policy (see `RewritePolicy`).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from harbor_ray.verl.gateway import messages as M


class RewritePolicy(StrEnum):
    """What a session with rewrites gives the trainer.

    `last_segment` (default): the segment that holds the latest generation (the one that ends in the final
    answer), trained on as usual; earlier segments are dropped and counted (`gateway/dropped_tokens`).
    `mask`: the same segment, but with its whole response masked: no gradient from a rewritten trajectory.
    """

    LAST_SEGMENT = "last_segment"
    MASK = "mask"


class SessionClosed(RuntimeError):
    """The trial ended; a late call from its agent gets 409."""


class ContextTooLong(ValueError):
    """The prompt does not fit the rollout's prompt/response budget; the trial ends as `overlong`."""

    def __init__(self, tokens: int, limit: int) -> None:
        super().__init__(tokens, limit)
        self.tokens, self.limit = tokens, limit

    def __str__(self) -> str:
        return f"This model's maximum context length is {self.limit} tokens; the request has {self.tokens} tokens"


@dataclass
class Backend:
    """What a session generates with: the loop's server manager and tokenizer, and verl's rollout limits."""

    server_manager: Any
    tokenizer: Any
    builder: Any  # verl's ContinuousTokenBuilder for this model
    tool_parser: Any  # verl's ToolParser for multi_turn.format
    sampling_params: dict[str, Any]
    prompt_length: int
    response_length: int
    model_name: str = "policy"

    @property
    def stop_ids(self) -> set[int]:
        ids = set(self.tool_parser.stop_token_ids or ())
        for token in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id):
            if token is not None:
                ids.add(int(token))
        return ids


@dataclass
class Segment:
    messages: list[dict[str, Any]]
    tools_key: str
    ids: list[int]
    prompt_len: int
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    generations: int = 0
    last_generation: int = -1  # the session's call number of its latest generation

    @property
    def response_len(self) -> int:
        return len(self.ids) - self.prompt_len


@dataclass
class Record:
    """The trainer's view of a session (one segment) plus the gateway's counts for metrics."""

    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    response_logprobs: list[float]
    generations: int
    counts: dict[str, float]


class Session:
    def __init__(self, backend: Backend, session_id: str | None = None) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.backend = backend
        self.segments: list[Segment] = []
        self.lock = asyncio.Lock()  # one call at a time: each call extends the record
        self.closed = False
        self.overlong = False
        self.calls = 0
        self.rewrites = 0
        self.errors = 0
        self.generate_s = 0.0  # time spent in server_manager.generate

    def continue_or_start(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> Segment:
        """The segment this call extends (appending its new context tokens), or a new one (a rewrite)."""
        key = M.tools_key(tools)
        for segment in reversed(self.segments):
            seen = len(segment.messages)
            if (
                segment.tools_key == key
                and len(messages) > seen
                and M.same_turns(segment.messages, messages[:seen])
                and messages[-1]["role"] != "assistant"
            ):
                updated = segment.messages + messages[seen:]
                try:
                    merge = self.backend.builder.merge_context_tokens(
                        segment.messages, updated, segment.ids, tools=tools
                    )
                except ValueError:  # verl's builder cannot append these turns (e.g. two user turns in a row)
                    break
                segment.mask, segment.logprobs = self.backend.builder.align_response_metadata(
                    merge, segment.mask, segment.logprobs
                )
                segment.ids = merge.token_ids
                segment.messages = updated
                return segment
        ids = list(self.backend.builder.build_initial_tokens(messages, tools=tools))
        if self.segments:
            self.rewrites += 1
        segment = Segment(messages=list(messages), tools_key=key, ids=ids, prompt_len=len(ids))
        self.segments.append(segment)
        return segment

    def record_generation(self, segment: Segment, ids: list[int], logprobs: list[float] | None, reply: dict) -> None:
        segment.ids = segment.ids + list(ids)
        segment.mask = segment.mask + [1] * len(ids)
        segment.logprobs = segment.logprobs + (list(logprobs) if logprobs else [0.0] * len(ids))
        segment.messages = segment.messages + [reply]
        segment.generations += 1
        segment.last_generation = self.calls

    def result(self, policy: RewritePolicy = RewritePolicy.LAST_SEGMENT) -> Record | None:
        """The segment the trainer gets, or None when nothing was generated."""
        generated = [s for s in self.segments if s.generations]
        if not generated:
            return None
        chosen = max(generated, key=lambda s: s.last_generation)
        mask = chosen.mask if policy == RewritePolicy.LAST_SEGMENT or not self.rewrites else [0] * len(chosen.mask)
        dropped = sum(len(s.ids) for s in self.segments if s is not chosen)
        return Record(
            prompt_ids=chosen.ids[: chosen.prompt_len],
            response_ids=chosen.ids[chosen.prompt_len :],
            response_mask=list(mask),
            response_logprobs=list(chosen.logprobs),
            generations=chosen.generations,
            counts=self.counts(dropped),
        )

    def counts(self, dropped_tokens: int = 0) -> dict[str, float]:
        return {
            "gateway/calls": float(self.calls),
            "gateway/rewrites": float(self.rewrites),
            "gateway/segments": float(len(self.segments)),
            "gateway/dropped_tokens": float(dropped_tokens),
            "gateway/errors": float(self.errors),
            "gateway/overlong": float(self.overlong),
            "gateway/generate_s": round(self.generate_s, 6),
        }
