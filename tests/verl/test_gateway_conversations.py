"""The gateway's conversations, volatile lines, image placeholders and late rewrites, through the official SDKs.

As in test_gateway.py: one gateway per test over HTTP, verl's real Continuous Token builder and hermes parser,
only the server manager scripted.
"""

from __future__ import annotations

from typing import Any

import pytest
from test_gateway_traffic import Replay, load, main_calls, script
from verl_harness import ScriptedServerManager, gateway_backend

pytestmark = [pytest.mark.verl, pytest.mark.gateway]

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def _session(gateway: Any, tokenizer: Any, turns: list[str], task: str | None = None, **limits: Any) -> Any:
    manager = ScriptedServerManager(tokenizer, {"": [turns]})
    return gateway.open(gateway_backend(tokenizer, manager, **limits), task=task), manager


def _anthropic(gateway: Any, session: Any) -> Any:
    import anthropic

    return anthropic.AsyncAnthropic(base_url=gateway.url(session), api_key="unused", max_retries=0)


async def test_images_become_counted_placeholders(gateway, tokenizer):
    import openai

    from harbor_ray.verl.gateway.messages import IMAGE_PLACEHOLDER

    session, _ = _session(gateway, tokenizer, ["I see a screenshot.", "Still one pixel."])
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}}
    messages: list[Any] = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, image]}]
    first = await _anthropic(gateway, session).messages.create(model="p", max_tokens=64, messages=messages)
    assert first.content[0].text == "I see a screenshot."

    chat = openai.AsyncOpenAI(base_url=f"{gateway.url(session)}/v1", api_key="unused", max_retries=0)
    history: list[Any] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        },
        {"role": "assistant", "content": "I see a screenshot."},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
    ]
    second = await chat.chat.completions.create(model="p", messages=history)
    assert second.choices[0].message.content == "Still one pixel."

    record = session.result()
    assert record.counts["gateway/images"] == 3.0
    assert (record.counts["gateway/segments"], record.counts["gateway/rewrites"]) == (1, 0)  # one conversation
    assert IMAGE_PLACEHOLDER in tokenizer.decode(record.prompt_ids)
    assert IMAGE_PLACEHOLDER in tokenizer.decode(record.response_ids)


async def test_volatile_lines_are_a_configurable_list(gateway, tokenizer):
    def system(n: int) -> str:
        return f"You are terse.\nCurrent time: 12:00:0{n}\nAnswer in one word."

    async def run(volatile_lines: tuple[str, ...]) -> Any:
        manager = ScriptedServerManager(tokenizer, {"": [["one", "two", "three"]]})
        backend = gateway_backend(tokenizer, manager)
        backend = type(backend)(**{**_fields(backend), "volatile_lines": volatile_lines})
        session = gateway.open(backend)
        client = _anthropic(gateway, session)
        messages: list[Any] = [{"role": "user", "content": "count"}]
        for n, word in enumerate(["one", "two", "three"]):
            await client.messages.create(model="p", max_tokens=16, system=system(n), messages=messages)
            messages += [{"role": "assistant", "content": word}, {"role": "user", "content": "more"}]
        return session

    kept = await run((r"Current time: .*",))
    assert (kept.result().counts["gateway/segments"], kept.rewrites) == (1, 0)
    assert "Current time" not in tokenizer.decode(kept.result().prompt_ids)
    # Without that line in the list, each call's system prompt differs: each call is a rewrite.
    broken = await run(())
    assert (broken.result().counts["gateway/segments"], broken.rewrites) == (3, 2)


def _fields(backend: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(backend, f.name) for f in dataclasses.fields(backend) if f.init}


async def test_a_side_conversations_overflow_does_not_end_the_main_one(gateway, tokenizer):
    import anthropic

    session, _ = _session(gateway, tokenizer, ["Working on it.", "Done."], task="Write hello.txt", prompt_length=96)
    client = _anthropic(gateway, session)
    main: list[Any] = [{"role": "user", "content": "Write hello.txt"}]
    await client.messages.create(model="p", max_tokens=16, system="Main agent.", messages=main)
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        await client.messages.create(
            model="p", max_tokens=16, system="Sub-agent.", messages=[{"role": "user", "content": "scan " * 200}]
        )
    main += [{"role": "assistant", "content": "Working on it."}, {"role": "user", "content": "go on"}]
    done = await client.messages.create(model="p", max_tokens=16, system="Main agent.", messages=main)
    assert done.content[0].text == "Done."
    assert not session.overlong
    counts = session.result().counts
    assert (counts["gateway/overlong"], counts["gateway/conversations"], counts["gateway/side_calls"]) == (0, 2, 1)


async def test_mask_policy_is_about_the_main_conversation_only(gateway, tokenizer):
    from harbor_ray.verl.gateway import RewritePolicy

    fixture = load("claude_code_subagent_title.json")
    manager = ScriptedServerManager(tokenizer, {"": [script(fixture)]})
    session = gateway.open(gateway_backend(tokenizer, manager, response_length=4096), task=fixture["task"])
    await Replay(fixture, gateway.url(session)).run()
    masked = session.result(RewritePolicy.MASK)
    sent = manager.sent[session.id]
    # Sub-agent, title and quota calls are not rewrites of the main conversation: nothing is masked.
    assert [t for t, m in zip(masked.response_ids, masked.response_mask, strict=True) if m] == [
        t for i in main_calls(fixture) for t in sent[i][0]
    ]


async def test_a_late_rewrite_longer_than_prompt_length_keeps_going(gateway, tokenizer):
    import openai

    session, manager = _session(gateway, tokenizer, ["a", "b", "c"], prompt_length=48, response_length=512)
    client = openai.AsyncOpenAI(base_url=f"{gateway.url(session)}/v1", api_key="unused", max_retries=0)
    history: list[Any] = [{"role": "user", "content": "count"}]
    await client.chat.completions.create(model="p", messages=history)
    history += [{"role": "assistant", "content": "a"}, {"role": "user", "content": "more " * 20}]
    await client.chat.completions.create(model="p", messages=history)
    # The agent edits an earlier turn: a rewrite whose rendered history is longer than prompt_length.
    edited = [{"role": "user", "content": "count, please"}, *history[1:], {"role": "assistant", "content": "b"}]
    edited.append({"role": "user", "content": "and more"})
    reply = await client.chat.completions.create(model="p", messages=edited)
    assert reply.choices[0].message.content == "c"

    record = session.result()
    assert not session.overlong
    assert (record.counts["gateway/rewrites"], len(record.prompt_ids)) == (1, 48)
    rendered = session.backend.builder.build_initial_tokens(edited)
    assert len(rendered) > 48
    gen3 = manager.sent[session.id][2][0]
    assert record.prompt_ids + record.response_ids == rendered + gen3  # the boundary moved, the tokens did not
    assert record.response_mask == [0] * (len(rendered) - 48) + [1] * len(gen3)
