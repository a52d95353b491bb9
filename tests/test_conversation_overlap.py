"""The user speaks again before the agent's reply to their first question made a sound (real
Silero VAD on espeak-ng speech in the in-process room, Deepgram and LLM plugins on loopbacks).

One new request answers the merged user turn: the withdrawn reply is not asked again with the
stale question, is never synthesised, and every reply that played reports its end-to-end
latency; the withdrawn one says it was withdrawn.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Harness, SessionFactory
from tests.loopback.deepgram_server import ListenOptions
from tests.loopback.openai_server import Reply

pytestmark = pytest.mark.timeout(90)

FIRST = "What time is it in Tokyo right now?"
SECOND = "Thanks. And how do you say hello in Spanish?"
STALE = "It is nine in the evening in Tokyo."
MERGED = "Hello is hola in Spanish."


def last_user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p.get("type") == "text")


def respond(first_ttft: float) -> Any:
    """The first question alone gets the stale answer (after ``first_ttft``); anything longer,
    the merged turn, a fast one."""

    def answer(body: dict[str, Any]) -> Reply:
        if last_user_text(body).strip() == FIRST:
            return Reply(text=STALE, ttft=first_ttft, tokens_per_second=50)
        return Reply(text=MERGED, ttft=0.2, tokens_per_second=50)

    return answer


async def turns(h: Harness, count: int) -> list[dict[str, Any]]:
    def sent() -> list[dict[str, Any]]:
        payloads = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
        return [p for p in payloads if p["type"] == "turn"]

    await h.room.outbox.wait_for(lambda: len(sent()) >= count, timeout=20)
    return sent()


async def check_one_request_for_the_merged_turn(h: Harness) -> None:
    await h.wait_for_replies(1, timeout=30)
    await h.room.outbox.wait_for(
        lambda: h.room.outbox.attribute_values("lk.agent.state")[-1] == "listening", timeout=10
    )
    asked = [last_user_text(r.body) for r in h.oai.requests]
    # two requests for two questions: the first (withdrawn), then the merged turn
    assert len(asked) == 2, asked
    assert asked[0] == FIRST
    assert FIRST in asked[1]
    assert SECOND in asked[1]
    # the withdrawn reply never reached the TTS; the merged one played once
    spoken = " ".join(f.text for f in h.dg.flushes)
    assert "Tokyo" not in spoken
    assert spoken.split() == MERGED.split()
    assert len(h.named("agent_started_speaking")) == 1

    # the turn payloads say what happened: withdrawn (silent), then answered with its e2e
    first, second = await turns(h, 2)
    assert first["outcome"] == "withdrawn"
    assert first["e2e_latency"] is None
    assert second["outcome"] == "answered"
    assert isinstance(second["e2e_latency"], float)
    assert second["e2e_latency"] > 0
    assert second["sequence_id"] != first["sequence_id"]


async def test_speaking_again_while_the_agent_thinks_asks_once_for_the_merged_turn(
    make_session: SessionFactory,
) -> None:
    """Second question 1.5 s after the first, the LLM's first token 2 s after the request."""
    h = await make_session(respond(first_ttft=2.0), listen=ListenOptions(min_gap=0.4))
    await h.utter(FIRST)
    await h.wait_for_event("user_stopped_speaking")
    await h.wait_for_requests(1)
    await asyncio.sleep(max(0.0, 1.5 - 0.6))  # ~0.6 s of silence already passed (VAD window)
    await h.utter(SECOND)
    await check_one_request_for_the_merged_turn(h)


@pytest.mark.parametrize("run", range(3))
async def test_a_late_transcript_after_speaking_again_is_not_answered_with_the_stale_one(
    make_session: SessionFactory, run: int
) -> None:
    """The STT's final comes after the VAD's end of speech (as with Whisper): the end of the
    second question must not confirm the first one's reply before the second's transcript is
    in. Several runs, with the second question at slightly different moments."""
    h = await make_session(
        respond(first_ttft=6.0), listen=ListenOptions(final_delay=0.9, min_gap=0.4)
    )
    await h.utter(FIRST)
    await h.wait_for_requests(1)
    await asyncio.sleep(1.5 + 0.5 * run)
    await h.utter(SECOND)
    await check_one_request_for_the_merged_turn(h)


async def test_a_sound_without_words_after_a_withdrawal_still_gets_the_answer(
    make_session: SessionFactory,
) -> None:
    """The user's new sound gives no transcript (a cough): the first question is asked again
    at the end-of-turn decision, and answered."""
    h = await make_session(respond(first_ttft=2.5), listen=ListenOptions(min_gap=0.4))
    await h.utter(FIRST)
    await h.room.outbox.wait_for(  # the first reply is confirmed (still silent)
        lambda: any(d.json()["type"] == "eou" for d in h.room.outbox.data_on("agent.metrics")),
        timeout=10,
    )
    await h.utter("well now", transcript="")  # heard by the VAD, no words from the STT
    await h.wait_for_replies(1, timeout=30)
    asked = [last_user_text(r.body) for r in h.oai.requests]
    assert asked == [FIRST, FIRST]
    assert " ".join(f.text for f in h.dg.flushes).split() == STALE.split()
    first, second = await turns(h, 2)
    assert [first["outcome"], second["outcome"]] == ["withdrawn", "answered"]
    assert isinstance(second["e2e_latency"], float)
    assert second["e2e_latency"] > 0


LONG = (
    "and then I also wanted to tell you about my trip to the mountains last summer where we "
    "walked for many hours every day and saw lakes and forests and a lot of birds"
)


async def test_a_transcript_inside_an_utterance_does_not_answer_it_at_its_end(
    make_session: SessionFactory,
) -> None:
    """The STT ends a segment at a short pause the VAD keeps inside the utterance, and its final
    comes after the VAD's end of speech (as Whisper's does): the reply requested on the first
    words is not confirmed when the utterance ends; one reply answers all of it, with its
    e2e. (0.12 plays the stale reply, cut off by the late transcript's reply, whose e2e was
    then lost.)"""
    h = await make_session(
        respond(first_ttft=0.2), listen=ListenOptions(final_delay=0.9, min_gap=0.3)
    )
    await h.utter(FIRST)
    await asyncio.sleep(0.4)  # + the clip's trailing silence: a pause shorter than the VAD's
    await h.utter(LONG)
    await h.wait_for_replies(1, timeout=30)
    asked = [last_user_text(r.body) for r in h.oai.requests]
    assert asked[-1] == f"{FIRST} {LONG}"
    assert len(h.named("agent_started_speaking")) == 1
    (turn,) = await turns(h, 1)
    assert turn["outcome"] == "answered"
    assert isinstance(turn["e2e_latency"], float)
    assert turn["e2e_latency"] > 0
    assert turn["sequence_id"] in {
        d.json().get("sequence_id")
        for d in h.room.outbox.data_on("agent.metrics")
        if d.json()["type"] == "eou"
    }
