"""The user's utterance audio, for ChatAudio, captured from what the VAD already receives.

``TappedVAD`` wraps any VAD: every frame the pipeline pushes into its VAD stream is also kept in
an ``UtteranceAudio`` ring buffer, and every VAD event is shown to it. No second AudioStream is
opened on the track (no extra decoding or resampling per session).

Why a ring buffer rather than the END_OF_SPEECH event's frames: the reply may be requested as
soon as the final transcript arrives, before the VAD has decided that speech ended, so the audio
"up to now" must be available at any moment.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import llm, vad


@dataclass(frozen=True)
class UtteranceAudioOptions:
    max_seconds: float = 30.0
    """Longest utterance kept; older audio is dropped (bounded memory)."""
    prefix_seconds: float = 0.3
    """Audio kept before the detected start of speech (the VAD detects speech late)."""


class UtteranceAudio:
    """Frames since the current utterance started; all accounting in samples, O(1) per frame."""

    def __init__(self, options: UtteranceAudioOptions | None = None) -> None:
        self._opts = options or UtteranceAudioOptions()
        self._frames: deque[tuple[int, rtc.AudioFrame]] = deque()  # (first sample index, frame)
        self._samples = 0  # samples pushed so far (at the frames' own rate)
        self._rate = 16000
        self._start: int | None = None  # sample index where the current utterance starts

    def push(self, frame: rtc.AudioFrame) -> None:
        if frame.samples_per_channel == 0:
            return
        self._rate = frame.sample_rate
        self._frames.append((self._samples, frame))
        self._samples += frame.samples_per_channel
        horizon = self._samples - int(self._opts.max_seconds * self._rate)
        while (
            self._frames and self._frames[0][0] + self._frames[0][1].samples_per_channel < horizon
        ):
            self._frames.popleft()

    def on_vad_event(self, ev: vad.VADEvent) -> None:
        if ev.type == vad.VADEventType.START_OF_SPEECH and self._start is None:
            back = ev.speech_duration + self._opts.prefix_seconds
            self._start = max(0, self._samples - int(back * self._rate))

    @property
    def in_utterance(self) -> bool:
        return self._start is not None

    def take(self) -> llm.ChatAudio | None:
        """The current utterance so far as one 16 kHz mono ChatAudio (None if there is none)."""
        if self._start is None:
            return None
        frames = [f for first, f in self._frames if first + f.samples_per_channel > self._start]
        if not frames:
            return None
        return llm.ChatAudio(frame=rtc.combine_audio_frames(frames))

    def recent(self, seconds: float) -> rtc.AudioFrame | None:
        """The last ``seconds`` of everything pushed, speech or not (None before any audio):
        what the end-of-turn model scores while the user is silent."""
        wanted = int(seconds * self._rate)
        frames: list[rtc.AudioFrame] = []
        have = 0
        for _, frame in reversed(self._frames):
            if have >= wanted:
                break
            frames.append(frame)
            have += frame.samples_per_channel
        if not frames:
            return None
        combined = rtc.combine_audio_frames(frames[::-1])
        excess = max(0, have - wanted) * combined.num_channels
        if not excess:
            return combined
        data = combined.data[excess:]
        return rtc.AudioFrame(
            data=data.tobytes(),
            sample_rate=combined.sample_rate,
            num_channels=combined.num_channels,
            samples_per_channel=len(data) // combined.num_channels,
        )

    def reset(self) -> None:
        """The utterance was committed: the next one starts at the next START_OF_SPEECH."""
        self._start = None


class TappedVAD(vad.VAD):
    """A VAD that shows every pushed frame to ``on_frame`` and every event to its listeners."""

    def __init__(
        self,
        inner: vad.VAD,
        *,
        on_frame: Callable[[rtc.AudioFrame], None],
        on_event: Callable[[vad.VADEvent], None] | None = None,
    ) -> None:
        super().__init__(capabilities=inner.capabilities)
        self._inner = inner
        self._on_frame = on_frame
        self._listeners: list[Callable[[vad.VADEvent], None]] = []
        if on_event is not None:
            self._listeners.append(on_event)

    def listen(self, on_event: Callable[[vad.VADEvent], None]) -> None:
        """Show every later VAD event to ``on_event`` too."""
        self._listeners.append(on_event)

    def _on_event(self, ev: vad.VADEvent) -> None:
        for listener in self._listeners:
            listener(ev)

    def stream(self) -> vad.VADStream:
        return _TappedStream(self, self._inner.stream())


class _TappedStream(vad.VADStream):
    """Input goes straight to the inner stream (no channel hop and task wake-up per 10 ms
    frame); the inner stream's events are shown to the tap and passed on."""

    def __init__(self, tapped: TappedVAD, inner: vad.VADStream) -> None:
        self._tapped = tapped
        self._inner = inner
        super().__init__(tapped)

    def push_frame(self, frame: rtc.AudioFrame) -> None:
        self._check_input_not_ended()
        self._check_not_closed()
        self._tapped._on_frame(frame)
        self._inner.push_frame(frame)

    def flush(self) -> None:
        self._check_input_not_ended()
        self._check_not_closed()
        self._inner.flush()

    def end_input(self) -> None:
        self._check_input_not_ended()
        self._check_not_closed()
        self._input_ch.close()
        self._inner.end_input()

    async def _main_task(self) -> None:
        try:
            async for ev in self._inner:
                self._tapped._on_event(ev)
                self._event_ch.send_nowait(ev)
        finally:
            await self._inner.aclose()
