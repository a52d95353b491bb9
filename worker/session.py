"""Builds one session from the settings: every provider and wrapper, the tools, the conversation,
metrics and data messages. The one place where the pieces meet.

A room job (``worker.job.run_session``) and the offline ``talk`` both build their session here,
so they run the same code.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from livekit import rtc
from livekit.agents import llm, stt, tts
from livekit.agents import vad as agents_vad

from worker.config import Settings, default_instructions
from worker.metrics import MULTIPROC_ENV
from worker.metrics.collector import MetricsOptions, MetricsSink, RoomSink, SessionMetrics
from worker.pipeline.adapter import VADSegmentedSTT, VoicePipeline
from worker.pipeline.barge_in import BargeInOptions
from worker.pipeline.conversation import (
    CallEnding,
    Conversation,
    ConversationOptions,
    FinishedReply,
)
from worker.pipeline.turn_detector import AudioTurnDetector
from worker.providers.fallback_llm import FallbackLLM
from worker.providers.reconnecting_stt import ReconnectingSTT
from worker.providers.segmenting_tts import (
    SegmenterOptions,
    SegmentingTTS,
    SegmentingTTSOptions,
)
from worker.providers.selection import (
    LOCAL_INSTRUCTIONS,
    build_fallback_llm,
    build_llm,
    build_stt,
    build_tts,
    tts_segments_itself,
)
from worker.room_io.chat import ChatReplies
from worker.room_io.data_messages import ControlOptions, DataMessageRouter, control_handler
from worker.room_io.utterance_audio import TappedVAD, UtteranceAudio
from worker.room_io.video import VideoCapture
from worker.tools.builtin import BuiltinTools
from worker.tools.loading import load_user_tools, merge_tools
from worker.tools.mcp import McpTools
from worker.tools.mcp_servers import parse_mcp_servers
from worker.tools.runner import ToolRunningLLM, ToolRunningLLMOptions

if TYPE_CHECKING:
    from worker.metrics.traces import TraceSink

logger = logging.getLogger("worker.session")


class MetricsObserver:
    """Feeds the conversation's observations to the session metrics (turn summaries); with
    traces on, what the payloads do not carry to the trace sink (tool calls, text); finished
    replies to the chat (answers to typed turns go back as chat)."""

    def __init__(
        self,
        metrics: SessionMetrics,
        traces: TraceSink | None = None,
        chat: ChatReplies | None = None,
    ) -> None:
        self._metrics = metrics
        self._traces = traces
        self._chat = chat

    def on_metrics(self, metrics: object) -> None:
        self._metrics.collect(metrics)  # type: ignore[arg-type]

    def on_user_stopped_speaking(self, at: float) -> None:
        self._metrics.turns.user_stopped_speaking(at)

    def on_first_text(self, sequence_id: str, at: float) -> None:
        self._metrics.turns.first_text(sequence_id, at)

    def on_first_audio(self, sequence_id: str | None, at: float) -> None:
        self._metrics.turns.first_audio(sequence_id, at)

    def on_reply_finished(self, reply: FinishedReply) -> None:
        if self._traces is not None:  # before the turn payload, which closes the turn's span
            self._traces.tool_calls(reply.sequence_id, reply.tool_calls)
            self._traces.reply_text(reply.sequence_id, reply.user_text, reply.agent_text)
        if self._chat is not None:
            self._chat.on_reply_finished(reply.sequence_id, reply.agent_text)
        if self._chat is not None:
            self._chat.on_reply_finished(reply.sequence_id, reply.agent_text)
        self._metrics.turns.reply_finished(
            reply.sequence_id,
            reply.interrupted,
            user_text=reply.user_text,
            agent_text=reply.agent_text,
            tool_time=reply.tool_time,
            tool_rounds=reply.tool_rounds,
            llm_failed=reply.llm_failed,
            apologised=reply.apologised,
            withdrawn=reply.withdrawn,
        )


@dataclass
class SessionParts:
    room: rtc.Room
    identity: str
    conversation: Conversation
    stt: stt.STT
    tts: tts.TTS
    llm: ToolRunningLLM
    metrics: SessionMetrics
    data_router: DataMessageRouter
    http_session: aiohttp.ClientSession | None = None
    mcp: McpTools | None = None
    """The job's MCP servers (AGENT_MCP_SERVERS): connected in the background from start()."""
    chat: ChatReplies | None = None
    _closed: bool = False

    async def start(self) -> None:
        if self.mcp is not None:
            self.mcp.start()
        self.metrics.start()
        self.room.on("data_received", self.data_router.on_data_received)
        if self.chat is not None:
            self.chat.attach(self.data_router)
        await self.conversation.start()

    async def aclose(self) -> None:
        """Close everything the session opened (idempotent). Call it while the room is still
        connected, so the final ``session`` metrics message can reach it."""
        if self._closed:
            return
        self._closed = True
        self.room.off("data_received", self.data_router.on_data_received)
        await self.conversation.aclose()  # closes the tool-running LLM and what it wraps
        if self.mcp is not None:  # after the tools that use them were stopped
            await self.mcp.aclose()
        await self.data_router.aclose()
        if self.chat is not None:
            await self.chat.aclose()
        await self.metrics.aclose()
        await self.tts.aclose()
        await self.stt.aclose()
        if self.http_session is not None:
            await self.http_session.close()


