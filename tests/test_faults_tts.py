"""TTS faults: the Deepgram speak socket refused or closed mid-audio, with the real Deepgram
plugin in front of the loopback server.

The 0.7.4 plugin's own retry loses the text of the failed attempt, so ``SegmentingTTS`` retries
per segment instead: segments not spoken yet go to a new connection, a segment cut off midway is
not repeated, and when every attempt failed the rest of the reply is "played" as timed silence
so the pipeline still publishes its transcription and commits it. Each failure is a metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from livekit.agents import tts
from livekit.plugins import deepgram

from tests.conftest import Harness, SessionFactory
from tests.loopback.deepgram_server import DeepgramLoopback
from tests.loopback.openai_server import Reply, scripted
from worker.pipeline.adapter import without_retries as _without_own_retries
from worker.providers.errors import ProviderError
from worker.providers.segmenting_tts import (
    SegmentingTTS,
    SegmentingTTSOptions,
    SegmentRetryOptions,
)

SENTENCES = [
    "Sure, I can help you with that right away.",
    "The weather in Paris is sunny and warm today.",
    "Do you want the forecast for tomorrow as well?",
]
REPLY = " ".join(SENTENCES)
TEXT_ONLY_SECONDS_PER_CHAR = 0.05
API_ERRORS = {"APIStatusError", "APIConnectionError", "APITimeoutError"}
"""What the plugin's failures are called (a refused upgrade, a socket closed mid-audio)."""


@pytest.fixture
async def server() -> AsyncIterator[DeepgramLoopback]:
    async with DeepgramLoopback() as srv:
        yield srv


@pytest.fixture
async def segmenting(server: DeepgramLoopback) -> AsyncIterator[tuple[SegmentingTTS, list[Any]]]:
    async with aiohttp.ClientSession() as http:
        inner = deepgram.TTS(base_url=server.tts_url, http_session=http, api_key="fake-key")
        wrapper = SegmentingTTS(
            inner,
            SegmentingTTSOptions(
                retry=SegmentRetryOptions(
                    retry_delay=0.05, text_only_seconds_per_char=TEXT_ONLY_SECONDS_PER_CHAR
                )
            ),
        )
        errors: list[Any] = []
        wrapper.on("metrics_collected", lambda m: errors.append(m.error) if m.error else None)
        try:
            yield wrapper, errors
        finally:
            await wrapper.aclose()


async def speak_reply(wrapper: SegmentingTTS, text: str) -> list[tts.SynthesizedAudio]:
    stream = wrapper.stream()
    for word in text.split(" "):
        stream.push_text(word + " ")
        await asyncio.sleep(0.01)
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()
    return events


def seconds(events: list[tts.SynthesizedAudio]) -> float:
    return sum(ev.frame.duration for ev in events)


def audible(events: list[tts.SynthesizedAudio]) -> float:
    return sum(
        ev.frame.duration
        for ev in events
        if np.abs(np.frombuffer(ev.frame.data, dtype=np.int16)).max(initial=0) > 0
    )


async def test_the_inner_retry_switch_still_exists() -> None:
    """``_without_own_retries`` reaches a private member of the framework's SynthesizeStream;
    this fails loudly if a framework update renames it."""
    async with aiohttp.ClientSession() as http:
        stream = deepgram.TTS(api_key="fake-key", http_session=http).stream()
        assert stream._conn_options.max_retry > 0
        assert _without_own_retries(stream)._conn_options.max_retry == 0
        await stream.aclose()


async def test_a_refused_connection_is_retried_and_every_segment_spoken_once(
    server: DeepgramLoopback, segmenting: tuple[SegmentingTTS, list[Any]]
) -> None:
    wrapper, errors = segmenting
    server.speak_faults.refuse_connections = 1
    events = await speak_reply(wrapper, REPLY)

    spoken = [f.text.strip() for f in server.flushes if f.flushed_at is not None]
    assert " ".join(spoken).split() == REPLY.split()  # everything, once, in order
    assert seconds(events) == pytest.approx(sum(f.audio_seconds for f in server.flushes))
    assert len(errors) == 1
    assert errors[0].reason in API_ERRORS
    assert all(isinstance(e, ProviderError) and e.recovered for e in errors)
    assert [ev.is_final for ev in events].count(True) == 1
    assert events[-1].is_final


