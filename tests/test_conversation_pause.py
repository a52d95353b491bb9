"""A pause inside the user's sentence that the VAD takes for the end of the turn (real Silero
VAD on espeak-ng speech, Deepgram and LLM plugins on loopbacks).

The end-of-turn decision comes first, the reply's first sound later (the TTS is slow here).
When the user goes on speaking in between, the confirmed reply is withdrawn before it makes a
sound, and one reply answers the whole sentence once the user is done. Stock 0.12 plays the
confirmed reply over the user (and stops it only after 0.5 s of their speech).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.deepgram_server import SpeakOptions
from tests.loopback.openai_server import Reply

pytestmark = pytest.mark.timeout(60)

FIRST, SECOND = "I would like to book a table", "for two people tomorrow evening"


async def test_a_reply_confirmed_at_a_pause_is_withdrawn_when_the_user_goes_on(
    make_session: SessionFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.pipeline.conversation")

    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text="Sure. A table for two tomorrow evening.", ttft=0.1)

    # No endpointing delay: the turn ends at the VAD's end of speech, inside the sentence.
    h = await make_session(respond, speak=SpeakOptions(ttfb=0.8), env={"END_OF_TURN_DELAY_MS": "0"})
    await h.utter(FIRST)
    # The VAD's silence window ends the turn; the first reply is requested and confirmed.
    await h.wait_for_event("user_stopped_speaking")
    await h.oai.wait_for_requests(1)
    resumed = await h.utter(SECOND)

    await h.wait_for_replies(1, timeout=20)
    recorder = h.room.outbox.audio[0]
    started = h.named("agent_started_speaking")
    assert len(started) == 1
    assert started[0].at > resumed.ended_at  # nothing played over the user
    assert not any(f.audible and f.received_at < resumed.ended_at for f in recorder.frames)
    withdrawn = [r for r in caplog.records if "reply withdrawn" in r.getMessage()]
    assert len(withdrawn) == 1  # the first reply was confirmed, then taken back

    # The reply that played answers both phrases; the history holds the sentence once.
    last = h.oai.requests[-1].body["messages"]
    assert [m["role"] for m in last] == ["system", "user"]
    user_text = (
        last[1]["content"]
        if isinstance(last[1]["content"], str)
        else next(p["text"] for p in last[1]["content"] if p["type"] == "text")
    )
    assert FIRST in user_text
    assert SECOND in user_text
    roles = [m.role for m in h.conversation.chat_ctx.messages]
    assert roles == ["system", "user", "assistant"]


@pytest.mark.parametrize(("delay_ms", "cut_off"), [(None, False), ("0", True)])
async def test_a_mid_sentence_pause_is_not_the_end_of_the_turn(
    make_session: SessionFactory, delay_ms: str | None, cut_off: bool
) -> None:
    """~0.7-0.8 s pause after a final transcript that does not end a sentence: the default end-of-
    turn delay waits for the rest; without it (0.12's rule then comes down to the VAD's 0.55 s
    of silence) the agent answers the half sentence."""

    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text="Sure. A table for two tomorrow evening.", ttft=0.1)

    # the pause is sized to Silero's end of speech (the LiveKit VAD ends speech ~70 ms later on
    # this clip, leaving the delay-0 cut-off a window of ~60 ms)
    env = {"VAD_PROVIDER": "silero"}
    if delay_ms is not None:
        env["END_OF_TURN_DELAY_MS"] = delay_ms
    h = await make_session(respond, env=env)
    await h.utter(FIRST)  # recognised without a period: "I would like to book a table"
    await asyncio.sleep(0.4)  # + the clip's 0.29 s of trailing silence + <= 0.1 s queued
    resumed = await h.utter(SECOND, transcript=SECOND + ".")

    await h.wait_for_replies(1, timeout=20)
    first_sound = h.named("agent_started_speaking")[0].at
    assert (first_sound < resumed.ended_at) is cut_off
    if not cut_off:
        assert len(h.named("agent_started_speaking")) == 1
        user_text = h.oai.requests[-1].body["messages"][1]["content"]
        assert FIRST in str(user_text)
        assert SECOND in str(user_text)
