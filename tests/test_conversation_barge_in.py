"""Barge-in while the agent speaks (real Silero VAD on espeak-ng speech in the in-process room,
Deepgram plugin and LLM plugin on loopbacks): playout stops, only the played text is committed
(with "..." appended, as 0.12 does), and the user's new question is answered.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply

pytestmark = pytest.mark.timeout(60)  # a hang fails fast (the default is 300 s)

LONG_ANSWER = (
    "Paris is the capital of France and its largest city. It sits on the Seine river in the "
    "north of the country. The city is known for its museums, its cafes and its long history. "
    "Millions of people visit it every year to see the Eiffel Tower and the Louvre."
)
"""About 15 s of the loopback's tone voice (0.06 s per character)."""


async def test_barge_in_stops_playout_and_commits_only_the_played_text(
    make_session: SessionFactory,
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if len(body["messages"]) == 2:  # system + the first question
            return Reply(text=LONG_ANSWER, ttft=0.1, tokens_per_second=100)
        return Reply(text="Sure, I will stop.", ttft=0.1)

    h = await make_session(respond)
    await h.utter("tell me about Paris")
    recorder = h.room.outbox.audio[0]
    await recorder.wait_for_audio(2.0, timeout=20)  # the agent has been speaking for 2 s

    await h.utter("please stop talking now")
    interrupted = await h.wait_for_event("agent_speech_interrupted")
    answered = await h.wait_for_replies(2, timeout=30)

    # only the played words were committed, with "..." appended
    committed = interrupted.args[0].content
    assert committed.endswith("...")
    played = committed.removesuffix("...").split()
    assert len(played) >= 3
    assert played == LONG_ANSWER.split()[: len(played)]
    assert len(played) < len(LONG_ANSWER.split()) // 2

    # playout stopped: far less audio reached the room than the answer's synthesis
    second_start = h.named("agent_started_speaking")[1].at
    heard = sum(
        f.frame.samples_per_channel
        for f in recorder.frames
        if f.audible and f.received_at < second_start
    )
    synthesised = sum(f.audio_seconds for f in h.dg.flushes if f.text.strip() in LONG_ANSWER)
    assert heard / recorder.sample_rate < synthesised / 2

    # the new question was answered, after the interrupted reply in the history
    assert answered.name == "agent_speech_committed"
    assert answered.args[0].content == "Sure, I will stop."
    history = h.oai.requests[-1].body["messages"]
    assert [m["role"] for m in history] == ["system", "user", "assistant", "user"]
    assert history[2]["content"] == committed
    ctx = h.conversation.chat_ctx.messages
    assert [m.role for m in ctx] == ["system", "user", "assistant", "user", "assistant"]
    assert ctx[2].content == committed

    # the turn summaries say which reply was interrupted
    await h.room.outbox.wait_for(
        lambda: (
            len([d for d in h.room.outbox.data_on("agent.metrics") if d.json()["type"] == "turn"])
            >= 2
        )
    )
    turns = [d.json() for d in h.room.outbox.data_on("agent.metrics") if d.json()["type"] == "turn"]
    assert [t["interrupted"] for t in turns] == [True, False]
