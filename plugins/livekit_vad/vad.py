"""The VAD and its stream: 16 kHz windows through the native model, speech segments out."""

from __future__ import annotations

import dataclasses
import time
import weakref
from dataclasses import dataclass

import numpy as np
from livekit import rtc
from livekit.agents import utils, vad
from livekit.local_inference import VAD as NativeVAD
from livekit.local_inference import VAD_WINDOW_SAMPLES, init_vad

from .log import logger

MODEL_SAMPLE_RATE = 16000
"""The only rate the native model runs at; other input rates are resampled to it."""

WINDOW_SECONDS = VAD_WINDOW_SAMPLES / MODEL_SAMPLE_RATE


@dataclass(frozen=True)
class VADOptions:
    """The options of ``VAD.load``, with the meaning they have in the Silero plugin."""

    min_speech_duration: float = 0.05
    """Speech (windows at or above the threshold, in a row) before START_OF_SPEECH."""
    min_silence_duration: float = 0.55
    """Silence (windows below the threshold, in a row) before END_OF_SPEECH."""
    prefix_padding_duration: float = 0.5
    """Audio kept before the start of speech in the events' frames."""
    max_buffered_speech: float = 60.0
    """Longest speech kept for the events' frames; later audio of the segment is dropped."""
    activation_threshold: float = 0.5
    """P(speech) at or above which a window counts as speech."""

    def updated(self, **changes: float | None) -> VADOptions:
        """These options with the given ones replaced (``None`` keeps the current value)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


class VAD(vad.VAD):
    """LiveKit's on-device VAD. Build it with :meth:`load` (in the worker's prewarm)."""

    @classmethod
    def load(
        cls,
        *,
        min_speech_duration: float = 0.05,
        min_silence_duration: float = 0.55,
        prefix_padding_duration: float = 0.5,
        max_buffered_speech: float = 60.0,
        activation_threshold: float = 0.5,
    ) -> VAD:
        """Load the model (once per process, blocking) and return a VAD with these options."""
        init_vad()
        return cls(
            opts=VADOptions(
                min_speech_duration=min_speech_duration,
                min_silence_duration=min_silence_duration,
                prefix_padding_duration=prefix_padding_duration,
                max_buffered_speech=max_buffered_speech,
                activation_threshold=activation_threshold,
            )
        )

    def __init__(self, *, opts: VADOptions) -> None:
        super().__init__(capabilities=vad.VADCapabilities(update_interval=WINDOW_SECONDS))
        self._opts = opts
        self._streams: weakref.WeakSet[VADStream] = weakref.WeakSet()
        logger.debug("livekit vad loaded", extra=dataclasses.asdict(opts))

    @property
    def options(self) -> VADOptions:
        return self._opts

    def stream(self) -> VADStream:
        stream = VADStream(self, self._opts)
        self._streams.add(stream)
        return stream

    def update_options(
        self,
        *,
        min_speech_duration: float | None = None,
        min_silence_duration: float | None = None,
        prefix_padding_duration: float | None = None,
        max_buffered_speech: float | None = None,
        activation_threshold: float | None = None,
    ) -> None:
        """Change options for later streams and the open ones (``None`` keeps a value)."""
        changes = {
            "min_speech_duration": min_speech_duration,
            "min_silence_duration": min_silence_duration,
            "prefix_padding_duration": prefix_padding_duration,
            "max_buffered_speech": max_buffered_speech,
            "activation_threshold": activation_threshold,
        }
        self._opts = self._opts.updated(**changes)
        for stream in self._streams:
            stream.update_options(**changes)


class _SpeechBuffer:
    """The current segment's audio at the input rate: the prefix padding, then the speech.

    Outside speech only the last ``prefix`` samples are kept; a segment longer than the
    capacity keeps its beginning (as the Silero plugin does)."""

    def __init__(self, rate: int, opts: VADOptions) -> None:
        self._rate = rate
        self._data = np.zeros(0, dtype=np.int16)
        self._length = 0
        self._full_logged = False
        self.resize(opts)

    @property
    def rate(self) -> int:
        return self._rate

    def resize(self, opts: VADOptions) -> None:
        self._prefix = int(opts.prefix_padding_duration * self._rate)
        capacity = self._prefix + int(opts.max_buffered_speech * self._rate)
        kept = self._data[: min(self._length, capacity)]
        self._data = np.zeros(capacity, dtype=np.int16)
        self._data[: kept.size] = kept
        self._length = kept.size
        self._full_logged = self._length >= capacity

    def append(self, samples: np.ndarray) -> None:
        n = min(samples.size, self._data.size - self._length)
        self._data[self._length : self._length + n] = samples[:n]
        self._length += n
        if n < samples.size and not self._full_logged:
            self._full_logged = True
            logger.warning("max_buffered_speech reached, the rest of this speech is not kept")

    def keep_prefix_only(self) -> None:
        """Outside speech: keep only the last ``prefix`` samples (the next segment's padding)."""
        if self._length > self._prefix:
            self._data[: self._prefix] = self._data[self._length - self._prefix : self._length]
            self._length = self._prefix
        self._full_logged = False

    def frame(self) -> rtc.AudioFrame:
        return _frame(self._data[: self._length], self._rate)


class VADStream(vad.VADStream):
    """One participant's audio in, VAD events out.

    The model runs on the event loop, window by window as frames arrive: a window's inference
    is far shorter than a hop to a worker thread and back would be (docs/vad.md has the
    figures), and the native call releases the GIL.
    """

    def __init__(self, vad_: VAD, opts: VADOptions) -> None:
        super().__init__(vad_)
        self._opts = opts
        self._buffer: _SpeechBuffer | None = None

    def update_options(
        self,
        *,
        min_speech_duration: float | None = None,
        min_silence_duration: float | None = None,
        prefix_padding_duration: float | None = None,
        max_buffered_speech: float | None = None,
        activation_threshold: float | None = None,
    ) -> None:
        self._opts = self._opts.updated(
            min_speech_duration=min_speech_duration,
            min_silence_duration=min_silence_duration,
            prefix_padding_duration=prefix_padding_duration,
            max_buffered_speech=max_buffered_speech,
            activation_threshold=activation_threshold,
        )
        if self._buffer is not None:
            self._buffer.resize(self._opts)

    @utils.log_exceptions(logger=logger)
    async def _main_task(self) -> None:
        model = NativeVAD()
        try:
            await self._detect(model)
        finally:
            model.close()

    async def _detect(self, model: NativeVAD) -> None:
        rate = 0
        resampler: rtc.AudioResampler | None = None
        pending_input = np.zeros(0, dtype=np.int16)  # input-rate audio not yet in a window
        pending_model = np.zeros(0, dtype=np.int16)  # 16 kHz audio not yet in a window
        input_per_window = 0.0
        carry = 0.0  # fraction of an input sample owed to the next window (non-integer ratio)
        state = _SegmentState()

        async for item in self._input_ch:
            if not isinstance(item, rtc.AudioFrame):
                continue  # a flush marker: segments end on silence, not on flushes
            if not rate:
                rate = item.sample_rate
                self._buffer = _SpeechBuffer(rate, self._opts)
                input_per_window = VAD_WINDOW_SAMPLES * rate / MODEL_SAMPLE_RATE
                if rate != MODEL_SAMPLE_RATE:
                    resampler = rtc.AudioResampler(
                        input_rate=rate,
                        output_rate=MODEL_SAMPLE_RATE,
                        quality=rtc.AudioResamplerQuality.QUICK,
                    )
            elif item.sample_rate != rate:
                logger.error(
                    "frame dropped: its sample rate differs from the stream's",
                    extra={"sample_rate": item.sample_rate, "stream_rate": rate},
                )
                continue
            assert self._buffer is not None

            mono = _mono(item)
            pending_input = np.concatenate([pending_input, mono])
            model_frames = resampler.push(item) if resampler is not None else [item]
            pending_model = np.concatenate([pending_model, *(_mono(f) for f in model_frames)])

            while pending_model.size >= VAD_WINDOW_SAMPLES:
                window = pending_model[:VAD_WINDOW_SAMPLES]
                pending_model = pending_model[VAD_WINDOW_SAMPLES:]
                owed = input_per_window + carry
                n_input = min(int(owed), pending_input.size)
                carry = owed - n_input
                window_input = pending_input[:n_input]
                pending_input = pending_input[n_input:]

                started = time.perf_counter()
                p = model.predict(window)
                self._on_window(state, p, time.perf_counter() - started, window_input, self._buffer)

    def _on_window(
        self,
        state: _SegmentState,
        p: float,
        inference_duration: float,
        window_input: np.ndarray,
        buffer: _SpeechBuffer,
    ) -> None:
        opts = self._opts
        state.samples += VAD_WINDOW_SAMPLES
        state.timestamp += WINDOW_SECONDS
        buffer.append(window_input)
        is_speech = p >= opts.activation_threshold
        if state.speaking:
            if is_speech:
                state.speech_duration += WINDOW_SECONDS
        else:
            state.silence_duration += WINDOW_SECONDS
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=vad.VADEventType.INFERENCE_DONE,
                samples_index=state.samples,
                timestamp=state.timestamp,
                speech_duration=state.speech_duration,
                silence_duration=state.silence_duration,
                frames=[_frame(window_input, buffer.rate)],
                probability=p,
                inference_duration=inference_duration,
                speaking=state.speaking,
                raw_accumulated_silence=state.silence_run,
                raw_accumulated_speech=state.speech_run,
            )
        )

        if is_speech:
            state.speech_run += WINDOW_SECONDS
            state.silence_run = 0.0
            if not state.speaking and state.speech_run >= opts.min_speech_duration:
                state.speaking = True
                state.silence_duration = 0.0
                state.speech_duration = state.speech_run
                self._send_edge(vad.VADEventType.START_OF_SPEECH, state, buffer)
        else:
            state.silence_run += WINDOW_SECONDS
            state.speech_run = 0.0
            if state.speaking and state.silence_run >= opts.min_silence_duration:
                state.speaking = False
                state.speech_duration = 0.0
                state.silence_duration = state.silence_run
                self._send_edge(vad.VADEventType.END_OF_SPEECH, state, buffer)
            if not state.speaking:
                buffer.keep_prefix_only()

    def _send_edge(
        self, kind: vad.VADEventType, state: _SegmentState, buffer: _SpeechBuffer
    ) -> None:
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=kind,
                samples_index=state.samples,
                timestamp=state.timestamp,
                speech_duration=state.speech_duration,
                silence_duration=state.silence_duration,
                frames=[buffer.frame()],
                speaking=state.speaking,
            )
        )


@dataclass
class _SegmentState:
    samples: int = 0  # 16 kHz samples inferred so far
    timestamp: float = 0.0  # seconds of audio inferred so far
    speaking: bool = False
    speech_duration: float = 0.0  # published: speech windows of the current segment
    silence_duration: float = 0.0  # published: silence since the last segment ended
    speech_run: float = 0.0  # speech windows in a row
    silence_run: float = 0.0  # silence windows in a row


def _mono(frame: rtc.AudioFrame) -> np.ndarray:
    """The frame's first channel as int16 samples."""
    samples = np.frombuffer(frame.data, dtype=np.int16)
    return samples[:: frame.num_channels] if frame.num_channels > 1 else samples


def _frame(samples: np.ndarray, rate: int) -> rtc.AudioFrame:
    return rtc.AudioFrame(
        data=samples.tobytes(), sample_rate=rate, num_channels=1, samples_per_channel=samples.size
    )