def operator_sinks(traces: TraceSink | None) -> list[MetricsSink]:
    """Sinks for the operator's tools, fed the same payloads as the room: Prometheus when the
    worker exports figures (``worker.service`` turns it on for its job processes), traces when
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set."""
    sinks: list[MetricsSink] = []
    if os.environ.get(MULTIPROC_ENV):
        from worker.metrics.prometheus import PrometheusSink

        sinks.append(PrometheusSink())
    return [*sinks, traces] if traces is not None else sinks


def session_traces(settings: Settings) -> TraceSink | None:
    if not settings.otel_endpoint:
        return None
    from worker.metrics.traces import trace_sink

    return trace_sink(settings.otel_endpoint, include_text=settings.otel_include_text)


def conversation_options(settings: Settings, *, local_llm: bool = False) -> ConversationOptions:
    """``local_llm``: the bundled small model answers; unless AGENT_INSTRUCTIONS was set, it
    gets its own short system prompt."""
    instructions = settings.instructions
    if local_llm and instructions == default_instructions(settings.language):
        instructions = LOCAL_INSTRUCTIONS
    return ConversationOptions(
        instructions=instructions,
        greeting=settings.greeting,
        min_endpointing_delay=settings.end_of_turn_delay_ms / 1000,
        tools=ToolRunningLLMOptions(max_tool_calls=settings.max_tool_calls),
    )


