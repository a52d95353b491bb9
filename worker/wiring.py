"""Builds one session from the settings: providers, conversation, metrics, data messages.

The one place where the pieces meet; a room job (``session.run_session``) and the offline
``talk`` command both build their session here, so they run the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from livekit import rtc
from livekit.agents import vad as agents_vad

from .config import Settings
from .conversation import Conversation, ConversationOptions, FinishedReply
from .data_messages import ControlCommand, DataMessageRouter, Interrupt, Say
from .metrics import MetricsOptions, MetricsSink, RoomSink, SessionMetrics
from .providers import Providers, build_providers
from .tool_loading import load_user_tools

logger = logging.getLogger("worker.wiring")


class MetricsObserver:
    """Feeds the conversation's observations to the session metrics (turn summaries)."""

    def __init__(self, metrics: SessionMetrics) -> None:
        self._metrics = metrics

    def on_metrics(self, metrics: object) -> None:
        self._metrics.collect(metrics)  # type: ignore[arg-type]

    def on_user_stopped_speaking(self, at: float) -> None:
        self._metrics.turns.user_stopped_speaking(at)

    def on_first_text(self, sequence_id: str, at: float) -> None:
        self._metrics.turns.first_text(sequence_id, at)

    def on_first_audio(self, at: float) -> None:
        self._metrics.turns.first_audio(None, at)

    def on_reply_finished(self, reply: FinishedReply) -> None:
        turns = self._metrics.turns
        if reply.sequence_id is not None and reply.tool_rounds:
            turns.tool_round(reply.sequence_id, reply.tool_time)
        turns.reply_finished(
            reply.sequence_id,
            reply.interrupted,
            user_text=reply.user_text,
            agent_text=reply.agent_text,
            llm_failed=reply.llm_failed,
            apologised=reply.apologised,
        )


@dataclass
class SessionParts:
    room: rtc.Room
    identity: str
    conversation: Conversation
    providers: Providers
    metrics: SessionMetrics
    data_router: DataMessageRouter
    http_session: aiohttp.ClientSession | None = None
    _closed: bool = False

    async def start(self) -> None:
        self.metrics.start()
        self.room.on("data_received", self.data_router.on_data_received)
        await self.conversation.start()

    async def aclose(self) -> None:
        """Close everything the session opened (idempotent). Call it while the room is still
        connected, so the final ``session`` metrics message can reach it."""
        if self._closed:
            return
        self._closed = True
        self.room.off("data_received", self.data_router.on_data_received)
        await self.conversation.aclose()
        await self.data_router.aclose()
        await self.metrics.aclose()
        await self.providers.aclose()
        if self.http_session is not None:
            await self.http_session.close()


def conversation_options(settings: Settings) -> ConversationOptions:
    return ConversationOptions(
        instructions=settings.instructions,
        greeting=settings.greeting,
        min_endpointing_delay=settings.end_of_turn_delay_ms / 1000,
    )


def build_session(
    room: rtc.Room,
    identity: str,
    settings: Settings,
    *,
    vad: agents_vad.VAD,
    http_session: aiohttp.ClientSession | None = None,
    llm_base_url: str | None = None,
    extra_sinks: Sequence[MetricsSink] = (),
    options: ConversationOptions | None = None,
) -> SessionParts:
    """``http_session`` (owned by the returned parts) is needed outside a job. ``options``
    replaces the conversation options derived from the settings (context limits, tool
    timeouts, images, audio); their instructions and greeting are then used as given."""
    providers = build_providers(
        settings, vad=vad, http_session=http_session, llm_base_url=llm_base_url
    )
    router = DataMessageRouter()
    metrics = SessionMetrics(
        [
            RoomSink(room.local_participant, destination_identities=settings.metrics_destinations),
            *extra_sinks,
        ],
        MetricsOptions(topic=settings.metrics_topic),
        data_message_stats=router.stats,
    )
    conversation = Conversation(
        room,
        identity,
        vad=vad,
        stt=providers.stt,
        llm_=providers.llm,
        tts=providers.tts,
        user_tools=load_user_tools(settings.tools) if settings.tools else None,
        options=options if options is not None else conversation_options(settings),
        observer=MetricsObserver(metrics),
    )

    async def on_control(command: ControlCommand, sender: str | None) -> None:
        if sender != identity:  # only the participant we talk with may steer the agent
            return
        if isinstance(command, Interrupt):
            conversation.interrupt()
        elif isinstance(command, Say):
            await conversation.say(command.text)

    router.on_control(on_control)
    return SessionParts(
        room=room,
        identity=identity,
        conversation=conversation,
        providers=providers,
        metrics=metrics,
        data_router=router,
        http_session=http_session,
    )
