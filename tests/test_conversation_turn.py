"""A whole spoken turn through the in-process room, with real Silero VAD on espeak-ng speech, the
real Deepgram plugin against the loopback Deepgram server (listen and speak) and the project's LLM
plugin against the loopback OpenAI server: what reaches the room, what reaches the LLM, what the
context keeps, and the metrics and control messages.
"""

from __future__ import annotations

import base64
import io
import json
import wave
from typing import Any

import pytest
from livekit.agents import llm

from tests.conftest import AUDIO_MODEL, SessionFactory, eventually
from tests.loopback.openai_server import Reply
from worker.pipeline.context import ContextLimits
from worker.pipeline.conversation import ConversationOptions
from worker.room_io.data_messages import CONTROL_TOPIC

pytestmark = pytest.mark.timeout(60)  # a hang fails fast (the default is 300 s)

ANSWER = "It is noon in Paris. Anything else?"


def user_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The content parts of the last user message of a chat completions request body."""
    last = [m for m in body["messages"] if m["role"] == "user"][-1]
    content = last["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def dedupe(values: list[str]) -> list[str]:
    """``values`` without consecutive repeats."""
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def wav_info(b64: str) -> tuple[int, int, float]:
    """(sample rate, channels, seconds) of a base64 WAV."""
    with wave.open(io.BytesIO(base64.b64decode(b64))) as w:
        return w.getframerate(), w.getnchannels(), w.getnframes() / w.getframerate()


async def test_a_turn_is_heard_seen_answered_and_measured(make_session: SessionFactory) -> None:
    h = await make_session(
        lambda body: Reply(text=ANSWER, ttft=0.2, tokens_per_second=50),
        env={"AGENT_ALLOW_SAY": "1"},
    )
    u = await h.utter("what time is it in Paris")
    reply = await h.wait_for_replies(1)

    # 1. the answer is spoken on the agent's track, after the user stopped speaking
    assert reply.name == "agent_speech_committed"
    assert reply.args[0].content == ANSWER
    recorder = h.room.outbox.audio[0]
    await recorder.wait_for_audio(1.0, timeout=10)
    assert recorder.first_audible_at is not None
    assert recorder.first_audible_at > u.ended_at
    assert " ".join(f.text for f in h.dg.flushes).split() == ANSWER.split()

    # ... the agent state attribute went listening -> thinking -> speaking -> listening
    await h.room.outbox.wait_for(
        lambda: h.room.outbox.attribute_values("lk.agent.state")[-1] == "listening", timeout=10
    )
    states = dedupe(h.room.outbox.attribute_values("lk.agent.state"))
    if states[0] == "initializing":  # replaced at once by "listening" (it may never show)
        states = states[1:]
    assert states == ["listening", "thinking", "speaking", "listening"]

    # ... and both sides were transcribed (finals carry the whole text)
    user_finals = [t.text for t in h.room.outbox.transcriptions_of("user") if t.final]
    assert user_finals == ["what time is it in Paris"]
    agent = h.room.local_participant.identity
    agent_final = " ".join(t.text for t in h.room.outbox.transcriptions_of(agent) if t.final)
    assert agent_final.split() == ANSWER.split()

    # 2. the LLM got text + the camera image + this utterance's audio
    assert len(h.oai.requests) == 1
    body = h.oai.requests[0].body
    assert body["model"] == AUDIO_MODEL
    parts = user_parts(body)
    assert [p["type"] for p in parts] == ["text", "image_url", "input_audio"]
    assert parts[0]["text"] == "what time is it in Paris"
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert parts[2]["input_audio"]["format"] == "wav"
    rate, channels, seconds = wav_info(parts[2]["input_audio"]["data"])
    assert (rate, channels) == (16000, 1)
    # the utterance (voiced span), plus the VAD's look-back prefix and the STT final's delay;
    # never the silence before it or a previous utterance
    assert u.voiced_seconds - 0.1 <= seconds <= u.seconds + 1.0, (seconds, u)

    # ... and the committed user message keeps text + image + audio
    messages = h.conversation.chat_ctx.messages
    assert [m.role for m in messages] == ["system", "user", "assistant"]
    content = messages[1].content
    assert isinstance(content, list)
    assert content[0] == "what time is it in Paris"
    assert [type(p) for p in content[1:]] == [llm.ChatImage, llm.ChatAudio]

    # 7. metrics reached the room: llm, tts, eou and the turn summary, for this reply
    metrics = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
    await h.room.outbox.wait_for(
        lambda: any(d.json()["type"] == "turn" for d in h.room.outbox.data_on("agent.metrics")),
        timeout=10,
    )
    metrics = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
    by_type: dict[str, list[dict[str, Any]]] = {}
    for m in metrics:
        by_type.setdefault(m["type"], []).append(m)
    turn = by_type["turn"][0]
    assert isinstance(turn["e2e_latency"], float)
    assert turn["e2e_latency"] > 0
    assert turn["interrupted"] is False
    for kind in ("llm", "tts", "eou"):
        assert turn["sequence_id"] in {m["sequence_id"] for m in by_type[kind]}, kind

    # a say command from the participant is spoken (not committed as the agent's words: see
    # tests/test_faults_security.py); the same from a stranger is ignored
    stranger = h.room.add_participant("stranger")
    stranger.send_data(json.dumps({"type": "say", "text": "stranger words"}), topic=CONTROL_TOPIC)
    h.user.send_data(json.dumps({"type": "say", "text": "hello there"}), topic=CONTROL_TOPIC)
    await eventually(lambda: "hello there" in " ".join(f.text for f in h.dg.flushes), timeout=20)
    assert "stranger" not in " ".join(f.text for f in h.dg.flushes)

    # the session totals are sent when the session closes (while the room is connected)
    await h.parts.aclose()
    sessions = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
    sessions = [m for m in sessions if m["type"] == "session"]
    assert len(sessions) == 1
    assert sessions[0]["turns"] >= 1


def count_parts(body: dict[str, Any], kind: str) -> list[int]:
    """Indexes of the request's messages that carry a part of type ``kind``."""
    return [
        i
        for i, m in enumerate(body["messages"])
        if isinstance(m["content"], list) and any(p.get("type") == kind for p in m["content"])
    ]