def build_turn_detector(
    settings: Settings, audio: UtteranceAudio, vad: TappedVAD
) -> AudioTurnDetector | None:
    """TURN_DETECTOR=audio: the end-of-turn model scores the audio the tap keeps; None: the
    delay rule (END_OF_TURN_DELAY_MS)."""
    if settings.turn_detector != "audio":
        return None
    detector = AudioTurnDetector(audio.recent)
    vad.listen(detector.on_vad_event)
    return detector


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
    """``http_session`` (owned by the returned parts) is needed outside a job; ``llm_base_url``
    points the LLM at a local server (no fallback then). ``options`` replaces the conversation
    options derived from the settings (context limits, tool timeouts, images, audio); their
    instructions and greeting are then used as given."""
    opts = (
        options
        if options is not None
        else conversation_options(settings, local_llm=llm_base_url is not None)
    )

    # providers, each in the wrapper that makes it resilient
    plain_stt = build_stt(settings, http_session=http_session)
    speech_to_text: stt.STT = (
        # a lost stream is replaced, not the end of hearing
        ReconnectingSTT(plain_stt, endpoint=settings.deepgram_stt_url)
        if plain_stt.capabilities.streaming
        else VADSegmentedSTT(stt=plain_stt, vad=vad)  # one recognition per VAD utterance
    )
    plain_tts = build_tts(settings, http_session=http_session)
    text_to_speech = (
        plain_tts
        if tts_segments_itself(settings)
        else SegmentingTTS(
            plain_tts,
            SegmentingTTSOptions(segments=SegmenterOptions(language=settings.language)),
            endpoint=settings.deepgram_tts_url,
        )
    )
    primary = build_llm(settings, base_url=llm_base_url)
    fallback = None if llm_base_url is not None else build_fallback_llm(settings)
    language_model: llm.LLM = FallbackLLM([primary, fallback]) if fallback else primary
    tool_llm = ToolRunningLLM(language_model, opts.tools)

    # what the agent hears and sees besides the transcript
    audio = UtteranceAudio(opts.audio)
    tapped_vad = TappedVAD(vad, on_frame=audio.push)
    detector = build_turn_detector(settings, audio, tapped_vad)
    video = VideoCapture(opts.images)

    # tools
    ending = CallEnding()
    user_tools = load_user_tools(settings.tools) if settings.tools else None
    fnc_ctx = merge_tools(
        BuiltinTools(look=video.fresh_images, end_call=ending.request),
        *([user_tools] if user_tools is not None else []),
    )
    # MCP tools join fnc_ctx once their server is connected (and leave it if it dies)
    mcp_specs = parse_mcp_servers(settings.mcp_servers)
    mcp = McpTools(mcp_specs, fnc_ctx) if mcp_specs else None

    # the conversation on the 0.12 pipeline
    chat_ctx = llm.ChatContext().append(role="system", text=opts.instructions)
    pipeline = VoicePipeline(
        vad=tapped_vad,
        stt=speech_to_text,
        llm=tool_llm,
        tts=text_to_speech,
        fnc_ctx=fnc_ctx,
        chat_ctx=chat_ctx,
        allow_interruptions=opts.allow_interruptions,
        min_endpointing_delay=opts.min_endpointing_delay,
        turn_detector=detector,
        barge_in=BargeInOptions() if opts.allow_interruptions else None,
    )
    tapped_vad.listen(pipeline.on_vad_event)
    router = DataMessageRouter()
    traces = session_traces(settings)
    chat = ChatReplies(room, identity, on_text=lambda text: conversation.reply_to_text(text))
    metrics = SessionMetrics(
        [
            RoomSink(room.local_participant, destination_identities=settings.metrics_destinations),
            *extra_sinks,
            *operator_sinks(traces),
        ],
        MetricsOptions(topic=settings.metrics_topic),
        data_message_stats=router.stats,
    )
    conversation = Conversation(
        room,
        identity,
        pipeline=pipeline,
        chat_ctx=chat_ctx,
        fnc_ctx=fnc_ctx,
        vad=tapped_vad,
        audio=audio,
        video=video,
        tool_llm=tool_llm,
        ending=ending,
        options=opts,
        observer=MetricsObserver(metrics, traces, chat),
    )

    router.on_control(
        control_handler(
            interrupt=conversation.interrupt,
            # spoken, never committed as the assistant's words: a participant must not be
            # able to write the agent's history
            say=lambda text: pipeline.say(text, add_to_chat_ctx=False),
            options=ControlOptions(allow_say=settings.allow_say),
        ),
        senders=lambda sender: sender == identity,  # only the participant we talk with
    )
    return SessionParts(
        room=room,
        identity=identity,
        conversation=conversation,
        stt=speech_to_text,
        tts=text_to_speech,
        llm=tool_llm,
        metrics=metrics,
        data_router=router,
        http_session=http_session,
        mcp=mcp,
        chat=chat,
    )
