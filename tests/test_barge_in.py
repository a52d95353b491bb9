"""Barge-in and backchannels in a whole session (LiveKit VAD on espeak-ng speech in the
in-process room, Deepgram and LLM plugins on loopbacks): the agent falls silent as soon as the
user speaks over it; a short "mm hmm" does not lose the reply, which goes on where it stopped.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SAMPLE_RATE, SessionFactory
from tests.loopback.openai_server import Reply
from tests.speech import speak
from tests.vad_audio import trim
from worker.pipeline.barge_in import BargeInOptions

pytestmark = pytest.mark.timeout(90)

LONG_ANSWER = (
    "Paris is the capital of France and its largest city. It sits on the Seine river in the "
    "north of the country. The city is known for its museums, its cafes and its long history."
)


def respond(body: dict[str, Any]) -> Reply:
    if len(body["messages"]) == 2:  # system + the first question
        return Reply(text=LONG_ANSWER, ttft=0.1, tokens_per_second=100)
    return Reply(text="Sure.", ttft=0.1)


async def audible_seconds_of_the_answer(make_session: SessionFactory) -> float:
    """What the room hears of LONG_ANSWER when nobody speaks over it."""
    h = await make_session(respond)
    await h.utter("tell me about Paris")
    await h.wait_for_replies(1, timeout=40)
    recorder = h.room.outbox.audio[0]
    return sum(f.frame.samples_per_channel for f in recorder.frames if f.audible) / (
        recorder.sample_rate
    )


async def test_a_short_mm_hmm_pauses_the_reply_and_it_goes_on(make_session: SessionFactory) -> None:
    undisturbed = await audible_seconds_of_the_answer(make_session)
    h = await make_session(respond)
    barge_in_after = BargeInOptions().interrupt_after
    mm_hmm = trim(speak("mm hmm", SAMPLE_RATE, words_per_minute=350))
    assert mm_hmm.size / SAMPLE_RATE < barge_in_after, "the backchannel must be short"

    await h.utter("tell me about Paris")
    recorder = h.room.outbox.audio[0]
    await recorder.wait_for_audio(2.0, timeout=20)
    pipeline = h.parts.conversation.pipeline
    assert pipeline.barge_in is not None

    h.dg.transcripts.append("Mm hmm.")
    await h.mic.push(mm_hmm, SAMPLE_RATE)
    reply = await h.wait_for_replies(1, timeout=40)

    # the reply was held back, then went on to its end: all of it committed, nothing else said
    assert pipeline.barge_in.backchannels >= 1
    assert reply.name == "agent_speech_committed"
    assert reply.args[0].content == LONG_ANSWER
    assert h.named("agent_speech_interrupted") == []
    assert len(h.named("agent_started_speaking")) == 1
    # the backchannel was transcribed, and asked the LLM nothing: a reply to it would never play
    assert "Mm hmm." in [f.transcript for f in h.dg.finals]
    assert len(h.oai.requests) == 1, "the LLM was asked to answer the backchannel"
    # ... and none of its audio was lost (what was queued at the pause played after it)
    heard = sum(f.frame.samples_per_channel for f in recorder.frames if f.audible)
    assert heard / recorder.sample_rate > 0.97 * undisturbed, (heard, undisturbed)


async def test_barge_in_silences_the_agent_before_interrupting_it(
    make_session: SessionFactory,
) -> None:
    h = await make_session(respond)
    await h.utter("tell me about Paris")
    recorder = h.room.outbox.audio[0]
    await recorder.wait_for_audio(2.0, timeout=20)

    u = await h.utter("wait, stop, please stop talking now")
    interrupted = await h.wait_for_event("agent_speech_interrupted")
    await h.wait_for_replies(2, timeout=30)

    barge_in = h.parts.conversation.pipeline.barge_in
    assert barge_in is not None
    assert barge_in.barge_ins == 1
    assert barge_in.paused_at is not None
    assert barge_in.interrupted_at is not None
    # the agent fell silent once the user had spoken pause_after, before the barge-in was
    # decided (interrupt_after of speech; 0.12's own rule waits for 0.5 s): nothing audible
    # reached the room in between, but frames already on their way at the pause
    assert u.started_at < barge_in.paused_at <= barge_in.interrupted_at
    in_flight = 0.05
    heard_while_held = [
        f
        for f in recorder.frames
        if f.audible and barge_in.paused_at + in_flight < f.received_at < barge_in.interrupted_at
    ]
    assert heard_while_held == [], (
        len(heard_while_held),
        barge_in.interrupted_at - barge_in.paused_at,
    )
    # ... nor at the interruption: the agent is next heard in its reply to the barge-in
    next_reply = h.named("agent_started_speaking")[1].at
    heard_after = [
        round(f.received_at - barge_in.interrupted_at, 3)
        for f in recorder.frames
        if f.audible and barge_in.paused_at + in_flight < f.received_at < next_reply - in_flight
    ]
    assert heard_after == [], heard_after
    assert interrupted.args[0].content.endswith("...")
