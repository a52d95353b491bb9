"""A loopback LiveKit server: the worker protocol and the agent dispatch API, nothing else.

No LiveKit server can run on these machines, so the tests talk to this one. It speaks the real
wire formats, with the real protobufs from ``livekit-protocol``:

- ``GET /agent`` (websocket): the worker protocol used by ``livekit.agents.Worker``. The
  ``Authorization: Bearer <JWT>`` header must be signed (HS256) with the API secret, issued by
  the API key, and grant ``video.agent``; otherwise 401. The worker's first message must be
  ``register``; the server answers ``RegisterWorkerResponse``. Every later ``WorkerMessage``
  is recorded; the test drives jobs with :meth:`WorkerConnection.request_job`,
  :meth:`WorkerConnection.assign` and :meth:`WorkerConnection.terminate`.
- ``POST /twirp/livekit.AgentDispatchService/CreateDispatch``: the Twirp API used by
  ``livekit.api.LiveKitAPI().agent_dispatch`` (protobuf body, or JSON for Twirp's JSON
  flavour). The token must grant ``roomAdmin`` for the request's room. Requests are recorded.

- ``GET /rtc`` (the media server's signalling websocket, which ``rtc.Room.connect`` opens):
  no media server is modelled. The room token (``Authorization: Bearer``, or the
  ``access_token`` query parameter) must be valid;
  then a room in :attr:`LoopbackLiveKitServer.held_rooms` gets its websocket accepted and held
  open without a word (``connect()`` stays pending, like a call whose media server is slow),
  until :meth:`RtcConnection.close` or the client gives up; any other room is refused (503),
  so ``JobContext.connect()`` fails at once. Attempts are recorded in ``rtc_attempts``.

Anything else answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from livekit import api
from livekit.protocol import agent, agent_dispatch, models

logger = logging.getLogger("tests.loopback.livekit_server")

WORKER_PATH = "/agent"
RTC_PATH = "/rtc"
DISPATCH_PATH = "/twirp/livekit.AgentDispatchService/CreateDispatch"


class AuthError(Exception):
    """The request's token is missing, forged, expired or lacks the needed grant."""


def verify_bearer(
    header: str | None, api_key: str, api_secret: str, *, require: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Verify ``Authorization: Bearer <JWT>`` as a LiveKit server does; return the claims."""
    if not header or not header.startswith("Bearer "):
        raise AuthError("missing bearer token")
    try:
        claims: dict[str, Any] = jwt.decode(
            header.removeprefix("Bearer "),
            api_secret,
            algorithms=["HS256"],
            issuer=api_key,
            options={"require": ["exp", "iss"]},
            leeway=60,
        )
    except jwt.PyJWTError as e:
        raise AuthError(f"invalid token: {type(e).__name__}") from None
    if not require(claims.get("video") or {}):
        raise AuthError("token lacks the required grant")
    return claims


@dataclass
class DispatchRecord:
    """One CreateDispatch call as the server saw it."""

    request: agent_dispatch.CreateAgentDispatchRequest
    claims: dict[str, Any]
    content_type: str
    response: agent_dispatch.AgentDispatch


@dataclass
class WorkerConnection:
    """One registered worker on ``/agent``: what it sent, and the server's side of the protocol."""

    ws: web.WebSocketResponse
    claims: dict[str, Any]
    register: agent.RegisterWorkerRequest
    worker_id: str
    server_url: str
    messages: list[agent.WorkerMessage] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    def of_kind(self, kind: str) -> list[Any]:
        """The recorded payloads of one kind (``update_worker``, ``update_job``, ...)."""
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("message") == kind]

    async def wait_for(
        self,
        kind: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        *,
        after: int = 0,
    ) -> Any:
        """The first ``kind`` payload (from message index ``after``) matching ``predicate``.

        Waits as long as needed: callers bound it with ``asyncio.timeout``.
        """

        def find() -> Any:
            for msg in self.messages[after:]:
                if msg.WhichOneof("message") == kind and predicate(getattr(msg, kind)):
                    return getattr(msg, kind)
            return None

        async with self._changed:
            while (found := find()) is None:
                if self.closed.is_set():
                    raise ConnectionError(f"worker disconnected before sending {kind}")
                await self._changed.wait()
            return found

    async def _record(self, msg: agent.WorkerMessage) -> None:
        async with self._changed:
            self.messages.append(msg)
            self._changed.notify_all()

    async def _mark_closed(self) -> None:
        async with self._changed:
            self.closed.set()
            self._changed.notify_all()

    async def send(self, msg: agent.ServerMessage) -> None:
        await self.ws.send_bytes(msg.SerializeToString())

    async def request_job(self, job: agent.Job) -> agent.AvailabilityResponse:
        """Offer ``job`` (AvailabilityRequest) and return the worker's answer."""
        start = len(self.messages)
        await self.send(agent.ServerMessage(availability=agent.AvailabilityRequest(job=job)))
        answer: agent.AvailabilityResponse = await self.wait_for(
            "availability", lambda a: a.job_id == job.id, after=start
        )
        return answer

    async def assign(self, job: agent.Job, token: str, url: str | None = None) -> None:
        """Assign ``job`` to this worker, as the server does after an ``available`` answer."""
        assignment = agent.JobAssignment(job=job, url=url or self.server_url, token=token)
        await self.send(agent.ServerMessage(assignment=assignment))

    async def terminate(self, job_id: str) -> None:
        await self.send(agent.ServerMessage(termination=agent.JobTermination(job_id=job_id)))


