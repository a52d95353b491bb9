"""Background sender of metrics payloads: the voice path only ever appends to a queue.

``MetricsPublisher.publish(payload)`` is synchronous and O(1). Each sink (the room, a JSONL
file for ``talk``) has its own bounded queue and sender task, so a slow room slows neither
the caller nor the file. When a queue is full, its oldest payload is dropped; payloads that
fail to send are dropped too. The next payload that does go out on that sink carries
``dropped``: how many were lost on it since the previous delivered one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from worker.config import DEFAULT_METRICS_TOPIC
from worker.metrics.payloads import MAX_PAYLOAD_BYTES, encode_payload

logger = logging.getLogger("worker.metrics.publisher")


class DataPublisher(Protocol):
    """What the publisher needs from ``rtc.LocalParticipant`` (same signature)."""

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: list[str] = [],  # noqa: B006 - mirrors livekit.rtc
        topic: str = "",
    ) -> None: ...


class MetricsSink(Protocol):
    """Where encoded payloads go. ``send`` may be slow or raise; the publisher copes."""

    name: str

    async def send(self, topic: str, data: bytes) -> None: ...

    async def aclose(self) -> None: ...


class RoomSink:
    """Reliable data messages to the room, to everyone or only to the given identities."""

    name = "room"

    def __init__(
        self, participant: DataPublisher, *, destination_identities: Sequence[str] = ()
    ) -> None:
        self._participant = participant
        self._destinations = list(destination_identities)

    async def send(self, topic: str, data: bytes) -> None:
        await self._participant.publish_data(
            data, reliable=True, destination_identities=list(self._destinations), topic=topic
        )

    async def aclose(self) -> None:
        return None


class JsonlFileSink:
    """One ``{"topic": ..., "payload": {...}}`` line per payload (``talk --metrics``).

    ``payload`` is spliced in byte for byte: it is exactly what would have been published.
    The file is created (truncated) on the first payload; all file I/O runs in a worker thread.
    """

    name = "jsonl"

    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def _write(self, line: bytes) -> None:
        if self._file is None:
            self._file = self._path.open("wb")
        self._file.write(line)
        self._file.flush()

    async def send(self, topic: str, data: bytes) -> None:
        line = b'{"topic":' + json.dumps(topic).encode() + b',"payload":' + data + b"}\n"
        await asyncio.to_thread(self._write, line)

    async def aclose(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            await asyncio.to_thread(file.close)


class _Channel:
    """One sink's queue, sender task and loss accounting."""

    def __init__(self, sink: MetricsSink, max_queue: int) -> None:
        self.sink = sink
        self.queue: deque[Mapping[str, Any]] = deque()
        self.max_queue = max_queue
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.unreported = 0  # lost since the last delivered payload
        self.lost = 0  # lost in total
        self.sent = 0
        self.failure_logged = False


class MetricsPublisher:
    """Sends payloads to its sinks from background tasks it owns (``start``/``aclose``)."""

    def __init__(
        self,
        sinks: Sequence[MetricsSink],
        *,
        topic: str = DEFAULT_METRICS_TOPIC,
        max_queue: int = 256,
        max_bytes: int = MAX_PAYLOAD_BYTES,
        send_timeout: float = 5.0,
        close_timeout: float = 2.0,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        self._topic = topic
        self._max_bytes = max_bytes
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        self._channels = [_Channel(s, max_queue) for s in sinks]
        self._started = False
        self._closed = False

    def stats(self) -> dict[str, dict[str, int]]:
        """Per sink: payloads ``sent``, ``dropped`` (lost in total) and ``queued``."""
        return {
            c.sink.name: {"sent": c.sent, "dropped": c.lost, "queued": len(c.queue)}
            for c in self._channels
        }

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        for c in self._channels:
            c.task = asyncio.create_task(self._run(c), name=f"metrics-publisher-{c.sink.name}")

    def publish(self, payload: Mapping[str, Any]) -> None:
        """Queue a payload for every sink; never blocks, never raises."""
        if self._closed:
            logger.debug("publish after close ignored", extra={"type": payload.get("type")})
            return
        snapshot = dict(payload)
        for c in self._channels:
            if len(c.queue) >= c.max_queue:
                c.queue.popleft()
                c.unreported += 1
                c.lost += 1
            c.queue.append(snapshot)
            c.wakeup.set()

    async def aclose(self) -> None:
        """Stop accepting payloads, send what is queued (within ``close_timeout``), close."""
        if self._closed:
            return
        if not self._started:  # nothing was sent yet: still deliver what is queued
            self.start()
        self._closed = True
        tasks = [c.task for c in self._channels if c.task is not None]
        for c in self._channels:
            c.wakeup.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._close_timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending)
        for c in self._channels:
            if c.queue:
                c.lost += len(c.queue)
                c.queue.clear()
            try:
                await c.sink.aclose()
            except Exception as e:
                logger.warning(
                    "closing metrics sink failed",
                    extra={"sink": c.sink.name, "error": type(e).__name__},
                )
            if c.lost:
                logger.info(
                    "metrics payloads lost",
                    extra={"sink": c.sink.name, "dropped": c.lost, "sent": c.sent},
                )

    async def _run(self, c: _Channel) -> None:
        while True:
            if not c.queue:
                if self._closed:
                    return
                c.wakeup.clear()
                await c.wakeup.wait()
                continue
            payload = c.queue.popleft()
            carried = c.unreported
            if carried:
                payload = {**payload, "dropped": carried}
            try:
                data = encode_payload(payload, self._max_bytes)
                await asyncio.wait_for(c.sink.send(self._topic, data), self._send_timeout)
            except asyncio.CancelledError:  # aclose gave up on a send that hung
                c.lost += 1
                raise
            except Exception as e:
                c.lost += 1
                c.unreported += 1  # ``carried`` stays counted: it was not reported
                if not c.failure_logged:
                    c.failure_logged = True
                    logger.warning(
                        "publishing metrics failed; further failures are only counted",
                        extra={"sink": c.sink.name, "error": type(e).__name__},
                    )
                continue
            c.unreported -= carried
            c.sent += 1
