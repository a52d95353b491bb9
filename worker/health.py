"""The probes on ``WORKER_PORT``, next to 0.12's ``GET /``: liveness and readiness.

``GET /healthz`` (liveness) answers from the event loop, so a stuck loop cannot answer at all
(the probe times out); it also fails (503) when the loop's heartbeat is late, a loop that runs
but lags by seconds. ``GET /readyz`` (readiness) is 200 only while the worker is registered
with the server and accepting jobs; otherwise 503 with ``{"ready": false, "reason": ...}``,
reason one of ``starting`` (never registered yet), ``disconnected`` (lost the server, retrying),
``draining`` (SIGTERM: finishing its calls) or ``full`` (at its job limit or load threshold).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Literal

from aiohttp import web

NotReady = Literal["starting", "disconnected", "draining", "full"]

HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_LATE = 5.0
"""Seconds without a heartbeat after which the loop counts as stuck."""


class Readiness:
    """What the readiness probe reports, from observations the service feeds it."""

    def __init__(self, *, connected: Callable[[], bool], full: Callable[[], bool]) -> None:
        self._connected = connected
        self._full = full
        self.registered = False
        self.draining = False

    def reason(self) -> NotReady | None:
        """None when ready."""
        if self.draining:
            return "draining"
        if not self.registered:
            return "starting"
        if not self._connected():
            return "disconnected"
        if self._full():
            return "full"
        return None


class Heartbeat:
    """A task ticking on the event loop; late ticks mean a loop too busy to serve calls."""

    def __init__(self, late_after: float = HEARTBEAT_LATE) -> None:
        self.last = time.monotonic()
        self._late_after = late_after
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="health-heartbeat")

    async def _run(self) -> None:
        while True:
            self.last = time.monotonic()
            await asyncio.sleep(min(HEARTBEAT_INTERVAL, self._late_after / 4))

    def late(self) -> float | None:
        """Seconds since the last heartbeat if it is late (or the heartbeat stopped), else None."""
        age = time.monotonic() - self.last
        return age if self._task is None or self._task.done() or age > self._late_after else None

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def add_probes(app: web.Application, readiness: Readiness, heartbeat: Heartbeat) -> None:
    async def healthz(_: web.Request) -> web.Response:
        late = heartbeat.late()
        if late is not None:
            return web.json_response({"alive": False, "heartbeat_age": round(late, 1)}, status=503)
        return web.json_response({"alive": True})

    async def readyz(_: web.Request) -> web.Response:
        reason = readiness.reason()
        if reason is not None:
            return web.json_response({"ready": False, "reason": reason}, status=503)
        return web.json_response({"ready": True})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
