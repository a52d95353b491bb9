"""When things happen in a turn, as ordering between observed events (never absolute times):
the LLM is asked on the final transcript, before the VAD's end of speech; the TTS gets the
first sentence while the LLM is still streaming; the end-of-turn delay is 3/4 as long after a
transcript that ends a sentence. Real Silero VAD on espeak-ng speech, the Deepgram plugin and
the LLM plugin on loopbacks, in the in-process room.

The loopbacks and the harness stamp events with ``time.monotonic()`` / ``time.perf_counter()``,
one clock on Linux (CLOCK_MONOTONIC), so their stamps compare directly.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.deepgram_server import ListenOptions
from tests.loopback.openai_server import Reply

pytestmark = pytest.mark.timeout(90)

SAME_CLOCK = (
    time.get_clock_info("monotonic").implementation
    == time.get_clock_info("perf_counter").implementation
)

FIRST_SENTENCE = "It is noon in Paris."
REPLY = FIRST_SENTENCE + " The weather there is sunny and warm today, with a light breeze."


def test_the_loopbacks_share_one_clock() -> None:
    assert SAME_CLOCK


async def test_the_llm_is_asked_at_the_final_transcript_and_tts_starts_before_the_last_token(
    make_session: SessionFactory,
) -> None:
    # 10 tokens/s: the reply streams for about 1.5 s, its first sentence in the first 0.5 s
    h = await make_session(
        lambda body: Reply(text=REPLY, ttft=0.05, tokens_per_second=10),
        listen=ListenOptions(final_delay=0.05),
    )
    await h.utter("what time is it in Paris")
    await h.wait_for_replies(1, timeout=30)

    request = h.oai.requests[0]
    final = h.dg.finals[0]
    vad_end = h.named("user_stopped_speaking")[0].at
    # asked on the final transcript (sent 0.05 s of audio after the voice ended), before the
    # VAD's end of speech (its silence window is longer)
    assert final.sent_at < request.received_at < vad_end

    # the first sentence went to the TTS while the LLM was still sending the rest
    flushes = h.dg.flushes
    assert flushes[0].text.strip() == FIRST_SENTENCE
    assert request.last_delta_at is not None
    assert flushes[0].flush_at < request.last_delta_at
    assert " ".join(f.text for f in flushes).split() == REPLY.split()


async def test_the_end_of_turn_delay_is_three_quarters_after_a_finished_sentence(
    make_session: SessionFactory,
) -> None:
    """END_OF_TURN_DELAY_MS=3000 (an explicit, long delay: the difference it makes, 0.75 s, is
    far above scheduling noise). The reply is prepared from the final transcript meanwhile, so
    it starts playing at the end-of-turn decision."""

    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text="Noon.", ttft=0.05)

    h = await make_session(respond, env={"END_OF_TURN_DELAY_MS": "3000"})
    waits = []
    for n, (said, transcript) in enumerate(
        [
            ("what time is it", "What time is it?"),  # ends a sentence: 3/4 of the delay
            ("and in London", "and in London"),  # does not: the whole delay
        ],
        1,
    ):
        await h.utter(said, transcript=transcript)
        await h.wait_for_replies(n, timeout=30)
        final = h.dg.finals[-1]
        assert final.transcript == transcript
        started = h.named("agent_started_speaking")[n - 1].at
        waits.append(started - final.sent_at)
    sentence, open_ended = waits
    # never before the delay (the final reached the agent after the server sent it)
    assert sentence >= 0.75 * 3.0
    assert open_ended >= 3.0
    # and the finished sentence saved about a quarter of it (0.75 s)
    assert open_ended - sentence > 0.4, waits
