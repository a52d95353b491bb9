"""An STT whose streams never die: a failed inner stream is replaced, with backoff.

Why: VoicePipelineAgent 0.12 opens ONE ``stt.stream()`` per participant track. When it fails,
the agent's recognition task ends and the agent is deaf for the rest of the call (its VAD stops
too). The Deepgram 0.7.4 plugin retries a dropped socket three times, but a refused handshake
(HTTP 5xx on the websocket upgrade) is not an ``APIError`` and ends its stream at once, and any
outage longer than its retries ends it as well.

:class:`ReconnectingSTT` wraps any streaming STT. Its stream feeds a fresh inner stream whenever the
current one fails, after a backoff (``first_delay`` doubling up to ``max_delay``; reset once an
inner stream has stayed up for ``healthy_after`` seconds). The next stream first gets the audio
the failed one had been given since its last final transcript (it may never have reached the
provider) and the audio that arrived during the outage, at most ``max_buffer_seconds`` of it
(the newest), so an utterance spoken across a short outage is still recognised. Each failure is also
emitted as an ``STTMetrics`` whose ``error`` is a :class:`~worker.providers.errors.ProviderError`.

Closing ends the inner stream the way the plugins expect: its input ends (Deepgram then sends the
audio it still holds, ``CloseStream``, and gets the last transcripts), and it is read to its end
before anything is cancelled. Cancelling a Deepgram 0.7.4 stream mid-connection leaves its task
``gather`` with an exception nobody retrieves (printed as "_GatheringFuture exception was never
retrieved" at every session end); its stream only ends by itself at its next keepalive tick (every
5 s), which ``close_timeout`` covers. Usage the inner stream never reported (Deepgram reports audio
in 5 s windows and drops the last partial one) is reported when it ends, so the ``stt`` metrics add
up to all the audio given to the provider.

The stream implements the framework's plugin contract (``_run`` reading ``_input_ch`` and
writing ``_event_ch``, as every 0.12 STT plugin does); nothing else of the framework is reached.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import stt, utils
from livekit.agents.metrics import STTMetrics
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.utils import AudioBuffer

from worker.pipeline.adapter import STTFlush
from worker.providers.errors import describe_failure, failure_metric
from worker.providers.wrapper import Wrapper

logger = logging.getLogger("worker.providers.reconnecting_stt")


@dataclass(frozen=True)
class ReconnectingSTTOptions:
    first_delay: float = 0.5
    """Seconds before the first replacement stream; doubled after each further failure."""
    max_delay: float = 5.0
    healthy_after: float = 10.0
    """An inner stream that ran this long before failing resets the backoff."""
    max_buffer_seconds: float = 10.0
    """Audio kept for the next stream (the newest); older audio is dropped. Above
    ``max_delay``, so one backoff never drops what was said just before it."""
    close_timeout: float = 6.0
    """How long ``aclose`` lets the inner stream finish by itself before cancelling it (above
    the Deepgram plugin's 5 s keepalive interval, after which its stream ends)."""


class ReconnectingSTT(Wrapper[stt.STT], stt.STT):
    """Wraps a streaming STT; owns it (``aclose`` closes it). Metrics are the inner STT's,
    re-emitted, plus one STTMetrics with an ``error`` per failed inner stream."""

    def __init__(
        self, inner: stt.STT, options: ReconnectingSTTOptions | None = None, *, endpoint: str = ""
    ) -> None:
        if not inner.capabilities.streaming:
            raise ValueError("ReconnectingSTT needs a streaming STT")
        super().__init__(capabilities=inner.capabilities)
        self._own_inner(inner)
        self._opts = options or ReconnectingSTTOptions()
        self.endpoint = endpoint
        """Where the inner STT is reached (for failure messages; no secrets)."""
        self.failures = 0
        """Inner streams that failed, over all streams of this STT."""

    @property
    def options(self) -> ReconnectingSTTOptions:
        return self._opts

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: str | None,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        return await self._inner.recognize(buffer, language=language, conn_options=conn_options)

    def stream(
        self,
        *,
        language: str | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> ReconnectingStream:
        return ReconnectingStream(self, language=language, conn_options=conn_options)

    async def aclose(self) -> None:
        await self._close_inner()


_Input = rtc.AudioFrame | STTFlush


class ReconnectingStream(stt.RecognizeStream):
    def __init__(
        self, owner: ReconnectingSTT, *, language: str | None, conn_options: APIConnectOptions
    ) -> None:
        # This level never fails (it replaces its inner stream instead), so it never retries.
        super().__init__(stt=owner, conn_options=dataclasses.replace(conn_options, max_retry=0))
        self._owner = owner
        self._language = language
        self._inner_conn_options = conn_options
        self._backlog = _AudioQueue(owner.options.max_buffer_seconds)
        """Input for the next inner stream, before the live input."""
        self._unconfirmed = _AudioQueue(owner.options.max_buffer_seconds)
        """Input given to the current inner stream since its last final transcript."""
        self.failures = 0
        """Inner streams of this stream that failed."""
        self._given = 0.0
        """Seconds of audio given to the current inner stream."""
        self._reported = 0.0
        """Seconds of audio the current inner stream reported as used."""
        self._finished = asyncio.Event()
        self._last_failure = ""

    async def aclose(self) -> None:
        """End the input, let the inner stream finish (module docstring), then close."""
        self._input_ch.close()
        try:
            async with asyncio.timeout(self._owner.options.close_timeout):
                await self._finished.wait()
        except TimeoutError:
            logger.debug("STT stream did not end by itself; cancelling it")
        await super().aclose()

    async def _metrics_monitor_task(self, event_aiter: AsyncIterable[stt.SpeechEvent]) -> None:
        # The inner streams report their own metrics (forwarded by ReconnectingSTT); drain this
        # copy of the events so the tee does not buffer them.
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        try:
            await self._run_streams()
        finally:
            self._finished.set()

    async def _run_streams(self) -> None:
        opts = self._owner.options
        delay = opts.first_delay
        while True:
            inner = self._owner.inner.stream(
                language=self._language, conn_options=self._inner_conn_options
            )
            started = time.monotonic()
            self._given = self._reported = 0.0
            try:
                input_ended = await self._pump(inner)
                if input_ended:
                    return
                error: BaseException = RuntimeError("the STT stream ended by itself")
            except Exception as e:
                error = e
            finally:
                await inner.aclose()
                self._report_unreported_usage(started)
            if time.monotonic() - started >= opts.healthy_after:
                delay = opts.first_delay
            self._backlog.extend(self._unconfirmed.take())
            self._report_failure(error, delay)
            if not await self._buffer_for(delay):
                return  # the input ended during the outage
            delay = min(delay * 2, opts.max_delay)

    async def _pump(self, inner: stt.RecognizeStream) -> bool:
        """Feed ``inner`` (backlog first) and forward its events until it ends. True if it
        ended because our input ended; raises the inner stream's error if it failed."""

        async def forward_input() -> None:
            try:
                for item in self._backlog.take():
                    self._push(inner, item)
                async for item in self._input_ch:
                    self._push(inner, item)
                inner.end_input()
            except RuntimeError:
                # The inner stream is closed: it failed, and forward_events raises its error.
                pass

        feeder = asyncio.create_task(forward_input(), name="ReconnectingStream.forward_input")
        try:
            async for ev in inner:
                if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                    self._unconfirmed.take()  # recognised: never fed again
                elif ev.type == stt.SpeechEventType.RECOGNITION_USAGE and ev.recognition_usage:
                    self._reported += ev.recognition_usage.audio_duration
                self._event_ch.send_nowait(ev)
        finally:
            ended = feeder.done() and self._input_ch.closed
            await utils.aio.gracefully_cancel(feeder)
        return ended

    def _push(self, inner: stt.RecognizeStream, item: _Input) -> None:
        self._unconfirmed.append(item)
        if isinstance(item, rtc.AudioFrame):
            inner.push_frame(item)
            self._given += item.duration
        else:
            inner.flush()

    async def _buffer_for(self, seconds: float) -> bool:
        """Keep the newest input for ``seconds``; False if the input ended meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                async for item in self._input_ch:
                    self._backlog.append(item)
                return False
        except TimeoutError:
            return True

    def _report_unreported_usage(self, started: float) -> None:
        """The audio given to the inner stream that it never reported, as one more metric of
        the inner STT's (its ``duration`` is the stream's age, like the plugin's)."""
        unreported = self._given - self._reported
        if unreported < 0.001:
            return
        inner = self._owner.inner
        self._owner.emit(
            "metrics_collected",
            STTMetrics(
                request_id="",
                timestamp=time.time(),
                duration=time.monotonic() - started,
                label=inner.label,
                audio_duration=unreported,
                streamed=True,
                error=None,
            ),
        )

    def _report_failure(self, error: BaseException, delay: float) -> None:
        self.failures += 1
        self._owner.failures += 1
        description = describe_failure(
            "STT", error, label=self._owner.inner.label, endpoint=self._owner.endpoint
        )
        # one console line per cause: an outage repeats the same failure at every retry
        repeated = description == self._last_failure
        self._last_failure = description
        logger.log(
            logging.DEBUG if repeated else logging.WARNING,
            "%s; replacing the stream in %.1f s",
            description,
            delay,
            extra={
                "error": type(error).__name__,
                "retry_in": round(delay, 3),
                "failures": self.failures,
            },
        )
        self._owner.emit(
            "metrics_collected",
            failure_metric("stt", label=self._owner.label, error=error, recovered=True),
        )


class _AudioQueue:
    """Input items, keeping at most ``max_seconds`` of audio (the newest)."""

    def __init__(self, max_seconds: float) -> None:
        self._max = max_seconds
        self._items: collections.deque[_Input] = collections.deque()
        self._seconds = 0.0

    def append(self, item: _Input) -> None:
        self._items.append(item)
        if isinstance(item, rtc.AudioFrame):
            self._seconds += item.duration
        while self._seconds > self._max and self._items:
            dropped = self._items.popleft()
            if isinstance(dropped, rtc.AudioFrame):
                self._seconds -= dropped.duration

    def extend(self, items: list[_Input]) -> None:
        for item in items:
            self.append(item)

    def take(self) -> list[_Input]:
        items, self._items, self._seconds = list(self._items), collections.deque(), 0.0
        return items
