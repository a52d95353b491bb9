"""Metrics of one conversation, published to the room (protocol: docs/metrics.md).

:class:`SessionMetrics` is the one object the session wires up (``worker.session``). It turns
every ``metrics_collected`` metric into a payload (VAD folded into windows), feeds the
:class:`~worker.metrics.turns.TurnTracker` (whose ``turn`` payloads go out the same way), counts
usage, and at the end sends the ``session`` payload and flushes the publisher.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from livekit.agents.metrics import AgentMetrics, VADMetrics

from worker.config import DEFAULT_METRICS_TOPIC
from worker.metrics.payloads import (
    MAX_PAYLOAD_BYTES,
    SessionUsage,
    VadAggregator,
    metric_payload,
    session_payload,
)
from worker.metrics.publisher import JsonlFileSink, MetricsPublisher, MetricsSink, RoomSink
from worker.metrics.turns import TurnTracker

__all__ = [
    "JsonlFileSink",
    "MetricsOptions",
    "MetricsSink",
    "RoomSink",
    "SessionMetrics",
]

logger = logging.getLogger("worker.metrics.collector")


@dataclass(frozen=True)
class MetricsOptions:
    topic: str = DEFAULT_METRICS_TOPIC
    include_transcripts: bool = False
    """Put user/agent text into ``turn`` payloads (off: no transcript leaves the process)."""
    vad_window: float = 10.0
    """Seconds of VAD metrics folded into one ``vad`` payload."""
    max_queue: int = 256
    """Payloads waiting per sink before the oldest is dropped."""
    max_bytes: int = MAX_PAYLOAD_BYTES
    close_timeout: float = 2.0
    """How long ``aclose`` waits for queued payloads to go out."""


class SessionMetrics:
    """Per-component payloads, VAD windows, turn summaries and the session total."""

    def __init__(
        self,
        sinks: Sequence[MetricsSink],
        options: MetricsOptions | None = None,
        *,
        data_message_stats: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.options = options or MetricsOptions()
        self.publisher = MetricsPublisher(
            sinks,
            topic=self.options.topic,
            max_queue=self.options.max_queue,
            max_bytes=self.options.max_bytes,
            close_timeout=self.options.close_timeout,
        )
        self.turns = TurnTracker(
            self.publisher.publish, include_text=self.options.include_transcripts
        )
        self._vad = VadAggregator(self.options.vad_window)
        self._usage = SessionUsage()
        self._data_message_stats = data_message_stats
        self._started_at: float | None = None
        self._closed = False

    def start(self) -> None:
        self._started_at = time.perf_counter()
        self.publisher.start()

    def collect(self, m: AgentMetrics) -> None:
        """Handler for ``metrics_collected``: cheap, synchronous, never raises."""
        if self._closed:
            return
        try:
            self._usage.add(m)
            payload = self._vad.add(m) if isinstance(m, VADMetrics) else metric_payload(m)
            if payload is not None:
                self.publisher.publish(payload)
            self.turns.metrics(m)
        except Exception:
            logger.exception("metrics could not be processed", extra={"metric": type(m).__name__})

    async def aclose(self) -> None:
        """Send the last VAD window and the ``session`` payload, then flush and stop."""
        if self._closed:
            return
        self._closed = True
        last_vad = self._vad.flush()
        if last_vad is not None:
            self.publisher.publish(last_vad)
        stats = None
        if self._data_message_stats is not None:
            try:
                stats = self._data_message_stats()
            except Exception:
                logger.exception("data message stats unavailable")
        duration = time.perf_counter() - self._started_at if self._started_at else 0.0
        self.publisher.publish(
            session_payload(
                self._usage,
                self.turns.counts,
                duration=duration,
                data_messages=stats,
            )
        )
        await self.publisher.aclose()
