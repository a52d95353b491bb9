"""Typed chat (LiveKit's ``lk-chat-topic`` messages): a typed message is a user turn answered by
voice, enters the context like a spoken turn, and its answer comes back as chat; other
participants, repeats and floods do not start turns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import SessionFactory, eventually
from tests.loopback.openai_server import Reply
from worker.local_room import LocalRoom, as_rtc_room
from worker.room_io.chat import (
    CHAT_RATE_LIMIT,
    CHAT_STREAM_TOPIC,
    CHAT_TOPIC,
    MAX_CHAT_CHARS,
    ChatReplies,
)
from worker.room_io.data_messages import DataMessageRouter

pytestmark = pytest.mark.timeout(60)


def chat_packet(text: str, **extra: Any) -> str:
    return json.dumps({"id": "m1", "timestamp": 1700000000000, "message": text, **extra})


def last_user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p.get("type") == "text")


async def test_a_typed_message_is_answered_by_voice_and_as_chat(
    make_session: SessionFactory,
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if "France" in last_user_text(body):
            return Reply(text="The capital of **France** is Paris.", ttft=0.1)
        return Reply(text="You are welcome.", ttft=0.1)

    h = await make_session(respond)
    await h.parts.conversation.pipeline.ready()
    h.user.send_data(chat_packet("What is the capital of France?"), topic=CHAT_TOPIC)
    first = await h.wait_for_replies(1, timeout=30)

    # answered by voice (speakable), from a request whose user turn is the typed text
    assert last_user_text(h.oai.requests[0].body) == "What is the capital of France?"
    assert " ".join(f.text for f in h.dg.flushes).split() == [
        "The",
        "capital",
        "of",
        "France",
        "is",
        "Paris.",
    ]
    assert first.name == "agent_speech_committed"

    # the answer also came back as chat, to the user, with the model's text
    await h.room.outbox.wait_for(lambda: bool(h.room.outbox.data_on(CHAT_TOPIC)), timeout=10)
    (sent,) = h.room.outbox.data_on(CHAT_TOPIC)
    assert sent.json()["message"] == "The capital of **France** is Paris."
    assert sent.destination_identities == ("user",)

    # the typed turn is in the context like a spoken one; a spoken turn follows it
    await h.utter("thank you")
    await h.wait_for_replies(2, timeout=30)
    roles = [(m.role, m.content) for m in h.conversation.chat_ctx.messages]
    assert roles[1] == ("user", "What is the capital of France?")
    assert roles[2][0] == "assistant"
    assert roles[3][0] == "user"
    assert "France" in json.dumps(h.oai.requests[-1].body["messages"])
    # the spoken turn's answer is not sent as chat
    assert len(h.room.outbox.data_on(CHAT_TOPIC)) == 1


async def test_only_new_messages_of_the_linked_participant_within_limits_start_turns() -> None:
    room = LocalRoom()
    user = room.add_participant("user")
    other = room.add_participant("other")
    turns: list[str] = []

    def on_text(text: str) -> None:
        turns.append(text)

    chat = ChatReplies(as_rtc_room(room), "user", on_text=on_text)
    router = DataMessageRouter()
    chat.attach(router)
    room.on("data_received", router.on_data_received)

    other.send_data(chat_packet("from someone else"), topic=CHAT_TOPIC)
    user.send_data(chat_packet("a repeat", ignoreLegacy=True), topic=CHAT_TOPIC)
    user.send_data(chat_packet("x" * (MAX_CHAT_CHARS + 1)), topic=CHAT_TOPIC)
    user.send_data(chat_packet("   "), topic=CHAT_TOPIC)
    user.send_data(json.dumps({"message": "hi", "extra": 1}), topic=CHAT_TOPIC)
    assert turns == []
    for i in range(CHAT_RATE_LIMIT + 3):
        user.send_data(chat_packet(f"message {i}"), topic=CHAT_TOPIC)
    # the repeat counted towards the user's rate (a packet like any other)
    assert turns == [f"message {i}" for i in range(CHAT_RATE_LIMIT - 1)]
    stats = router.stats()
    assert stats["unauthorized"] == 1  # the other participant
    assert stats["rate_limited"] == 4
    assert stats["schema"] == 3  # too long, empty, unknown key
    user.send_data("x" * 3000, topic=CHAT_TOPIC)
    assert router.stats()["oversized"] == 1
    await chat.aclose()
    await router.aclose()
    await room.aclose()


async def test_lk_chat_text_streams_start_turns_and_answers_go_back_both_ways() -> None:
    room = LocalRoom()
    user = room.add_participant("user")
    other = room.add_participant("other")
    turns: list[str] = []

    def on_text(text: str) -> str:
        turns.append(text)
        return f"reply-{len(turns)}"

    chat = ChatReplies(as_rtc_room(room), "user", on_text=on_text)
    router = DataMessageRouter()
    chat.attach(router)

    long_question = "What is the capital of France? " * 3
    assert user.send_text_stream(long_question, topic=CHAT_STREAM_TOPIC, chunk_chars=7)
    assert other.send_text_stream("not the linked participant", topic=CHAT_STREAM_TOPIC)
    assert user.send_text_stream("y" * (MAX_CHAT_CHARS + 1), topic=CHAT_STREAM_TOPIC)
    await room.outbox.wait_for(lambda: router.stats()["oversized"] == 1, timeout=5)
    assert router.stats()["unauthorized"] == 1
    await eventually(lambda: len(turns) == 1)
    assert turns == [long_question.strip()]  # reassembled from its chunks

    chat.on_reply_finished("some-spoken-reply", "not an answer to a typed turn")
    chat.on_reply_finished("reply-1", "The capital of **France** is Paris.")
    await room.outbox.wait_for(lambda: bool(room.outbox.data_on(CHAT_TOPIC)), timeout=5)
    (text,) = room.outbox.texts
    assert (text.text, text.topic) == ("The capital of **France** is Paris.", CHAT_STREAM_TOPIC)
    assert text.destination_identities == ("user",)
    (legacy,) = room.outbox.data_on(CHAT_TOPIC)
    sent = legacy.json()
    assert sent["message"] == text.text
    assert sent["ignoreLegacy"] is True  # stream-aware clients show the stream copy only

    await chat.aclose()
    assert not user.send_text_stream("after the end", topic=CHAT_STREAM_TOPIC)
    await router.aclose()
    await room.aclose()
