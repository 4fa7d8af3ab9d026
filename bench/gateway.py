"""The model gateway's cost per call and its token faithfulness under load, without a GPU.

    scripts/python bench/gateway.py [--calls 300] [--sessions 64] [--turns 3]

Prints one JSON object:
- `overhead_p50_ms` / `overhead_p99_ms`: a chat completion with tools through the gateway with the official
  `openai` client (a fresh session per call; each client built beforehand, as an agent builds its client once)
  minus the same `server_manager.generate` awaited directly, paired and interleaved (`--calls` pairs, order
  alternating); `http_floor_p50_ms`: the same `openai` client, the same request, against a bare aiohttp route on
  the same kind of server that returns a fixed chat completion (the same reply body): what any HTTP gateway on
  this client and server stack costs, measured in the same interleaved rounds; `engine_p50_ms`: the gateway's
  own work per call without HTTP and client (render, generate, parse, record), the first prompt taken from
  the gateway's cache of recent first prompts (the n samples of a GRPO group share theirs), and
  `engine_uncached_p50_ms` the same with a new first prompt every call (rendered by verl's builder);
- `sessions`: `--sessions` concurrent sessions of `--turns` tool-calling turns each through the openai client;
  `token_faithful` is true only if every session's record is exactly its first prompt as verl renders it, then
  the ids `generate` returned (mask 1, their log-probs) and the observations between them (mask 0).
The server manager is a stand-in that answers instantly with fixed token ids (verl's TokenOutput), so what is
measured is the gateway and the client, not a model. Tokenizer: the tiny byte-level BPE of tests/verl.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "verl"))

from verl_harness import build_tiny_model, gateway_backend, tool_call  # noqa: E402

BASH = {
    "type": "function",
    "function": {
        "name": "bash",
        "description": "Run a command",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    },
}


class InstantManager:
    """`generate` answering at once: a tool call for every turn but the last of a session, then a final answer."""

    def __init__(self, tokenizer: Any, turns: int) -> None:
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.call_ids = [*tokenizer.encode(tool_call("ls -la /app"), add_special_tokens=False), self.end]
        self.done_ids = [*tokenizer.encode("Done.", add_special_tokens=False), self.end]
        self.turns = turns
        self.sent: dict[str, list[tuple[list[int], list[float]]]] = {}

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict, **_: Any) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        sent = self.sent.setdefault(request_id, [])
        ids = list(self.call_ids if len(sent) < self.turns - 1 else self.done_ids)
        logprobs = [-(len(sent) + 1) - k / 1000 for k in range(len(ids))]
        sent.append((ids, logprobs))
        return TokenOutput(token_ids=ids, log_probs=logprobs)


async def floor_server(reply: dict[str, Any]) -> tuple[Any, str]:
    """An aiohttp server (as the gateway's) whose route reads the JSON body and answers a fixed completion."""
    from aiohttp import web

    body = json.dumps(reply).encode()

    async def handler(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/{session}/v1/chat/completions", handler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    return runner, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/floor/v1"


async def overhead(gateway: Any, tokenizer: Any, calls: int) -> dict[str, float]:
    import httpx
    import openai

    manager = InstantManager(tokenizer, turns=1)
    backend = gateway_backend(tokenizer, manager)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "List /app"}]
    prompt = backend.builder.build_initial_tokens(messages, tools=[BASH])
    params = {"temperature": 1.0, "logprobs": True}
    http = httpx.AsyncClient()
    # As an agent does: its client is built once, before its calls (not timed); one session per call.
    sessions = [gateway.open(backend) for _ in range(calls + 20)]
    clients = [
        openai.AsyncOpenAI(base_url=f"{gateway.url(s)}/v1", api_key="unused", max_retries=0, http_client=http)
        for s in sessions
    ]
    # The floor's reply: what the gateway answers to this request (taken from one gateway call).
    probe = gateway.open(backend)
    reply = await openai.AsyncOpenAI(
        base_url=f"{gateway.url(probe)}/v1", api_key="unused", max_retries=0, http_client=http
    ).chat.completions.create(model="policy", messages=messages, tools=[BASH])
    gateway.close(probe)
    runner, floor_url = await floor_server(reply.model_dump(exclude_none=True))
    floor_clients = [
        openai.AsyncOpenAI(base_url=floor_url, api_key="unused", max_retries=0, http_client=http) for _ in clients
    ]
    # Both sides alike: a client per call, built beforehand with its resources (`chat.completions`) touched.
    touched = [client.chat.completions for client in [*clients, *floor_clients]]
    deltas, floors = [], []
    for i, client in enumerate(clients):

        async def direct(rid: str = f"direct-{i}") -> float:
            t = time.perf_counter()
            await manager.generate(rid, prompt_ids=prompt, sampling_params=params)
            return time.perf_counter() - t

        async def through(client: Any = client) -> float:
            t = time.perf_counter()
            await client.chat.completions.create(model="policy", messages=messages, tools=[BASH])
            return time.perf_counter() - t

        async def bare(floor_client: Any = floor_clients[i]) -> float:
            t = time.perf_counter()
            await floor_client.chat.completions.create(model="policy", messages=messages, tools=[BASH])
            return time.perf_counter() - t

        if i % 2:
            d, g, f = await direct(), await through(), await bare()
        else:
            f, g, d = await bare(), await through(), await direct()
        if i >= 20:  # warm-up: connection pool, template compilation
            deltas.append((g - d) * 1000)
            floors.append(f * 1000)
    for session in sessions:
        gateway.close(session)
    del touched
    await http.aclose()
    await runner.cleanup()
    deltas.sort()
    return {
        "overhead_p50_ms": round(statistics.median(deltas), 3),
        "overhead_p99_ms": round(deltas[int(0.99 * (len(deltas) - 1))], 3),
        "http_floor_p50_ms": round(statistics.median(floors), 3),
        "engine_p50_ms": await engine_only(backend, messages, calls),
        "engine_uncached_p50_ms": await engine_only(backend, messages, calls, distinct=True),
    }


