"""Typed chat with the agent, in LiveKit's chat conventions: a message the participant types is
a user turn answered by voice, and the answer also comes back as a chat message.

Two ways a chat message arrives (both are untrusted input, checked before anything acts):

- ``lk-chat-topic`` data messages (:data:`CHAT_TOPIC`), the legacy format of LiveKit's chat
  components and the agents playground: JSON ``{"id", "timestamp", "message"}`` (plus the
  optional ``deleted``, ``editTimestamp``, ``ignoreLegacy``). They go through the session's
  :class:`~worker.room_io.data_messages.DataMessageRouter`: its sender check, its size, JSON
  and pending limits, and the chat rate (:data:`CHAT_RATE_LIMIT`). A packet marked
  ``ignoreLegacy`` (the client also sent it as a text stream) or ``deleted`` is not a new turn.
- ``lk.chat`` text streams (:data:`CHAT_STREAM_TOPIC`), what newer clients send, where the room
  delivers text streams (``register_text_stream_handler``, livekit rtc 1.1.10). A stream longer
  than :data:`MAX_CHAT_CHARS` is cut off and rejected; the same rate applies.

Only the participant the agent talks with may start a turn. The answer to a typed turn is sent
back in both formats (a text stream where the room can send one), with the text the model wrote:
the voice got a speakable version of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from worker.rate_limit import RateLimit
from worker.room_io.data_messages import DataMessageRouter, Refused, SchemaError

logger = logging.getLogger("worker.room_io.chat")

CHAT_TOPIC: Final = "lk-chat-topic"
CHAT_STREAM_TOPIC: Final = "lk.chat"
MAX_CHAT_CHARS: Final = 1000
CHAT_RATE_LIMIT: Final = 5
CHAT_RATE_WINDOW: Final = 10.0
"""At most CHAT_RATE_LIMIT chat messages (both ways of arriving together) per this many
seconds; more are refused as ``rate_limited``."""
MAX_REPLY_CHARS: Final = 12_000
"""A reply sent back as a legacy chat packet stays under LiveKit's 15 KiB reliable packet."""
_LEGACY_KEYS: Final = {"id", "timestamp", "message", "deleted", "editTimestamp", "ignoreLegacy"}


@dataclass(frozen=True)
class ChatText:
    text: str
    new_turn: bool = True
    """False for a packet that repeats a text stream (``ignoreLegacy``) or deletes a message."""


def parse_chat(value: object) -> ChatText:
    """Validate an ``lk-chat-topic`` JSON value; raises :class:`SchemaError`."""
    if not isinstance(value, dict) or set(value) - _LEGACY_KEYS:
        raise SchemaError("not a chat message")
    text = value.get("message")
    if not isinstance(text, str) or len(text) > MAX_CHAT_CHARS:
        raise SchemaError(f"message must be a string of at most {MAX_CHAT_CHARS} characters")
    for flag in ("deleted", "ignoreLegacy"):
        if flag in value and not isinstance(value[flag], bool):
            raise SchemaError(f"{flag} must be true or false")
    repeat = bool(value.get("ignoreLegacy")) or bool(value.get("deleted"))
    text = text.strip()
    if not text and not repeat:
        raise SchemaError("empty message")
    return ChatText(text, new_turn=not repeat)


class _Sender(Protocol):
    """The members of ``rtc.LocalParticipant`` a reply is sent with."""

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: list[str] | None = None,
        topic: str = "",
    ) -> None: ...


class ChatReplies:
    """Receives typed turns (``on_text`` starts the reply, returning its id) and sends the
    answers of those turns back as chat (:meth:`on_reply_finished`)."""

    def __init__(
        self,
        room: Any,  # rtc.Room (or the in-process room)
        identity: str,
        *,
        on_text: Callable[[str], str | None],
    ) -> None:
        self._room = room
        self._identity = identity
        self._on_text = on_text
        self._awaiting: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._router: DataMessageRouter | None = None
        self._streams = False
        self._rate = RateLimit(CHAT_RATE_LIMIT, CHAT_RATE_WINDOW)

    def attach(self, router: DataMessageRouter) -> None:
        """Route the legacy topic through ``router``, and text streams where the room has them."""
        self._router = router
        router.route(CHAT_TOPIC, parse_chat, self._on_packet, senders=lambda s: s == self._identity)
        register = getattr(self._room, "register_text_stream_handler", None)
        if register is not None:
            register(CHAT_STREAM_TOPIC, self._on_stream)
            self._streams = True

    async def aclose(self) -> None:
        if self._streams:
            self._room.unregister_text_stream_handler(CHAT_STREAM_TOPIC)
            self._streams = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- incoming

    def _on_packet(self, message: ChatText, sender: str | None) -> None:
        if self._rate.acquire() is not None:
            raise Refused("rate_limited")
        if message.new_turn:
            self._turn(message.text)

    def _on_stream(self, reader: Any, sender: str) -> None:
        if sender != self._identity:
            self._record("unauthorized", sender)
            return
        task = asyncio.create_task(self._read_stream(reader, sender), name="chat.read_stream")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read_stream(self, reader: Any, sender: str) -> None:
        parts: list[str] = []
        size = 0
        async for chunk in reader:
            size += len(chunk)
            if size > MAX_CHAT_CHARS:
                self._record("oversized", sender)
                return
            parts.append(chunk)
        text = "".join(parts).strip()
        if not text:
            self._record("schema", sender)
            return
        if self._rate.acquire() is not None:
            self._record("rate_limited", sender)
            return
        self._record("accepted", sender)
        self._turn(text)

    def _record(self, outcome: str, sender: str) -> None:
        if self._router is not None:
            self._router.record(outcome, sender, CHAT_STREAM_TOPIC)

    def _turn(self, text: str) -> None:
        reply_id = self._on_text(text)
        if reply_id is not None:
            self._awaiting.add(reply_id)

    # --- outgoing

    def on_reply_finished(self, reply_id: str | None, text: str) -> None:
        """A reply finished (played or interrupted): if it answers a typed turn, send what was
        played of it as chat."""
        if reply_id is None or reply_id not in self._awaiting:
            return
        self._awaiting.discard(reply_id)
        if not text.strip():
            return
        task = asyncio.create_task(self._send(text[:MAX_REPLY_CHARS]), name="chat.send")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, text: str) -> None:
        participant = self._room.local_participant
        message = {"id": str(uuid.uuid4()), "timestamp": int(time.time() * 1000), "message": text}
        try:
            send_text = getattr(participant, "send_text", None)
            if send_text is not None:
                await send_text(
                    text, topic=CHAT_STREAM_TOPIC, destination_identities=[self._identity]
                )
                message["ignoreLegacy"] = True
            await participant.publish_data(
                json.dumps(message, ensure_ascii=False),
                reliable=True,
                topic=CHAT_TOPIC,
                destination_identities=[self._identity],
            )
        except Exception as e:  # a room going away must not take the session down
            logger.warning("chat reply not sent", extra={"error": repr(e)})
