"""The model gateway against the official openai and anthropic SDKs and LiteLLM's hosted_vllm path.

One gateway for the module; each test opens its own session over verl's real Continuous Token builder and
hermes tool parser, with the scripted server manager (the only fake) from verl_harness.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from verl_harness import ScriptedServerManager, gateway_backend, tool_call

pytestmark = [pytest.mark.verl, pytest.mark.gateway]

SMALL_BODY = 256 * 1024


@pytest.fixture
async def gateway() -> Any:
    from harbor_ray.verl.gateway import Gateway

    gw = await Gateway.start("127.0.0.1", max_body_bytes=SMALL_BODY)
    yield gw
    await gw.stop()


def _session(gateway: Any, tokenizer: Any, turns: list[str], **limits: Any) -> tuple[Any, ScriptedServerManager]:
    manager = ScriptedServerManager(tokenizer, {"": [turns]})
    return gateway.open(gateway_backend(tokenizer, manager, **limits)), manager


def _openai(gateway: Any, session: Any) -> Any:
    import openai

    return openai.AsyncOpenAI(base_url=f"{gateway.url(session)}/v1", api_key="unused", max_retries=0)


def _anthropic(gateway: Any, session: Any) -> Any:
    import anthropic

    return anthropic.AsyncAnthropic(base_url=gateway.url(session), api_key="unused", max_retries=0)


BASH = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}


def _generated(manager: ScriptedServerManager, session: Any) -> list[int]:
    return [t for ids, _ in manager.sent[session.id] for t in ids]


async def test_openai_plain_and_streaming(gateway, tokenizer):
    session, manager = _session(gateway, tokenizer, ["Hello, world!", "Done."])
    client = _openai(gateway, session)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Say hello"}]

    reply = await client.chat.completions.create(model="policy", messages=messages)
    assert reply.choices[0].message.content == "Hello, world!"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == len(manager.sent[session.id][0][0])

    messages += [{"role": "assistant", "content": "Hello, world!"}, {"role": "user", "content": "again"}]
    stream = await client.chat.completions.create(
        model="policy", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Done."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == len(manager.sent[session.id][1][0])
    record = session.result()
    assert record.generations == 2
    assert session.rewrites == 0
    assert [t for t, m in zip(record.response_ids, record.response_mask, strict=True) if m] == _generated(
        manager, session
    )
    assert (await client.models.list()).data[0].id == "policy"


async def test_openai_tool_calls_both_ways_are_token_faithful(gateway, tokenizer):
    turns = [tool_call("ls -la /app"), "All done."]
    session, manager = _session(gateway, tokenizer, turns)
    client = _openai(gateway, session)
    messages: list[Any] = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List /app"}]

    first = await client.chat.completions.create(model="policy", messages=messages, tools=[BASH])
    (call,) = first.choices[0].message.tool_calls
    assert first.choices[0].finish_reason == "tool_calls"
    assert (call.function.name, json.loads(call.function.arguments)) == ("bash", {"command": "ls -la /app"})

    messages += [
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "total 0"},
    ]
    stream = await client.chat.completions.create(model="policy", messages=messages, tools=[BASH], stream=True)
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "All done."

    record = session.result()
    (gen1, lp1), (gen2, lp2) = manager.sent[session.id]
    # response = generated turn 1 | the tool observation (context) | generated turn 2, exactly as generate gave.
    assert record.response_ids[: len(gen1)] == gen1
    assert record.response_ids[-len(gen2) :] == gen2
    observation = record.response_ids[len(gen1) : -len(gen2)]
    assert "<tool_response>\ntotal 0\n</tool_response>" in tokenizer.decode(observation)
    assert record.response_mask == [1] * len(gen1) + [0] * len(observation) + [1] * len(gen2)
    assert record.response_logprobs == pytest.approx(lp1 + [0.0] * len(observation) + lp2)
    # The prompt is verl's own rendering of the first request (chat template with tools).
    assert record.prompt_ids == session.backend.builder.build_initial_tokens(messages[:2], tools=[BASH])
    assert session.rewrites == 0


async def test_anthropic_plain_streaming_and_tools(gateway, tokenizer):
    turns = ["Hi there.", tool_call("cat /app/x"), "The file says 42."]
    session, manager = _session(gateway, tokenizer, turns)
    client = _anthropic(gateway, session)
    tools = [{"name": "bash", "description": "Run a command", "input_schema": BASH["function"]["parameters"]}]
    messages: list[Any] = [{"role": "user", "content": "hello"}]

    first = await client.messages.create(model="policy", max_tokens=64, system="Be brief.", messages=messages)
    assert [b.type for b in first.content] == ["text"]
    assert first.content[0].text == "Hi there."
    assert first.stop_reason == "end_turn"

    messages += [{"role": "assistant", "content": "Hi there."}, {"role": "user", "content": "read /app/x"}]
    async with client.messages.stream(
        model="policy", max_tokens=64, system="Be brief.", messages=messages, tools=tools
    ) as stream:
        second = await stream.get_final_message()
    (use,) = [b for b in second.content if b.type == "tool_use"]
    assert (use.name, use.input, second.stop_reason) == ("bash", {"command": "cat /app/x"}, "tool_use")

    messages += [
        {"role": "assistant", "content": [b.model_dump() for b in second.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "42"}]},
    ]
    third = await client.messages.create(
        model="policy", max_tokens=64, system="Be brief.", messages=messages, tools=tools
    )
    assert third.content[0].text == "The file says 42."
    assert third.usage.output_tokens == len(manager.sent[session.id][2][0])

    # Adding tools after the first turn changes the rendered system prompt: a documented rewrite.
    assert session.rewrites == 1
    record = session.result()
    assert record.generations == 2
    assert [t for t, m in zip(record.response_ids, record.response_mask, strict=True) if m] == [
        t for ids, _ in manager.sent[session.id][1:] for t in ids
    ]
    assert "<tool_response>\n42\n</tool_response>" in tokenizer.decode(record.response_ids)


async def test_history_rewrite_starts_a_segment_and_follows_the_policy(gateway, tokenizer):
    from harbor_ray.verl.gateway import RewritePolicy

    session, manager = _session(gateway, tokenizer, ["one", "two", "three"])
    client = _openai(gateway, session)
    history: list[Any] = [{"role": "user", "content": "count"}]
    await client.chat.completions.create(model="policy", messages=history)
    history += [{"role": "assistant", "content": "one"}, {"role": "user", "content": "more"}]
    await client.chat.completions.create(model="policy", messages=history)
    # Compaction: the agent replaces its history by a summary.
    compacted = [{"role": "user", "content": "Summary: counted to two. Continue."}]
    await client.chat.completions.create(model="policy", messages=compacted)

    assert (session.rewrites, len(session.segments)) == (1, 2)
    last = session.result(RewritePolicy.LAST_SEGMENT)
    gen3 = manager.sent[session.id][2][0]
    assert last.prompt_ids == session.backend.builder.build_initial_tokens(compacted)
    assert (last.response_ids, last.response_mask) == (gen3, [1] * len(gen3))
    assert last.counts["gateway/dropped_tokens"] == len(session.segments[0].ids)
    masked = session.result(RewritePolicy.MASK)
    assert masked.response_ids == gen3
    assert set(masked.response_mask) == {0}


async def test_errors_have_the_protocol_bodies(gateway, tokenizer):
    import anthropic
    import httpx
    import openai

    session, _ = _session(gateway, tokenizer, ["fine"])
    async with httpx.AsyncClient() as http:
        bad = await http.post(f"{gateway.url(session)}/v1/chat/completions", content=b"{not json")
        assert bad.status_code == 400
        assert "malformed JSON" in bad.json()["error"]["message"]
        bad = await http.post(f"{gateway.url(session)}/v1/messages", content=b"[")
        assert bad.status_code == 400
        assert bad.json()["type"] == "error"
        big = await http.post(f"{gateway.url(session)}/v1/chat/completions", content=b" " * (SMALL_BODY + 10))
        assert big.status_code == 413
        assert big.json()["error"]["type"] == "request_too_large"
        missing = await http.post(f"{gateway.url(session)}/v1/messages", json={"messages": []})
        assert missing.status_code == 400
        assert "max_tokens" in missing.json()["error"]["message"]

    with pytest.raises(openai.NotFoundError):
        await openai.AsyncOpenAI(
            base_url=f"{gateway.base_url}/nosuch/v1", api_key="x", max_retries=0
        ).chat.completions.create(model="policy", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="messages"):
        await _openai(gateway, session).chat.completions.create(model="policy", messages=[])
    gateway.close(session)
    with pytest.raises(openai.ConflictError):
        await _openai(gateway, session).chat.completions.create(model="p", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.ConflictError):
        await _anthropic(gateway, session).messages.create(
            model="p", max_tokens=5, messages=[{"role": "user", "content": "x"}]
        )
    # The server is still serving after all of that.
    fresh, _ = _session(gateway, tokenizer, ["still here"])
    reply = await _openai(gateway, fresh).chat.completions.create(
        model="p", messages=[{"role": "user", "content": "?"}]
    )
    assert reply.choices[0].message.content == "still here"


async def test_context_length_errors_end_the_session_as_overlong(gateway, tokenizer):
    import anthropic
    import openai

    long_text = "Create the file /app/hello.txt " * 40
    session, manager = _session(gateway, tokenizer, ["x"], prompt_length=64)
    with pytest.raises(openai.BadRequestError) as e:
        await _openai(gateway, session).chat.completions.create(
            model="p", messages=[{"role": "user", "content": long_text}]
        )
    assert e.value.code == "context_length_exceeded"
    assert session.overlong
    assert session.id not in manager.sent

    other, _ = _session(gateway, tokenizer, ["x"], prompt_length=64)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        await _anthropic(gateway, other).messages.create(
            model="p", max_tokens=8, messages=[{"role": "user", "content": long_text}]
        )
    assert other.overlong


async def test_litellm_hosted_vllm_path(gateway, tokenizer):
    import litellm

    session, manager = _session(gateway, tokenizer, [tool_call("echo hi"), "Bye."], response_length=64)
    base = f"{gateway.url(session)}/v1"
    messages: list[Any] = [{"role": "user", "content": "go"}]
    reply = await litellm.acompletion(model="hosted_vllm/policy", api_base=base, messages=messages, tools=[BASH])
    (call,) = reply.choices[0].message.tool_calls
    assert json.loads(call.function.arguments) == {"command": "echo hi"}
    messages += [reply.choices[0].message.model_dump(), {"role": "tool", "tool_call_id": call.id, "content": "hi"}]
    reply = await litellm.acompletion(model="hosted_vllm/policy", api_base=base, messages=messages, tools=[BASH])
    assert reply.choices[0].message.content == "Bye."
    assert session.rewrites == 0
    assert session.result().generations == 2

    # The response budget (64 tokens) is spent: LiteLLM maps the error to its context-window exception.
    messages += [{"role": "assistant", "content": "Bye."}, {"role": "user", "content": "long " * 80}]
    with pytest.raises(litellm.ContextWindowExceededError):
        await litellm.acompletion(model="hosted_vllm/policy", api_base=base, messages=messages, tools=[BASH])
    assert session.overlong
