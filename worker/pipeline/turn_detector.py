"""End of turn from the audio: LiveKit's on-device end-of-turn model scores the end of speech.

0.12's pipeline asks a turn detector (its public ``VoicePipelineAgent(turn_detector=...)``
protocol: ``predict_end_of_turn``, ``unlikely_threshold``, ``supports_language``) once the VAD
says the user stopped and a final transcript is in, then waits ``min_endpointing_delay`` if the
answer clears the threshold and ``max_endpointing_delay`` if not. :class:`AudioTurnDetector`
answers from the sound instead of the text: ``livekit.local_inference.EOT`` scores 1.2 s of the
user's audio ending ``scored_silence`` after their last speech (the model hears the intonation
of the end of speech; the longer the silence in its window, the less speech it has to judge).
So the reply plays at the VAD's end of speech when the score says the turn is over, and waits
``long_wait`` more (the user may resume) when it says mid-thought. The user speaking again
cancels the wait (0.12 cancels its validation task).

A scoring runs in a worker thread (the model releases the GIL), never more than one per
session: a new one waits for the one still running, even when the wait that started it was
cancelled. The model is loaded once per process in the worker's prewarm (:func:`prewarm`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from livekit import rtc
from livekit.agents import llm, vad
from livekit.local_inference import EOT, EOT_MAX_SAMPLES, init_eot

logger = logging.getLogger("worker.pipeline.turn_detector")

EOT_SAMPLE_RATE = 16000
"""The end-of-turn model's input rate."""

EOT_WINDOW_SECONDS = EOT_MAX_SAMPLES / EOT_SAMPLE_RATE
"""The longest audio the model scores (its receptive field)."""


@dataclass(frozen=True)
class AudioTurnOptions:
    """Tuned on bench/turn_set.py's labelled speech with bench/turn_tuning.py (the figures and
    how they were chosen: docs/vad.md)."""

    threshold: float = 0.4
    """P(turn ended) at or above which the reply plays at the VAD's end of speech."""
    scored_silence: float = 0.3
    """Seconds of silence after the last speech in the audio the model scores."""
    decide_after: float = 0.3
    """The VAD's ``min_silence_duration`` with this detector: 0.12 asks it at the VAD's end of
    speech, and the reply plays then if the score clears the threshold."""
    long_wait: float = 1.2
    """0.12's ``max_endpointing_delay``: the wait when the score says mid-thought."""
    min_delay: float = 0.0
    """0.12's ``min_endpointing_delay``: no wait beyond the VAD's when the score says done."""


RecentAudio = Callable[[float], rtc.AudioFrame | None]
"""The last N seconds of the user's audio (``UtteranceAudio.recent``)."""


def prewarm() -> None:
    """Load the end-of-turn model (process-wide, blocking): call it in the worker's prewarm."""
    init_eot()


class AudioTurnDetector:
    """0.12's turn-detector protocol answered by the audio end-of-turn model (one per session).

    ``recent_audio`` gives the user's latest audio (``UtteranceAudio.recent``); :meth:`on_vad_event`
    must see the VAD's events (it tracks how long the user has been silent). ``model`` is the
    native model (built here by default; the process-wide weights are shared)."""

    def __init__(
        self,
        recent_audio: RecentAudio,
        options: AudioTurnOptions | None = None,
        *,
        model: EOT | None = None,
    ) -> None:
        self._recent = recent_audio
        self.options = options or AudioTurnOptions()
        self._model = model if model is not None else EOT()
        self._silence = 0.0  # seconds since the last window the VAD judged speech
        self._scoring: asyncio.Task[float] | None = None
        self._one_at_a_time = asyncio.Lock()
        self._failed = False
        self.scorings = 0
        """Scorings started so far (the model's cost is this times one inference)."""
        self.failures = 0
        """Scorings that raised (each answered as "turn over": the reply is not held back)."""

    def on_vad_event(self, ev: vad.VADEvent) -> None:
        if ev.type == vad.VADEventType.INFERENCE_DONE:
            self._silence = ev.raw_accumulated_silence

    # --- 0.12's _TurnDetector protocol ------------------------------------------------------

    def unlikely_threshold(self, language: str | None) -> float:
        return self.options.threshold

    def supports_language(self, language: str | None) -> bool:
        # an acoustic model: it hears the intonation and the pause, not the words
        return True

    async def predict_end_of_turn(self, chat_ctx: llm.ChatContext) -> float:
        return await self.score()

    # --- scoring ----------------------------------------------------------------------------

    async def score(self) -> float:
        """P(turn ended) for the audio ending ``scored_silence`` after the last speech (once
        any scoring still running has finished)."""
        async with self._one_at_a_time:
            running = self._scoring
            if running is not None and not running.done():
                # its wait was cancelled, its thread was not: let it finish first
                await asyncio.wait([running])
            skip = max(0.0, self._silence - self.options.scored_silence)
            frame = self._recent(EOT_WINDOW_SECONDS + skip)
            if frame is None:
                return 1.0  # nothing heard: nothing says the user is mid-thought
            self.scorings += 1
            self._scoring = asyncio.create_task(asyncio.to_thread(self._predict, frame, skip))
            return await asyncio.shield(self._scoring)

    def _predict(self, frame: rtc.AudioFrame, skip: float) -> float:
        try:
            pcm = to_model_input(frame)
            end = pcm.size - round(skip * EOT_SAMPLE_RATE)
            window = np.ascontiguousarray(pcm[max(0, end - EOT_MAX_SAMPLES) : end])
            return float(self._model.predict(window))
        except Exception as e:
            self.failures += 1
            if not self._failed:
                self._failed = True
                logger.warning(
                    "end-of-turn scoring failed: the turn counts as over",
                    extra={"error": type(e).__name__},
                )
            return 1.0

    async def aclose(self) -> None:
        """Wait for a scoring still running (a thread cannot be stopped), release the model."""
        if self._scoring is not None:
            await asyncio.wait([self._scoring])
        self._model.close()


def to_model_input(frame: rtc.AudioFrame) -> np.ndarray:
    """The frame as the model takes it: mono int16 at 16 kHz."""
    if frame.num_channels > 1:
        samples = np.frombuffer(frame.data, dtype=np.int16)[:: frame.num_channels]
        frame = rtc.AudioFrame(samples.tobytes(), frame.sample_rate, 1, samples.size)
    if frame.sample_rate != EOT_SAMPLE_RATE:
        resampler = rtc.AudioResampler(
            frame.sample_rate, EOT_SAMPLE_RATE, quality=rtc.AudioResamplerQuality.HIGH
        )
        frames = [*resampler.push(frame), *resampler.flush()]
        pcm = np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])
    else:
        pcm = np.frombuffer(frame.data, dtype=np.int16)
    return pcm
