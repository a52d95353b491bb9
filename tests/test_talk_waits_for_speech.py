"""`talk` waits for the transcript of an input that has sound in it, however long a cold or
busy Whisper takes (the front door's first run on a fresh machine); a silent input still ends
at once with "nothing was said"."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from livekit import rtc

from worker import talk
from worker.local_room import LocalRoom

TOPIC = "agent.metrics"
SETTLE, GRACE = 0.05, 0.05


async def _final_user_transcript(room: LocalRoom) -> None:
    segment = rtc.TranscriptionSegment(
        id="s1", text="What is the capital of France?", start_time=0, end_time=0,
        language="en", final=True,
    )  # fmt: skip
    await room.local_participant.publish_transcription(
        rtc.Transcription(participant_identity=talk.USER_IDENTITY, track_sid="TR_u",
                          segments=[segment])
    )  # fmt: skip


async def _agent_answers(room: LocalRoom) -> None:
    for state in ("thinking", "speaking"):
        await room.local_participant.set_attributes({talk.AGENT_STATE: state})
    await room.local_participant.publish_data(json.dumps({"type": "turn"}), topic=TOPIC)
    await room.local_participant.set_attributes({talk.AGENT_STATE: "listening"})


def _audio(samples: np.ndarray) -> talk.InputAudio:
    return talk.InputAudio(samples=samples, sample_rate=16000, channels=1, codec="pcm_s16le")


def test_sound_is_told_from_silence() -> None:
    quiet = np.zeros(16000, dtype=np.int16)
    tone = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)
    assert not talk.has_sound(_audio(quiet))
    assert talk.has_sound(_audio(np.concatenate([quiet, tone])))


async def test_a_slow_transcript_of_speech_is_waited_for() -> None:
    room = LocalRoom()
    try:
        await room.local_participant.set_attributes({talk.AGENT_STATE: "listening"})
        waiting = asyncio.create_task(
            talk._wait_answered(  # the waiting rule itself, with tiny settle and grace
                room, TOPIC, settle=SETTLE, grace=GRACE, timeout=60, expect_speech=True
            )
        )
        # Idle, and no transcript yet: many settle+grace periods pass and it still waits.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiting), timeout=40 * (SETTLE + GRACE))
        await _final_user_transcript(room)
        assert not waiting.done()
        await _agent_answers(room)
        assert await asyncio.wait_for(waiting, timeout=30) is True
    finally:
        await room.aclose()


async def test_silence_ends_without_waiting_for_a_transcript() -> None:
    room = LocalRoom()
    try:
        await room.local_participant.set_attributes({talk.AGENT_STATE: "listening"})
        answered = await asyncio.wait_for(
            talk._wait_answered(
                room, TOPIC, settle=SETTLE, grace=GRACE, timeout=60, expect_speech=False
            ),
            timeout=30,
        )
        assert answered is True  # done: "(nothing was said)", long before the 60 s timeout
    finally:
        await room.aclose()