async def engine_only(backend: Any, messages: list[Any], calls: int, distinct: bool = False) -> float:
    """The gateway's own share: one call of `engine.complete` (render, generate, parse, record), no HTTP.
    `distinct`: every call a new first prompt, so it is rendered (not taken from the recent-prompts cache)."""
    from harbor_ray.verl.gateway import Session, engine

    times = []
    for i in range(calls):
        sent = (
            [*messages[:-1], {**messages[-1], "content": f"{messages[-1]['content']} #{i}"}] if distinct else messages
        )
        started = time.perf_counter()
        await engine.complete(Session(backend), engine.ChatRequest(sent, [BASH]))
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 3)


async def one_session(gateway: Any, client: Any, backend: Any, turns: int) -> bool:
    session = gateway.open(backend)
    api = client.with_options(base_url=f"{gateway.url(session)}/v1")
    messages: list[Any] = [{"role": "user", "content": "List /app, please."}]
    first = list(messages)
    for _ in range(turns):
        reply = await api.chat.completions.create(model="policy", messages=messages, tools=[BASH])
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or ():
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "total 0\n-rw-r--r-- 1 hello.txt"})
        if not message.tool_calls:
            break
    gateway.close(session)
    record = session.result()
    sent = backend.server_manager.sent[session.id]
    generated = [t for ids, _ in sent for t in ids]
    policy = [t for t, m in zip(record.response_ids, record.response_mask, strict=True) if m]
    logprobs = [lp for lp, m in zip(record.response_logprobs, record.response_mask, strict=True) if m]
    context = [lp for lp, m in zip(record.response_logprobs, record.response_mask, strict=True) if not m]
    return (
        record.prompt_ids == backend.builder.build_initial_tokens(first, tools=[BASH])
        and policy == generated
        and logprobs == [lp for _, lps in sent for lp in lps]
        and set(context) <= {0.0}
        and record.response_ids[: len(sent[0][0])] == sent[0][0]
        and session.rewrites == 0
        and len(sent) == turns
    )


async def sessions(gateway: Any, tokenizer: Any, n: int, turns: int) -> dict[str, Any]:
    import httpx
    import openai

    backend = gateway_backend(tokenizer, InstantManager(tokenizer, turns))
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    client = openai.AsyncOpenAI(
        base_url=f"{gateway.base_url}/x/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(limits=limits, timeout=120),
    )
    started = time.perf_counter()
    results = await asyncio.gather(*(one_session(gateway, client, backend, turns) for _ in range(n)))
    elapsed = time.perf_counter() - started
    return {
        "concurrent": n,
        "turns": turns,
        "token_faithful": all(results),
        "faithful_sessions": sum(results),
        "calls_per_s": round(n * turns / elapsed, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    from verl.utils import hf_tokenizer

    from harbor_ray.verl.gateway import Gateway

    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        tokenizer = hf_tokenizer(str(build_tiny_model(Path(tmp))))
    gateway = await Gateway.start("127.0.0.1")
    try:
        result: dict[str, Any] = {"calls": args.calls, **await overhead(gateway, tokenizer, args.calls)}
        result["sessions"] = await sessions(gateway, tokenizer, args.sessions, args.turns)
    finally:
        await gateway.stop()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--sessions", type=int, default=64)
    parser.add_argument("--turns", type=int, default=3)
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
