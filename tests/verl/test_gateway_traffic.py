"""Real clients' traffic through the gateway: claude-code's and opencode's request sequences, replayed over HTTP.

Each fixture in tests/verl/fixtures/traffic/ (sources cited in the file) is a sequence of calls as the client
sends them: its conversations (system prompt, first message, tools), per call the policy's reply (scripted: the
only fake) and what the client sends back (tool results, the sub-agent's report). `replay` drives it through the
official `anthropic` / `openai` SDK against the gateway, echoing the assistant turns as the client does (with the
client's re-serialization, and claude-code's billing-header line changing on every request). For each fixture:
calls, conversations, segments, trained and dropped tokens, and the trained record is the main conversation's,
token-faithful (its mask-1 ids are exactly those the scripted policy generated for the main conversation's calls).
Also: a retry after an HTTP 500 from `generate` and after a client timeout continues the record.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from verl_harness import ScriptedServerManager, gateway_backend

pytestmark = [pytest.mark.verl, pytest.mark.gateway]

TRAFFIC = Path(__file__).resolve().parent / "fixtures" / "traffic"
FIXTURES = sorted(p.name for p in TRAFFIC.glob("*.json"))


def load(name: str) -> dict[str, Any]:
    return json.loads((TRAFFIC / name).read_text())


def policy_text(reply: dict[str, Any]) -> str:
    """What the scripted policy generates for a reply: text, or one hermes tool call."""
    if "tool" in reply:
        return "<tool_call>\n" + json.dumps({"name": reply["tool"], "arguments": reply["input"]}) + "\n</tool_call>"
    return str(reply["text"])


def script(fixture: dict[str, Any], repeat: int | None = None) -> list[str]:
    """The policy's replies in call order; `repeat`: that call's reply twice (the retry of an undelivered one)."""
    texts = [policy_text(step["reply"]) for step in fixture["steps"]]
    if repeat is not None:
        texts.insert(repeat, texts[repeat])
    return texts


def _echo_input(fixture: dict[str, Any], name: str, value: dict[str, Any]) -> dict[str, Any]:
    """The client's re-serialization of its earlier tool call's arguments (fixture["echo"])."""
    rule = (fixture.get("echo") or {}).get(name) or {}
    out = {**value, **{k: v for k, v in (rule.get("defaults") or {}).items() if k not in value}}
    return dict(reversed(list(out.items()))) if rule.get("reorder") else out


class Replay:
    """One client session replaying a fixture; `failures[i]` makes call i fail once ("500" or "timeout")."""

    def __init__(self, fixture: dict[str, Any], base_url: str) -> None:
        self.f = fixture
        self.base_url = base_url
        self.histories: dict[str, list[Any]] = {}
        self.pending: dict[str, list[Any]] = {}  # what a conversation sends back before its next call
        self.last_text: dict[str, str] = {}
        self.task_prompt = ""
        self.requests = 0
        self.retried = 0

    def _fill(self, value: Any) -> Any:
        if isinstance(value, str):
            return value.replace("$task_prompt", self.task_prompt).replace("$task", self.f["task"])
        if isinstance(value, list):
            return [self._fill(v) for v in value]
        if isinstance(value, dict):
            return {k: self._fill(v) for k, v in value.items()}
        return value

    def _system(self, conv: dict[str, Any]) -> Any:
        system = self._fill(conv.get("system"))
        if self.f["client"] == "anthropic" and system is not None and conv.get("billing", True):
            lines = self.f.get("billing") or []
            if lines:  # claude-code: a new billing-header block in system[0] on every request
                system = [{"type": "text", "text": lines[self.requests % len(lines)]}, *system]
        return system

    def _resolve(self, text: str) -> str:
        return self.last_text[text.split(":", 1)[1]] if text.startswith("$last:") else text

    async def call(self, name: str, failure: str | None = None) -> Any:
        conv = self.f["conversations"][name]
        history = self.histories.setdefault(name, [])
        if not history:
            first = self._fill(conv["first"])
            history.append({"role": "user", "content": first})
        for message in self.pending.pop(name, []):
            history.append(self._resolve_message(message))
        if self.f["client"] == "anthropic":
            reply = await self._anthropic(name, conv, history, failure)
        else:
            reply = await self._openai(name, conv, history, failure)
        self.requests += 1
        return reply

    def _resolve_message(self, message: Any) -> Any:
        if self.f["client"] == "anthropic" and isinstance(message["content"], list):
            for block in message["content"]:
                if block.get("type") == "tool_result":
                    block["content"] = self._resolve(block["content"])
        elif message.get("role") == "tool":
            message["content"] = self._resolve(message["content"])
        return message

    async def _retrying(self, send: Any, failure: str | None) -> Any:
        import anthropic
        import openai

        if failure is None:
            return await send(60.0)
        expected = (openai.InternalServerError, anthropic.InternalServerError)
        if failure == "timeout":
            expected = (openai.APITimeoutError, anthropic.APITimeoutError)
        with pytest.raises(expected):
            await send(0.5 if failure == "timeout" else 60.0)
        self.retried += 1
        return await send(60.0)  # the agent's identical retry

    async def _anthropic(self, name: str, conv: dict[str, Any], history: list[Any], failure: str | None) -> Any:
        import anthropic

        client = anthropic.AsyncAnthropic(base_url=self.base_url, api_key="unused", max_retries=0)
        kwargs: dict[str, Any] = {
            "model": "policy",
            "max_tokens": conv.get("max_tokens", self.f.get("max_tokens", 4096)),
        }
        system = self._system(conv)
        if system is not None:
            kwargs["system"] = system
        if conv.get("tools"):
            kwargs["tools"] = self.f["tools"][conv["tools"]]

        async def send(timeout: float) -> Any:
            return await client.with_options(timeout=timeout).messages.create(messages=list(history), **kwargs)

        reply = await self._retrying(send, failure)
        blocks: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        step = self._step
        for block in reply.content:
            if block.type == "text":
                blocks.append({"type": "text", "text": block.text})
                self.last_text[name] = block.text
            elif block.type == "tool_use":
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": block.id,
                        "name": block.name,
                        "input": _echo_input(self.f, block.name, block.input),
                    }
                )
                if block.name == "Task":
                    self.task_prompt = block.input["prompt"]
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": step.get("result", "")})
        history.append({"role": "assistant", "content": blocks})
        if results:
            self.pending.setdefault(name, []).append({"role": "user", "content": results})
        return reply

    async def _openai(self, name: str, conv: dict[str, Any], history: list[Any], failure: str | None) -> Any:
        import openai

        client = openai.AsyncOpenAI(base_url=f"{self.base_url}/v1", api_key="unused", max_retries=0)
        messages = history
        system = self._system(conv)
        if system is not None and (not history or history[0].get("role") != "system"):
            history.insert(0, {"role": "system", "content": system})
        kwargs: dict[str, Any] = {"model": "policy"}
        if conv.get("tools"):
            kwargs["tools"] = self.f["tools"][conv["tools"]]

        async def send(timeout: float) -> Any:
            return await client.with_options(timeout=timeout).chat.completions.create(messages=list(messages), **kwargs)

        reply = await self._retrying(send, failure)
        message = reply.choices[0].message
        echoed: dict[str, Any] = {"role": "assistant", "content": message.content}
        if message.tool_calls:
            echoed["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": json.dumps(
                            _echo_input(self.f, c.function.name, json.loads(c.function.arguments)),
                            separators=(",", ":"),
                        ),
                    },
                }
                for c in message.tool_calls
            ]
            for c in message.tool_calls:
                self.pending.setdefault(name, []).append(
                    {"role": "tool", "tool_call_id": c.id, "content": self._step.get("result", "")}
                )
        else:
            self.last_text[name] = message.content or ""
        history.append(echoed)
        return reply

    async def run(self, upto: int | None = None, failures: dict[int, str] | None = None) -> None:
        for i, step in enumerate(self.f["steps"][:upto]):
            self._step = step
            await self.call(step["conv"], (failures or {}).get(i))


def main_calls(fixture: dict[str, Any], upto: int | None = None) -> list[int]:
    return [i for i, s in enumerate(fixture["steps"][:upto]) if s["conv"] == "main"]


def _open(gateway: Any, tokenizer: Any, fixture: dict[str, Any], texts: list[str], before_turn: Any = None) -> Any:
    manager = ScriptedServerManager(tokenizer, {"": [texts]}, before_turn)
    session = gateway.open(gateway_backend(tokenizer, manager, response_length=4096), task=fixture["task"])
    return session, manager


def _trained(record: Any) -> list[int]:
    return [t for t, m in zip(record.response_ids, record.response_mask, strict=True) if m]


@pytest.mark.parametrize("name", FIXTURES)
async def test_real_client_traffic_keeps_the_main_conversation(gateway, tokenizer, name):
    fixture = load(name)
    session, manager = _open(gateway, tokenizer, fixture, script(fixture))
    await Replay(fixture, gateway.url(session)).run()

    record = session.result()
    sent = manager.sent[session.id]
    expect = fixture["expect"]
    counts = record.counts
    assert (counts["gateway/calls"], counts["gateway/conversations"], counts["gateway/side_calls"]) == (
        expect["calls"],
        expect["conversations"],
        expect["side_calls"],
    )
    assert (counts["gateway/segments"], counts["gateway/rewrites"]) == (expect["segments"], expect["rewrites"])
    assert counts["gateway/dropped_tokens"] == 0
    # The trained record is the main conversation, token-faithful: exactly what generate returned for its calls.
    main_ids = [t for i in main_calls(fixture) for t in sent[i][0]]
    main_lps = [lp for i in main_calls(fixture) for lp in sent[i][1]]
    assert _trained(record) == main_ids
    assert [lp for lp, m in zip(record.response_logprobs, record.response_mask, strict=True) if m] == main_lps
    side = sum(len(sent[i][0]) for i, s in enumerate(fixture["steps"]) if s["conv"] != "main")
    assert counts["gateway/side_tokens"] == side
    # The prompt is verl's rendering of the main conversation's first request, without the billing line.
    prompt = tokenizer.decode(record.prompt_ids)
    assert fixture["task"] in prompt
    assert "x-anthropic-billing-header" not in prompt
    assert "You are an agent for Claude Code" not in tokenizer.decode(record.response_ids)


async def test_a_trial_ending_mid_subagent_trains_the_main_conversation(gateway, tokenizer):
    fixture = load("claude_code_subagent_title.json")
    upto = fixture["ends_mid_subagent_after"]
    session, manager = _open(gateway, tokenizer, fixture, script(fixture))
    await Replay(fixture, gateway.url(session)).run(upto=upto)

    record = session.result()
    sent = manager.sent[session.id]
    assert fixture["steps"][upto - 1]["conv"] == "sub"  # the sub-agent was the last to call
    assert _trained(record) == [t for i in main_calls(fixture, upto) for t in sent[i][0]]
    assert "Task" in tokenizer.decode(_trained(record))
    assert record.counts["gateway/side_calls"] == upto - len(main_calls(fixture, upto))


@pytest.mark.parametrize("failure", ["500", "timeout"])
async def test_a_retry_continues_the_record(gateway, tokenizer, failure):
    fixture = load("opencode_reserialized_calls.json")
    at = 2  # the third call fails once; the agent sends the same request again
    clean, clean_manager = _open(gateway, tokenizer, fixture, script(fixture))
    await Replay(fixture, gateway.url(clean)).run()

    failed = {"n": 0}

    async def before_turn(request_id: str, turn: int) -> None:
        if turn == at and not failed["n"]:
            failed["n"] += 1
            if failure == "500":
                msg = "generate failed (scripted)"
                raise RuntimeError(msg)
            await asyncio.sleep(1.5)  # the client (0.5 s timeout) gives up; the reply is generated, not delivered

    # After a timeout the policy generates that turn again (a fresh sample of it): the script repeats it.
    texts = script(fixture, repeat=at if failure == "timeout" else None)
    session, manager = _open(gateway, tokenizer, fixture, texts, before_turn)
    replay = Replay(fixture, gateway.url(session))
    await replay.run(failures={at: failure})

    assert replay.retried == 1
    record, base = session.result(), clean.result()
    generated = [t for ids, _ in manager.sent[session.id] for t in ids]
    undelivered = len(manager.sent[session.id][at][0]) if failure == "timeout" else 0
    assert record.counts["gateway/undelivered_tokens"] == undelivered
    assert len(_trained(record)) == len(generated) - undelivered == len(_trained(base))
    assert (record.prompt_ids, record.response_ids, record.response_mask) == (
        base.prompt_ids,
        base.response_ids,
        base.response_mask,
    )
    assert (record.counts["gateway/segments"], record.counts["gateway/rewrites"]) == (1, 0)
    assert record.counts["gateway/calls"] == len(fixture["steps"]) + 1
