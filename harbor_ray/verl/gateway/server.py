"""The gateway's HTTP server (aiohttp): per-session OpenAI and Anthropic routes over `server_manager.generate`.

Routes: `POST /<session>/v1/chat/completions` (OpenAI), `POST /<session>/v1/messages` (Anthropic; also
`…/messages/count_tokens`), `GET /v1/models` and `/<session>/v1/models`. Agents need only a base URL:
`http://HOST:PORT/<session>/v1` (OpenAI, LiteLLM `api_base`) or `http://HOST:PORT/<session>` (Anthropic).
Bad requests get the protocol's error body: 400 malformed JSON or fields, 404 unknown session or route, 409
closed session, 413 too large, 400 with the protocol's context-length error when the prompt does not fit (the
session is then `overlong`). Each is one log line; a failing request never takes the server down.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web

from harbor_ray.verl.gateway import anthropic_api, engine, openai_api
from harbor_ray.verl.gateway import messages as M
from harbor_ray.verl.gateway.session import Backend, ContextTooLong, Session, SessionClosed

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 32 * 1024 * 1024


class Gateway:
    """An HTTP server owning the sessions of this process; start it once, open one session per trial.

    >>> gateway = await Gateway.start("127.0.0.1")  # doctest: +SKIP
    >>> session = gateway.open(Backend(...))  # doctest: +SKIP
    >>> gateway.url(session)  # doctest: +SKIP
    'http://127.0.0.1:40123/3f2a…'
    """

    def __init__(self, host: str, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.host = host
        self.port = 0
        self.max_body_bytes = max_body_bytes
        self.sessions: dict[str, Session] = {}
        self._closed: dict[str, float] = {}  # recently closed ids -> 409 instead of 404
        self._runner: web.AppRunner | None = None

    @classmethod
    async def start(cls, host: str = "127.0.0.1", port: int = 0, max_body_bytes: int = MAX_BODY_BYTES) -> Gateway:
        gateway = cls(host, max_body_bytes)
        app = web.Application(client_max_size=max_body_bytes + 1024)
        app.router.add_get("/v1/models", gateway._models)
        app.router.add_get("/{session}/v1/models", gateway._models)
        app.router.add_post("/{session}/v1/chat/completions", gateway._chat)
        app.router.add_post("/{session}/v1/messages", gateway._messages)
        app.router.add_post("/{session}/v1/messages/count_tokens", gateway._count_tokens)
        app.router.add_route("*", "/{tail:.*}", gateway._unknown)
        gateway._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await gateway._runner.setup()
        site = web.TCPSite(gateway._runner, host, port, reuse_address=True)
        await site.start()
        server: Any = site._server  # aiohttp keeps the asyncio server private; the ephemeral port is on its socket
        gateway.port = int(server.sockets[0].getsockname()[1])
        log.info("model gateway listening on http://%s:%d", host, gateway.port)
        return gateway

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, session: Session) -> str:
        return f"{self.base_url}/{session.id}"

    def open(self, backend: Backend, session_id: str | None = None, task: str | None = None) -> Session:
        """A new session; `task` (the trial's instruction) tells its main conversation from side ones."""
        session = Session(backend, session_id, task)
        self.sessions[session.id] = session
        return session

    def close(self, session: Session) -> None:
        """End the session: later calls get 409; its record stays with the caller, the gateway forgets it."""
        session.closed = True
        self.sessions.pop(session.id, None)
        now = time.monotonic()
        self._closed = {k: t for k, t in self._closed.items() if now - t < 600}
        self._closed[session.id] = now

    # --- handlers ---------------------------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        names = sorted({s.backend.model_name for s in self.sessions.values()} or {"policy"})
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "harbor_ray"} for n in names]
        return web.json_response({"object": "list", "data": data})

    async def _unknown(self, request: web.Request) -> web.Response:
        return self._fail(request, 404, f"no route {request.method} {request.path}")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, openai_api.parse_request, self._openai_reply)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, anthropic_api.parse_request, self._anthropic_reply)

    async def _count_tokens(self, request: web.Request) -> web.Response:
        session, body = await self._session_and_body(request)
        if isinstance(session, web.Response):
            return session
        chat = anthropic_api.parse_request(
            {**body, "max_tokens": body.get("max_tokens") or 1}, session.backend.volatile
        )
        ids = session.backend.builder.build_initial_tokens(chat.messages, tools=chat.tools)
        return web.json_response({"input_tokens": len(ids)})

    async def _session_and_body(self, request: web.Request) -> tuple[Any, Any]:
        sid = request.match_info["session"]
        session = self.sessions.get(sid)
        if session is None:
            if sid in self._closed:
                return self._fail(request, 409, f"session {sid} is closed (its trial has ended)"), None
            return self._fail(request, 404, f"unknown session {sid!r}"), None
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            return self._fail(request, 413, f"request body over {self.max_body_bytes} bytes"), None
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._fail(request, 413, f"request body over {self.max_body_bytes} bytes"), None
        if len(raw) > self.max_body_bytes:
            return self._fail(request, 413, f"request body over {self.max_body_bytes} bytes"), None
        try:
            return session, json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return self._fail(request, 400, f"malformed JSON body: {e}"), None

    async def _serve(
        self,
        request: web.Request,
        parse: Callable[[Any, Any], engine.ChatRequest],
        reply: Callable[[web.Request, Any, engine.Completion, str], Any],
    ) -> web.StreamResponse:
        session, body = await self._session_and_body(request)
        if isinstance(session, web.StreamResponse):
            return session
        try:
            chat = parse(body, session.backend.volatile)
            completion = await engine.complete(session, chat)
        except M.BadRequest as e:
            session.errors += 1
            return self._fail(request, 400, str(e))
        except SessionClosed as e:
            return self._fail(request, 409, str(e))
        except ContextTooLong as e:
            log.info("session %s: context too long (%d tokens > %d): overlong", session.id, e.tokens, e.limit)
            return self._context_error(request, e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the gateway outlives any one bad call
            session.errors += 1
            log.exception("session %s: model call failed", session.id)
            return self._fail(request, 500, f"model call failed: {type(e).__name__}: {e}")
        return await reply(request, body, completion, session.backend.model_name)

    async def _openai_reply(self, request: web.Request, body: Any, c: engine.Completion, model: str) -> Any:
        if not body.get("stream"):
            return web.json_response(openai_api.response(c, body.get("model") or model))
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await _sse(request, openai_api.stream(c, body.get("model") or model, usage))

    async def _anthropic_reply(self, request: web.Request, body: Any, c: engine.Completion, model: str) -> Any:
        if not body.get("stream"):
            return web.json_response(anthropic_api.response(c, body.get("model") or model))
        return await _sse(request, anthropic_api.stream(c, body.get("model") or model))

    def _fail(self, request: web.Request, status: int, message: str) -> web.Response:
        log.warning("gateway %s %s -> %d: %s", request.method, request.path, status, message)
        if _is_anthropic(request):
            return web.json_response(anthropic_api.error(status, message), status=status)
        kind = {404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 500: "server_error"}
        return web.json_response(openai_api.error(message, kind.get(status, "invalid_request_error")), status=status)

    def _context_error(self, request: web.Request, e: ContextTooLong) -> web.Response:
        if _is_anthropic(request):
            body = anthropic_api.error(400, f"prompt is too long: {e.tokens} tokens > {e.limit} maximum")
        else:
            body = openai_api.error(str(e), code="context_length_exceeded", param="messages")
        return web.json_response(body, status=400)


def _is_anthropic(request: web.Request) -> bool:
    return "/v1/messages" in request.path


async def _sse(request: web.Request, chunks: Iterator[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    await response.write(b"".join(chunks))
    await response.write_eof()
    return response