def make_job(
    job_id: str,
    room: str,
    agent_name: str,
    *,
    dispatch_id: str = "",
    metadata: str = "",
    room_sid: str | None = None,
) -> agent.Job:
    """A room job as the server dispatches it (JT_ROOM)."""
    return agent.Job(
        id=job_id,
        dispatch_id=dispatch_id,
        type=agent.JobType.JT_ROOM,
        room=models.Room(name=room, sid=room_sid or f"RM_{room}"),
        agent_name=agent_name,
        metadata=metadata,
    )


@dataclass
class RtcConnection:
    """One ``/rtc`` attempt: the room and identity of its token, and whether it was held."""

    room: str
    identity: str
    held: bool
    ws: web.WebSocketResponse | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def close(self) -> None:
        """End a held connection (the call ends from the server's side)."""
        if self.ws is not None:
            await self.ws.close(code=1001, message=b"room closed")


class LoopbackLiveKitServer:
    """``async with LoopbackLiveKitServer(key, secret) as server:`` on 127.0.0.1, random port."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.workers: list[WorkerConnection] = []
        self.dispatches: list[DispatchRecord] = []
        self.rejected: list[tuple[str, str]] = []  # (path, reason) of every 401
        self.held_rooms: set[str] = set()
        self.rtc_attempts: list[RtcConnection] = []
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()  # a worker registered or a request was refused
        self._runner: web.AppRunner | None = None
        self._port = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> LoopbackLiveKitServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self, port: int = 0) -> None:
        """Listen on ``port`` (0: a free one; pass :attr:`port` to come back after aclose)."""
        app = web.Application()
        app.router.add_get(WORKER_PATH, self._worker_ws)
        app.router.add_get(RTC_PATH, self._rtc_ws)
        app.router.add_post(DISPATCH_PATH, self._create_dispatch)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def aclose(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                await worker.ws.close()
        for attempt in self.rtc_attempts:
            with contextlib.suppress(Exception):
                await attempt.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The value for LIVEKIT_URL."""
        return f"ws://127.0.0.1:{self._port}"

    # --- helpers for tests ------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET for a process using this server."""
        return {
            "LIVEKIT_URL": self.url,
            "LIVEKIT_API_KEY": self.api_key,
            "LIVEKIT_API_SECRET": self.api_secret,
        }

    async def wait_for_worker(self) -> WorkerConnection:
        """The first worker that registers (or has registered)."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self.workers))
            return self.workers[0]

    async def wait_for_workers(self, count: int) -> list[WorkerConnection]:
        """The first ``count`` workers that register (a pool of workers on one server)."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.workers) >= count)
            return self.workers[:count]

    async def wait_for_rejections(self, count: int) -> list[tuple[str, str]]:
        """Wait until ``count`` requests were refused with 401; return all refusals."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.rejected) >= count)
            return list(self.rejected)

    def agent_token(self, job: agent.Job, identity: str) -> str:
        """The room token the server puts into a JobAssignment for the agent participant."""
        grants = api.VideoGrants(room_join=True, room=job.room.name, agent=True)
        return (
            api.AccessToken(self.api_key, self.api_secret)
            .with_identity(identity)
            .with_grants(grants)
            .with_ttl(timedelta(minutes=10))
            .to_jwt()
        )

    # --- /agent -----------------------------------------------------------------------------

    async def _unauthorized(self, request: web.Request, reason: str) -> web.Response:
        async with self._changed:
            self.rejected.append((request.path, reason))
            self._changed.notify_all()
        return web.json_response({"code": "unauthenticated", "msg": reason}, status=401)

    async def _worker_ws(self, request: web.Request) -> web.StreamResponse:
        try:
            claims = verify_bearer(
                request.headers.get("Authorization"),
                self.api_key,
                self.api_secret,
                require=lambda video: video.get("agent") is True,
            )
        except AuthError as e:
            return await self._unauthorized(request, str(e))
        ws = web.WebSocketResponse()
        await ws.prepare(request)

        first = await ws.receive()
        if first.type != WSMsgType.BINARY:
            await ws.close(code=1002, message=b"expected a binary WorkerMessage")
            return ws
        hello = agent.WorkerMessage()
        hello.ParseFromString(first.data)
        if hello.WhichOneof("message") != "register":
            await ws.close(code=1002, message=b"expected register as first message")
            return ws

        worker_id = f"AW_loopback{next(self._ids)}"
        info = models.ServerInfo(
            edition=models.ServerInfo.Edition.Standard,
            version="1.8.0-loopback",
            protocol=15,
            region="loopback",
            node_id="ND_loopback",
        )
        reply = agent.ServerMessage(
            register=agent.RegisterWorkerResponse(worker_id=worker_id, server_info=info)
        )
        await ws.send_bytes(reply.SerializeToString())
        conn = WorkerConnection(
            ws=ws, claims=claims, register=hello.register, worker_id=worker_id, server_url=self.url
        )
        async with self._changed:
            self.workers.append(conn)
            self._changed.notify_all()

        try:
            async for msg in ws:
                if msg.type != WSMsgType.BINARY:
                    continue
                wmsg = agent.WorkerMessage()
                try:
                    wmsg.ParseFromString(msg.data)
                except DecodeError:
                    logger.warning("undecodable worker message")
                    continue
                if wmsg.WhichOneof("message") == "ping":
                    pong = agent.WorkerPong(
                        last_timestamp=wmsg.ping.timestamp, timestamp=wmsg.ping.timestamp
                    )
                    await ws.send_bytes(agent.ServerMessage(pong=pong).SerializeToString())
                await conn._record(wmsg)
        finally:
            await conn._mark_closed()
        return ws

    async def wait_for_rtc(self, count: int) -> list[RtcConnection]:
        """Wait until ``count`` ``/rtc`` attempts were made; return them all."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.rtc_attempts) >= count)
            return list(self.rtc_attempts)

    # --- /rtc -------------------------------------------------------------------------------

    async def _rtc_ws(self, request: web.Request) -> web.StreamResponse:
        token = request.query.get("access_token")  # browsers; the Rust SDK sends the header
        header = request.headers.get("Authorization") or (f"Bearer {token}" if token else None)
        try:
            claims = verify_bearer(
                header,
                self.api_key,
                self.api_secret,
                require=lambda video: video.get("roomJoin") is True and bool(video.get("room")),
            )
        except AuthError as e:
            return await self._unauthorized(request, str(e))
        room = str(claims["video"]["room"])
        attempt = RtcConnection(room=room, identity=str(claims.get("sub", "")), held=False)
        if room not in self.held_rooms:
            async with self._changed:
                self.rtc_attempts.append(attempt)
                self._changed.notify_all()
            return web.json_response({"code": "unavailable", "msg": "no media server"}, status=503)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        attempt.held, attempt.ws = True, ws
        async with self._changed:
            self.rtc_attempts.append(attempt)
            self._changed.notify_all()
        try:
            async for _ in ws:  # never answers: the client waits for a join response
                pass
        finally:
            attempt.closed.set()
        return ws

    # --- Twirp: AgentDispatchService.CreateDispatch -----------------------------------------

    async def _create_dispatch(self, request: web.Request) -> web.Response:
        body = await request.read()
        content_type = request.content_type
        req = agent_dispatch.CreateAgentDispatchRequest()
        try:
            if content_type == "application/json":
                json_format.Parse(body, req)
            else:
                req.ParseFromString(body)
        except (DecodeError, json_format.ParseError):
            return web.json_response({"code": "malformed", "msg": "bad request body"}, status=400)
        try:
            claims = verify_bearer(
                request.headers.get("Authorization"),
                self.api_key,
                self.api_secret,
                require=lambda video: (
                    video.get("roomAdmin") is True and video.get("room") == req.room
                ),
            )
        except AuthError as e:
            return await self._unauthorized(request, str(e))

        dispatch = agent_dispatch.AgentDispatch(
            id=f"AD_loopback{next(self._ids)}",
            agent_name=req.agent_name,
            room=req.room,
            metadata=req.metadata,
        )
        self.dispatches.append(
            DispatchRecord(request=req, claims=claims, content_type=content_type, response=dispatch)
        )
        if content_type == "application/json":
            return web.Response(
                text=json_format.MessageToJson(dispatch), content_type="application/json"
            )
        return web.Response(body=dispatch.SerializeToString(), content_type="application/protobuf")
