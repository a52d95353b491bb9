"""Data messages the agent receives: untrusted input, checked before anything acts on it.

Attach :meth:`DataMessageRouter.on_data_received` to ``room.on("data_received", ...)``.
Packets on topics nobody registered are ignored (counted as ``ignored``). For a registered
topic the sender is authorised first (a stranger's packet is refused as ``unauthorized``
before it is read, counted as accepted, or given one of the pending slots); then the packet
must be at most ``max_bytes``, valid UTF-8, JSON nested at most ``max_depth`` deep, and
accepted by the topic's parser; only then does the handler run, and it may still refuse
(:class:`Refused`, with a reason). Each kind of rejection is logged once (later ones at debug
level) and counted; :meth:`stats` goes into the ``session`` metrics payload.

The built-in topic ``agent.control`` (:data:`CONTROL_TOPIC`) carries one of:

- ``{"type": "interrupt"}``: stop the agent's current speech.
- ``{"type": "say", "text": "..."}``: the agent speaks ``text`` (1-500 characters), only when
  the operator allowed it (``AGENT_ALLOW_SAY=1``) and at most ``say_per_minute`` times a minute
  (:func:`control_handler`). The words are spoken, never put into the conversation as the
  assistant's own: otherwise a participant could write the agent's history ("I have verified
  your identity") and the model would build on it.

An optional ``"v": 1`` is allowed; any other key, value or type is rejected.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

from worker.rate_limit import RateLimit

logger = logging.getLogger("worker.room_io.data_messages")

CONTROL_TOPIC: Final = "agent.control"
MAX_SAY_CHARS: Final = 500

REJECTIONS: Final = (
    "unauthorized",
    "oversized",
    "invalid_utf8",
    "invalid_json",
    "too_deep",
    "schema",
    "busy",
    "say_disabled",
    "rate_limited",
    "handler_error",
)


class SchemaError(ValueError):
    """The JSON value does not match the topic's schema."""


class Refused(Exception):
    """Raised by a handler, before it returns, that will not act on a valid message (it is then
    not counted as accepted); ``reason`` is one of :data:`REJECTIONS`, what the metrics count."""

    def __init__(self, reason: str) -> None:
        if reason not in REJECTIONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(reason)
        self.reason = reason


T = TypeVar("T")
Handler = Callable[[T, str | None], Awaitable[None] | None]
"""Called with the parsed message and the sender's identity (None: sent by the server)."""


class PacketLike(Protocol):
    """The members of ``rtc.DataPacket`` the router reads."""

    @property
    def data(self) -> bytes: ...

    @property
    def topic(self) -> str | None: ...

    @property
    def participant(self) -> Any: ...  # rtc.RemoteParticipant | None


# --- the control topic ----------------------------------------------------------------------


@dataclass(frozen=True)
class Interrupt:
    pass


@dataclass(frozen=True)
class Say:
    text: str


ControlCommand = Interrupt | Say


def parse_control(value: object) -> ControlCommand:
    """Validate an ``agent.control`` JSON value; raises :class:`SchemaError`."""
    if not isinstance(value, dict):
        raise SchemaError("not an object")
    if value.get("v", 1) != 1 or isinstance(value.get("v"), bool):
        raise SchemaError("unsupported version")
    kind = value.get("type")
    if kind == "interrupt":
        if set(value) - {"v", "type"}:
            raise SchemaError("unexpected keys")
        return Interrupt()
    if kind == "say":
        if set(value) - {"v", "type", "text"}:
            raise SchemaError("unexpected keys")
        text = value.get("text")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_SAY_CHARS:
            raise SchemaError("text must be a non-empty string of at most 500 characters")
        return Say(text.strip())
    raise SchemaError("unknown type")


@dataclass(frozen=True)
class ControlOptions:
    allow_say: bool = False
    """``say`` is refused (``say_disabled``) unless the operator turned it on."""
    say_per_minute: int = 5
    """More ``say`` messages in a minute are refused (``rate_limited``)."""


def control_handler(
    *,
    interrupt: Callable[[], None],
    say: Callable[[str], Awaitable[None] | None],
    options: ControlOptions,
) -> Handler[ControlCommand]:
    """The ``agent.control`` policy: ``interrupt`` always, ``say`` only when allowed and within
    its rate. ``say`` must speak the words without committing them to the conversation."""
    limit = RateLimit(options.say_per_minute, 60.0)

    def handle(command: ControlCommand, sender: str | None) -> Awaitable[None] | None:
        if isinstance(command, Interrupt):
            interrupt()
            return None
        if not options.allow_say:
            raise Refused("say_disabled")
        if limit.acquire() is not None:
            raise Refused("rate_limited")
        return say(command.text)

    return handle


