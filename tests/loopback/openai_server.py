"""A loopback OpenAI-compatible chat completions server, for tests and benchmarks.

    async with OpenAIServer(lambda body: Reply(text="Hi there.", ttft=0.3,
                                               tokens_per_second=50)) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        ...
        server.requests[0].body        # the parsed JSON the client sent
        await server.wait_for_requests(2)  # (under asyncio.timeout) until two have arrived

Wire format (what api.openai.com sends for `stream: true`): `POST /v1/chat/completions`
answers `text/event-stream` events `data: {chat.completion.chunk}\\n\\n`, ending with
`data: [DONE]\\n\\n`. The role rides on the first delta; then come the text deltas (one per
word-sized token, leading space kept), then the tool-call deltas (the first delta of a call
carries id, type and name), then a chunk with the finish_reason, then -- only if the request
asked for `stream_options.include_usage` -- a chunk with `usage` and no choices.
Non-streaming requests are not supported (400). `GET /v1/models` lists one model.

The responder gets each request body and returns a `Reply` or a `Fault` (or an awaitable of
one), so a test scripts the provider: `scripted(Reply(...), Fault(503), ...)` answers with
its arguments in order.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

MODEL = "loopback"


@dataclass
class ToolCall:
    name: str
    arguments: str = "{}"  # sent verbatim: may be invalid on purpose
    id: str | None = None  # default: call_<index>
    parts: int = 1  # the argument text is split into this many deltas


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0


@dataclass
class Reply:
    """A streamed completion.

    Deltas (text tokens and tool-call pieces) are paced: the first `ttft` seconds after the
    request arrived, then one every 1/`tokens_per_second` s (None: all at once).
    `interleave`: tool-call deltas go round-robin over the calls instead of call after call.
    `usage`: None -> estimated (prompt: JSON length of the messages / 4; completion: number
    of deltas). Faults after K deltas (0: right after the 200 headers): `drop_after` closes
    the connection; `truncate_after` ends the body cleanly but without finish_reason and
    [DONE] (what a server that fails mid-generation may do); `stall_after` sends nothing
    more until the client goes away or the server stops.
    """

    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    interleave: bool = False
    ttft: float = 0.0
    tokens_per_second: float | None = None
    usage: Usage | None = None
    finish_reason: str | None = None  # default: "tool_calls" if there are any, else "stop"
    drop_after: int | None = None
    truncate_after: int | None = None
    stall_after: int | None = None


@dataclass
class Fault:
    """An HTTP error answer (`{"error": {"message", "type", ...}}`), after `stall` seconds of
    silence (cut short if the client gives up). `status=None`: close the connection instead."""

    status: int | None = 500
    message: str = "loopback fault"
    stall: float = 0.0


Responder = Callable[[dict[str, Any]], Reply | Fault | Awaitable[Reply | Fault]]


def scripted(*answers: Reply | Fault) -> Responder:
    """Answers with `answers` in order; any request beyond them gets a 500."""
    queue = list(answers)

    def respond(body: dict[str, Any]) -> Reply | Fault:
        return queue.pop(0) if queue else Fault(500, "loopback script exhausted")

    return respond


MAX_REQUEST_BYTES = 32 * 2**20


@dataclass
class ReceivedRequest:
    body: dict[str, Any]
    headers: Mapping[str, str]  # case-insensitive
    received_at: float  # time.perf_counter()
    deltas_sent: int = 0
    last_delta_at: float | None = None  # time.perf_counter() after the last delta was sent
    client_disconnected: bool = False  # the client went away before the answer was complete
    done: asyncio.Event = field(default_factory=asyncio.Event)


def tokens(text: str) -> list[str]:
    """Word-sized tokens with their leading whitespace; ''.join(tokens(t)) == t."""
    parts = re.findall(r"\s*\S+", text)
    tail = text[len("".join(parts)) :]
    if tail:
        parts = [*parts[:-1], parts[-1] + tail] if parts else [tail]
    return parts


def _split(text: str, n: int) -> list[str]:
    n = max(1, min(n, len(text))) if text else 1
    step = -(-len(text) // n) if text else 1
    return [text[i : i + step] for i in range(0, len(text), step)] or [""]


def _tool_call_deltas(calls: list[ToolCall], interleave: bool) -> list[dict[str, Any]]:
    per_call: list[list[dict[str, Any]]] = []
    for index, call in enumerate(calls):
        pieces = _split(call.arguments, call.parts)
        first = {
            "index": index,
            "id": call.id or f"call_{index}",
            "type": "function",
            "function": {"name": call.name, "arguments": pieces[0]},
        }
        rest = [{"index": index, "function": {"arguments": p}} for p in pieces[1:]]
        per_call.append([first, *rest])
    if not interleave:
        return [d for deltas in per_call for d in deltas]
    out: list[dict[str, Any]] = []
    for i in range(max((len(d) for d in per_call), default=0)):
        out.extend(deltas[i] for deltas in per_call if i < len(deltas))
    return out


class OpenAIServer:
    def __init__(self, responder: Responder | None = None) -> None:
        self.responder: Responder = responder or (lambda body: Reply(text="ok"))
        self.requests: list[ReceivedRequest] = []
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self._new_request = asyncio.Condition()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    async def start(self) -> None:
        # the API takes requests of several MB (base64 images and audio); aiohttp's default
        # limit (1 MB) would refuse a request carrying 30 s of utterance audio
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> OpenAIServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_requests(self, n: int) -> list[ReceivedRequest]:
        """The first `n` requests, once they have arrived (bound it with asyncio.timeout)."""
        async with self._new_request:
            await self._new_request.wait_for(lambda: len(self.requests) >= n)
        return self.requests[:n]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "tests"}]}
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            body = await request.json()
        except BaseException:  # a body that is not JSON: aiohttp answers it
            self._handlers.discard(task)
            raise
        received = ReceivedRequest(body, CIMultiDict(request.headers), time.perf_counter())
        async with self._new_request:
            self.requests.append(received)
            self._new_request.notify_all()
        try:
            if not body.get("stream"):
                return _error(400, "the loopback server only streams")
            answer = self.responder(body)
            if inspect.isawaitable(answer):
                answer = await answer
            if isinstance(answer, Fault):
                return await self._fault(request, received, answer)
            return await self._stream(request, received, answer)
        finally:
            received.done.set()
            self._handlers.discard(task)

    async def _fault(self, request: web.Request, rec: ReceivedRequest, fault: Fault) -> Any:
        if not await _wait_connected(request, time.perf_counter() + fault.stall):
            rec.client_disconnected = True
            return web.Response(status=499)
        if fault.status is None:
            _drop(request)
            return web.Response(status=499)
        return _error(fault.status, fault.message)

    async def _stream(
        self, request: web.Request, rec: ReceivedRequest, reply: Reply
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await self._send_reply(request, response, rec, reply)
        except ConnectionResetError:  # the client went away while we wrote
            rec.client_disconnected = True
        return response

    async def _send_reply(
        self, request: web.Request, response: web.StreamResponse, rec: ReceivedRequest, reply: Reply
    ) -> None:
        chunk_id = f"chatcmpl-loopback-{self.requests.index(rec)}"

        async def send(payload: dict[str, Any]) -> None:
            chunk = {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": body.get("model", MODEL),
                **payload,
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        body = rec.body
        deltas: list[dict[str, Any]] = [{"content": t} for t in tokens(reply.text)]
        deltas += [
            {"tool_calls": [d]} for d in _tool_call_deltas(reply.tool_calls, reply.interleave)
        ]
        interval = 1.0 / reply.tokens_per_second if reply.tokens_per_second else 0.0
        for i in range(len(deltas) + 1):  # the faults may also strike after the last delta
            if i == reply.drop_after:
                _drop(request)
                return
            if i == reply.truncate_after:
                await response.write_eof()
                return
            if i == reply.stall_after:
                await _wait_connected(request, float("inf"))
                rec.client_disconnected = True
                return
            if i == len(deltas):
                break
            due = rec.received_at + reply.ttft + i * interval
            if not await _wait_connected(request, due):
                rec.client_disconnected = True
                return
            delta = deltas[i] if i else {"role": "assistant", **deltas[i]}
            await send({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            rec.deltas_sent += 1
            rec.last_delta_at = time.perf_counter()
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        await send({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = reply.usage or Usage(
                max(1, len(json.dumps(body["messages"])) // 4), len(deltas)
            )
            await send(
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
                        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
                    },
                }
            )
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()


def _error(status: int, message: str) -> web.Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return web.json_response(
        {"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status
    )


def _client_connected(request: web.Request) -> bool:
    return request.transport is not None and not request.transport.is_closing()


async def _wait_connected(request: web.Request, until: float) -> bool:
    """Sleep until perf_counter() >= until; False as soon as the client disconnects."""
    while True:
        if not _client_connected(request):
            return False
        left = until - time.perf_counter()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, 0.02))


def _drop(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