async def test_a_segment_cut_off_midway_is_not_repeated(
    server: DeepgramLoopback, segmenting: tuple[SegmentingTTS, list[Any]]
) -> None:
    wrapper, errors = segmenting
    server.speak_faults.close_mid_audio = 1
    events = await speak_reply(wrapper, REPLY)

    cut = [f for f in server.flushes if f.closed_mid_audio]
    assert len(cut) == 1
    # the cut segment's text was never flushed again; every other segment was spoken once
    completed = [f.text.strip() for f in server.flushes if f.flushed_at is not None]
    assert cut[0].text.strip() not in completed
    assert " ".join([cut[0].text.strip(), *completed]).split() == REPLY.split()
    # the audio received is what the server sent, less at most the cut segment's last chunks
    sent = sum(f.audio_seconds for f in server.flushes)
    assert sent - cut[0].audio_seconds <= seconds(events) <= sent + 1e-6
    assert len(errors) == 1
    assert errors[0].reason in API_ERRORS


async def test_a_tts_that_keeps_failing_turns_the_rest_into_timed_silence(
    server: DeepgramLoopback, segmenting: tuple[SegmentingTTS, list[Any]]
) -> None:
    wrapper, errors = segmenting
    server.speak_faults.refuse_connections = 100
    events = await speak_reply(wrapper, REPLY)

    assert audible(events) == 0
    # the text "played" as silence, 0.05 s per character (as configured in the fixture)
    assert seconds(events) >= len(REPLY.replace(" ", "")) * 0.05 * 0.9
    assert [e.recovered for e in errors] == [True, True, False]
    assert events[-1].is_final


# --- through a whole session --------------------------------------------------------------


def metrics_of(h: Harness, kind: str) -> list[dict[str, Any]]:
    return [
        m for m in (d.json() for d in h.room.outbox.data_on("agent.metrics")) if m["type"] == kind
    ]


async def test_when_the_tts_fails_for_good_the_reply_reaches_the_room_as_a_transcript(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(scripted(Reply(text=REPLY), Reply(text="Back to normal.")))
    h.dg.speak_faults.refuse_connections = 100
    await h.utter("what is the weather in Paris")
    reply = await h.wait_for_replies(1, timeout=30)

    # the whole reply was committed to the context and published as the agent's transcript
    assert reply.name == "agent_speech_committed"
    assert reply.args[0].content.split() == REPLY.split()
    agent = h.room.local_participant.identity
    finals = [t.text for t in h.room.outbox.transcriptions_of(agent) if t.final]
    assert " ".join(finals).split() == REPLY.split()
    assert h.room.outbox.audio[0].audible_seconds == 0  # no audio could be made

    # the failure is in the metrics: every failed attempt, and the turn
    await h.room.outbox.wait_for(lambda: bool(metrics_of(h, "turn")), timeout=10)
    errors = [m["error"] for m in metrics_of(h, "tts") if m["error"]]
    assert len(errors) == 3
    assert set(errors) <= API_ERRORS
    turn = metrics_of(h, "turn")[0]
    assert (turn["outcome"], turn["error"]) == ("answered", "tts")

    # the provider recovers: the next reply is spoken
    h.dg.speak_faults.refuse_connections = 0
    await h.utter("thank you")
    reply = await h.wait_for_replies(2, timeout=30)
    assert reply.args[0].content == "Back to normal."
    await h.room.outbox.audio[0].wait_for_audio(0.3, timeout=10)
    await h.room.outbox.wait_for(lambda: len(metrics_of(h, "turn")) >= 2, timeout=10)
    assert metrics_of(h, "turn")[1]["error"] is None
