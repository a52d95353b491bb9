"""The barge-in policy against 0.12's own playout: ``AgentPlayout`` plays a reply through
:class:`PausableAudioSource` into a real ``rtc.AudioSource`` (every frame it is given recorded),
its transcript forwarded into the in-process room, while :class:`BargeIn` is fed the VAD's
events of a user speaking over it. This pins what reaches the audio source, frame by frame,
where a whole session (tests/test_barge_in.py) sees it only when the timing falls that way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import vad
from livekit.agents.pipeline.agent_playout import AgentPlayout, PlayoutHandle
from livekit.agents.transcription import TTSSegmentsForwarder

from worker.local_room import LocalRoom
from worker.pipeline.barge_in import BargeIn, BargeInOptions, PausableAudioSource

pytestmark = pytest.mark.timeout(30)

RATE = 24000
FRAME = RATE // 100  # 10 ms


class RecordingSource:
    """A real ``rtc.AudioSource``; ``captured`` holds when each frame was given to it."""

    def __init__(self) -> None:
        self.inner = rtc.AudioSource(RATE, 1)
        self.captured: list[float] = []
        self._wanted = 0
        self._reached = asyncio.Event()

    async def wait_for_frames(self, count: int) -> None:
        """Until ``count`` frames have been given."""
        self._wanted = count
        if len(self.captured) < count:
            self._reached.clear()
            await asyncio.wait_for(self._reached.wait(), 5)

    @property
    def sample_rate(self) -> int:
        return self.inner.sample_rate

    @property
    def num_channels(self) -> int:
        return self.inner.num_channels

    @property
    def queued_duration(self) -> float:
        return self.inner.queued_duration

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        self.captured.append(time.perf_counter())
        if len(self.captured) >= self._wanted:
            self._reached.set()
        await self.inner.capture_frame(frame)

    def clear_queue(self) -> None:
        self.inner.clear_queue()

    async def wait_for_playout(self) -> None:
        await self.inner.wait_for_playout()


async def tone(seconds: float) -> AsyncIterator[rtc.AudioFrame]:
    """A reply's audio as a TTS stream hands it over: 10 ms frames, faster than real time."""
    t = np.arange(FRAME) / RATE
    samples = (8000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16).tobytes()
    for _ in range(round(seconds * 100)):
        yield rtc.AudioFrame(samples, RATE, 1, FRAME)


def speaking(seconds: float) -> vad.VADEvent:
    return vad.VADEvent(
        type=vad.VADEventType.INFERENCE_DONE,
        samples_index=0,
        timestamp=0.0,
        speech_duration=seconds,
        silence_duration=0.0,
        speaking=True,
    )


END_OF_SPEECH = vad.VADEvent(
    type=vad.VADEventType.END_OF_SPEECH,
    samples_index=0,
    timestamp=0.0,
    speech_duration=0.3,
    silence_duration=0.0,
)


class Stage:
    """0.12's playout through the wrapper into the recorded source, and a room for the
    transcript it forwards."""

    def __init__(self) -> None:
        self.recording = RecordingSource()
        self.source = PausableAudioSource(self.recording)  # type: ignore[arg-type]
        self.playout = AgentPlayout(audio_source=self.source)  # type: ignore[arg-type]
        self.room = LocalRoom()

    def play(self, seconds: float) -> PlayoutHandle:
        forwarder = TTSSegmentsForwarder(
            room=self.room,  # type: ignore[arg-type]
            participant=self.room.local_participant,  # type: ignore[arg-type]
            track="TR_agent_voice",
        )
        forwarder.push_text("a long answer")
        forwarder.mark_text_segment_end()
        return self.playout.play("reply", tone(seconds), forwarder)

    async def playing_reply(self, seconds: float) -> tuple[PlayoutHandle, BargeIn]:
        """A reply of ``seconds`` playing for a while, with the policy watching it."""
        reply = self.play(seconds)
        barge_in = BargeIn(
            self.source,
            agent_speaking=lambda: not reply.interrupted,
            interrupt=reply.interrupt,
            options=BargeInOptions(),
        )
        await self.recording.wait_for_frames(30)
        return reply, barge_in


@pytest.fixture
async def stage() -> AsyncIterator[Stage]:
    stage = Stage()
    yield stage
    await stage.playout.aclose()


async def test_a_barge_in_lets_no_frame_of_the_interrupted_reply_through(stage: Stage) -> None:
    recording, source = stage.recording, stage.source
    reply, barge_in = await stage.playing_reply(10.0)
    options = barge_in.options

    barge_in.on_vad_event(speaking(options.pause_after))
    assert source.paused
    given = len(recording.captured)
    await asyncio.sleep(0.05)
    assert len(recording.captured) == given  # held back: the playout waits

    barge_in.on_vad_event(speaking(options.interrupt_after))
    await asyncio.wait_for(reply.join(), 5)  # 0.12 ends the interrupted playout
    await asyncio.sleep(0.05)
    assert barge_in.barge_ins == 1
    assert reply.interrupted
    late = [round(t - (barge_in.interrupted_at or 0), 4) for t in recording.captured[given:]]
    assert late == [], "frames of the interrupted reply reached the audio source"

    # the user goes on, then stops: no backchannel, and the next reply plays
    barge_in.on_vad_event(speaking(options.interrupt_after + 0.1))
    barge_in.on_vad_event(END_OF_SPEECH)
    assert barge_in.backchannels == 0
    assert not source.paused
    await asyncio.wait_for(stage.play(0.2).join(), 5)
    assert len(recording.captured) == given + 20


async def test_a_short_sound_holds_the_reply_and_it_goes_on_with_nothing_lost(
    stage: Stage,
) -> None:
    recording, source = stage.recording, stage.source
    reply, barge_in = await stage.playing_reply(1.5)
    options = barge_in.options

    barge_in.on_vad_event(speaking(options.pause_after))
    taken_back = round(source.queued_duration * 100)  # queued, not played: held to play later
    assert taken_back > 0
    given = len(recording.captured)
    await asyncio.sleep(0.05)
    assert len(recording.captured) == given
    barge_in.on_vad_event(END_OF_SPEECH)  # the user stopped before interrupt_after
    await asyncio.wait_for(reply.join(), 10)

    assert barge_in.backchannels == 1
    assert not reply.interrupted
    # every frame of the reply was given to the source, the ones taken back at the pause twice
    assert len(recording.captured) == 150 + taken_back
