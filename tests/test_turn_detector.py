"""worker.pipeline.turn_detector: the audio end-of-turn model behind 0.12's turn-detector protocol.

The real native model scores real espeak speech kept by the real UtteranceAudio; where a test
needs to see the calls, the native model is wrapped (it is LiveKit's, not ours).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import llm
from livekit.agents import vad as agents_vad
from livekit.local_inference import EOT, EOT_MAX_SAMPLES

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply
from tests.speech import silence, speak
from tests.vad_audio import trim
from worker.pipeline.turn_detector import AudioTurnDetector, AudioTurnOptions, prewarm
from worker.room_io.utterance_audio import UtteranceAudio

RATE = 16000
QUESTION = "What time does the pharmacy close today?"


def heard(samples: np.ndarray) -> UtteranceAudio:
    audio = UtteranceAudio()
    for i in range(0, samples.size - 160 + 1, 160):
        audio.push(rtc.AudioFrame(samples[i : i + 160].tobytes(), RATE, 1, 160))
    return audio


def silent_for(seconds: float) -> agents_vad.VADEvent:
    """The VAD's latest window: the user has been silent ``seconds``."""
    return agents_vad.VADEvent(
        type=agents_vad.VADEventType.INFERENCE_DONE,
        samples_index=0,
        timestamp=0.0,
        speech_duration=0.0,
        silence_duration=seconds,
        raw_accumulated_silence=seconds,
    )


class WatchedModel:
    """The native model, with its calls counted and their overlap measured."""

    def __init__(self, *, hold: float = 0.0, fail: bool = False) -> None:
        self._model = EOT()
        self._hold = hold
        self._fail = fail
        self._lock = threading.Lock()
        self.calls = 0
        self.running = 0
        self.most_running = 0

    def predict(self, pcm: np.ndarray) -> float:
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(self._hold)
            if self._fail:
                return float(self._model.predict(np.zeros(EOT_MAX_SAMPLES + 1, np.int16)))
            return float(self._model.predict(pcm))
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        self._model.close()


def detector_for(audio: UtteranceAudio, model: Any = None, **options: Any) -> AudioTurnDetector:
    return AudioTurnDetector(audio.recent, AudioTurnOptions(**options), model=model)


async def test_scores_the_audio_ending_scored_silence_after_the_speech() -> None:
    prewarm()
    speech = trim(speak(QUESTION, RATE))
    samples = np.concatenate([silence(1.0, RATE), speech, silence(0.8, RATE)])
    detector = detector_for(heard(samples), scored_silence=0.3)
    detector.on_vad_event(silent_for(0.8))
    try:
        p = await detector.predict_end_of_turn(llm.ChatContext())
    finally:
        await detector.aclose()

    model = EOT()
    end = samples.size - int(0.5 * RATE)  # 0.3 s after the speech, not the 0.8 s heard so far
    expected = model.predict(np.ascontiguousarray(samples[end - EOT_MAX_SAMPLES : end]))
    latest = model.predict(np.ascontiguousarray(samples[-EOT_MAX_SAMPLES:]))
    assert abs(expected - latest) > 0.01, "the two windows must score differently"
    assert p == pytest.approx(expected, abs=1e-6)
    assert detector.scorings == 1


async def test_protocol_answers_for_0_12() -> None:
    detector = detector_for(heard(silence(0.5, RATE)), threshold=0.45)
    try:
        assert detector.unlikely_threshold("fr") == 0.45
        assert detector.supports_language(None)
        assert detector.supports_language("de")
    finally:
        await detector.aclose()


async def test_one_scoring_in_flight_even_when_a_wait_is_cancelled() -> None:
    """0.12 cancels its validation (and so our scoring) on each new transcript or speech start;
    the thread still runs, and the next scoring waits for it."""
    speech = trim(speak(QUESTION, RATE))
    model = WatchedModel(hold=0.05)
    detector = detector_for(heard(np.concatenate([speech, silence(0.6, RATE)])), model=model)
    detector.on_vad_event(silent_for(0.6))
    ctx = llm.ChatContext()
    first = asyncio.create_task(detector.predict_end_of_turn(ctx))
    await asyncio.sleep(0.01)  # its thread is running
    first.cancel()
    rest = await asyncio.gather(*(detector.predict_end_of_turn(ctx) for _ in range(3)))
    await detector.aclose()

    assert first.cancelled()
    assert model.calls == 4
    assert model.most_running == 1
    assert len(set(rest)) == 1, "the same audio scores the same"


async def test_a_failing_model_lets_the_reply_play_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = WatchedModel(fail=True)
    detector = detector_for(heard(speak(QUESTION, RATE)), model=model)
    caplog.set_level(logging.WARNING, logger="worker.pipeline.turn_detector")
    try:
        scores = [await detector.predict_end_of_turn(llm.ChatContext()) for _ in range(2)]
    finally:
        await detector.aclose()
    assert scores == [1.0, 1.0]
    assert detector.failures == 2
    warnings = [r for r in caplog.records if "end-of-turn scoring failed" in r.getMessage()]
    assert len(warnings) == 1


async def test_no_audio_yet_says_nothing_against_the_turn_being_over() -> None:
    model = WatchedModel()
    detector = detector_for(UtteranceAudio(), model=model)
    try:
        assert await detector.predict_end_of_turn(llm.ChatContext()) == 1.0
    finally:
        await detector.aclose()
    assert model.calls == 0


# --- in a session: 0.12's pipeline asks the detector and waits as it says ------------------


async def first_reply_gap(make_session: SessionFactory, threshold: float) -> tuple[float, int]:
    """Seconds from the end of the user's utterance to the reply's first sound, and the
    scorings it took, with every score judged against ``threshold``."""
    h = await make_session(
        lambda body: Reply(text="It is noon.", ttft=0.05, tokens_per_second=100),
        env={"TURN_DETECTOR": "audio"},
    )
    detector = h.parts.conversation.pipeline.turn_detector
    assert detector is not None
    detector.options = dataclasses.replace(detector.options, threshold=threshold)
    u = await h.utter("what time is it in Paris")
    await h.wait_for_replies(1)
    recorder = h.room.outbox.audio[0]
    await recorder.wait_for_audio(0.2, timeout=10)
    assert recorder.first_audible_at is not None
    return recorder.first_audible_at - u.ended_at, detector.scorings


@pytest.mark.timeout(60)
async def test_the_reply_waits_the_long_wait_when_the_score_says_mid_thought(
    make_session: SessionFactory,
) -> None:
    done_gap, done_scorings = await first_reply_gap(make_session, threshold=0.0)
    thought_gap, thought_scorings = await first_reply_gap(make_session, threshold=1.01)
    assert done_scorings >= 1, "the pipeline asked the detector"
    assert thought_scorings >= 1
    long_wait = AudioTurnOptions().long_wait
    # same speech, same providers: only the detector's answer differs
    assert thought_gap - done_gap > 0.7 * long_wait, (done_gap, thought_gap)
    assert thought_gap - done_gap < long_wait + 1.0, (done_gap, thought_gap)