# --- the router -----------------------------------------------------------------------------

Senders = Callable[[str | None], bool]
"""Whether a sender identity (None: the server) may use a topic."""


@dataclass(frozen=True)
class _Route(Generic[T]):
    parse: Callable[[object], T]
    handler: Handler[T]
    senders: Senders | None


def _depth_exceeds(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


class DataMessageRouter:
    """Validates and dispatches received data messages by topic.

    Handlers must be quick; an async handler runs as a task owned by the router, at most
    ``max_pending`` at a time (more are rejected as ``busy``); :meth:`aclose` cancels them.
    """

    def __init__(self, *, max_bytes: int = 2048, max_depth: int = 8, max_pending: int = 4) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._max_pending = max_pending
        self._routes: dict[str, _Route[Any]] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        self._counts = dict.fromkeys(("accepted", "ignored", *REJECTIONS), 0)
        self._logged: set[str] = set()
        self._closed = False

    def route(
        self,
        topic: str,
        parse: Callable[[object], T],
        handler: Handler[T],
        *,
        senders: Senders | None = None,
    ) -> None:
        """Handle ``topic`` with ``parse`` (raises :class:`SchemaError`) and ``handler``, for
        the senders ``senders`` accepts (None: anyone)."""
        self._routes[topic] = _Route(parse, handler, senders)

    def on_control(
        self, handler: Handler[ControlCommand], *, senders: Senders | None = None
    ) -> None:
        """Handle the built-in ``agent.control`` topic."""
        self.route(CONTROL_TOPIC, parse_control, handler, senders=senders)

    def record(self, outcome: str, sender: str | None, topic: str) -> None:
        """Count a message that arrived another way than a data packet (a text stream, read by
        its own reader): ``accepted``, or one of :data:`REJECTIONS` (logged once per kind)."""
        if outcome == "accepted":
            self._counts["accepted"] += 1
        else:
            self._reject(outcome, sender, topic)

    def stats(self) -> dict[str, int]:
        """Counts: ``accepted``, ``ignored`` (unknown topic) and one per rejection kind."""
        return dict(self._counts)

    def on_data_received(self, packet: PacketLike) -> None:
        """``room.on("data_received")`` callback: returns quickly and never raises."""
        try:
            self._dispatch(packet)
        except Exception:  # a bug here must not take the room's event dispatch down
            self._reject("handler_error", None, "")
            logger.debug("data message dispatch failed", exc_info=True)

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _dispatch(self, packet: PacketLike) -> None:
        topic = packet.topic or ""
        route = self._routes.get(topic)
        if route is None or self._closed:
            self._counts["ignored"] += 1
            return
        sender = getattr(packet.participant, "identity", None)
        sender = sender if isinstance(sender, str) else None
        if route.senders is not None and not route.senders(sender):
            self._reject("unauthorized", sender, topic)
            return
        data = packet.data
        if not isinstance(data, bytes | bytearray) or len(data) > self._max_bytes:
            self._reject("oversized", sender, topic)
            return
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            self._reject("invalid_utf8", sender, topic)
            return
        try:
            value = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            self._reject("invalid_json", sender, topic)
            return
        if _depth_exceeds(value, self._max_depth):
            self._reject("too_deep", sender, topic)
            return
        try:
            message = route.parse(value)
        except SchemaError:
            self._reject("schema", sender, topic)
            return
        if len(self._tasks) >= self._max_pending:
            self._reject("busy", sender, topic)
            return
        try:
            result = route.handler(message, sender)
        except Refused as refused:
            self._reject(refused.reason, sender, topic)
            return
        except Exception:
            self._reject("handler_error", sender, topic)
            logger.debug("data message handler failed", exc_info=True)
            return
        self._counts["accepted"] += 1
        if result is not None:
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._reject("handler_error", None, "")
            logger.debug("async data message handler failed", exc_info=task.exception())

    def _reject(self, kind: str, sender: str | None, topic: str) -> None:
        self._counts[kind] += 1
        if kind in self._logged:
            logger.debug("data message rejected", extra={"reason": kind, "topic": topic})
            return
        self._logged.add(kind)
        logger.warning(
            "data message rejected (further ones of this kind are only counted)",
            extra={"reason": kind, "topic": topic, "sender": sender},
        )