def text_of(msg: llm.ChatMessage) -> str:
    """The text of a message (its first part when it has several)."""
    content = msg.content
    if isinstance(content, list):
        content = content[0]
    assert isinstance(content, str)
    return content


def media_turns(messages: list[llm.ChatMessage]) -> tuple[list[int], list[int]]:
    """Indexes of the context's messages holding a ChatImage, and those holding a ChatAudio."""

    def holding(kind: type) -> list[int]:
        return [
            i
            for i, m in enumerate(messages)
            if isinstance(m.content, list) and any(isinstance(p, kind) for p in m.content)
        ]

    return holding(llm.ChatImage), holding(llm.ChatAudio)


async def test_context_and_requests_stay_within_limits_across_turns(
    make_session: SessionFactory,
) -> None:
    limits = ContextLimits(max_turns=2, max_image_turns=1, max_audio_turns=1)
    h = await make_session(
        lambda body: Reply(text="Sure.", ttft=0.05),
        options=ConversationOptions(instructions="Be brief.", context=limits),
    )
    questions = [
        "what time is it in Paris",
        "and what about London",
        "is it raining in Tokyo",
        "thank you very much",
    ]
    for n, question in enumerate(questions, start=1):
        u = await h.utter(question)
        await h.wait_for_replies(n)
        await h.wait_for_event("user_speech_committed", n)

        # the context: system + at most 2 turns; media only in the newest turn (text kept)
        messages = h.conversation.chat_ctx.messages
        users = [i for i, m in enumerate(messages) if m.role == "user"]
        assert messages[0].role == "system"
        assert len(users) == min(n, 2)
        assert [m.role for m in messages[1:]] == ["user", "assistant"] * len(users)
        newest = users[-1]
        assert media_turns(messages) == ([newest], [newest])
        assert [text_of(messages[i]) for i in users] == questions[max(0, n - 2) : n]

        # the request held to the same limits: 2 turns, this utterance's image and audio only
        body = h.oai.requests[n - 1].body
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", *(["user", "assistant"] * (min(n, 2) - 1)), "user"]
        last = len(roles) - 1
        assert count_parts(body, "image_url") == [last]
        assert count_parts(body, "input_audio") == [last]
        assert user_parts(body)[0]["text"] == question
        audio = user_parts(body)[-1]["input_audio"]["data"]
        assert u.voiced_seconds - 0.1 <= wav_info(audio)[2] <= u.seconds + 1.0  # this one only
