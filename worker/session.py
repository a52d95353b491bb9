"""Builds one session from the settings: every provider and wrapper, the tools, the conversation,
metrics and data messages. The one place where the pieces meet.

A room job (``worker.job.run_session``) and the offline ``talk`` both build their session here,
so they run the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from livekit import rtc
from livekit.agents import llm, stt, tts
from livekit.agents import vad as agents_vad

from worker.config import Settings
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
from worker.providers.segmenting_tts import SegmentingTTS
from worker.providers.selection import (
    build_fallback_llm,
    build_llm,
    build_stt,
    build_tts,
    tts_segments_itself,
)
from worker.room_io.data_messages import ControlOptions, DataMessageRouter, control_handler
from worker.room_io.utterance_audio import TappedVAD, UtteranceAudio
from worker.room_io.video import VideoCapture
from worker.tools.builtin import BuiltinTools
from worker.tools.loading import load_user_tools, merge_tools
from worker.tools.runner import ToolRunningLLM, ToolRunningLLMOptions

logger = logging.getLogger("worker.session")


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

    def on_first_audio(self, sequence_id: str | None, at: float) -> None:
        self._metrics.turns.first_audio(sequence_id, at)

    def on_reply_finished(self, reply: FinishedReply) -> None:
        self._metrics.turns.reply_finished(
            reply.sequence_id,
            reply.interrupted,
            user_text=reply.user_text,
            agent_text=reply.agent_text,
            tool_time=reply.tool_time,
            tool_rounds=reply.tool_rounds,
            llm_failed=reply.llm_failed,
            apologised=reply.apologised,
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
        await self.conversation.aclose()  # closes the tool-running LLM and what it wraps
        await self.data_router.aclose()
        await self.metrics.aclose()
        await self.tts.aclose()
        await self.stt.aclose()
        if self.http_session is not None:
            await self.http_session.close()


def conversation_options(settings: Settings) -> ConversationOptions:
    return ConversationOptions(
        instructions=settings.instructions,
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
    opts = options if options is not None else conversation_options(settings)

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
        else SegmentingTTS(plain_tts, endpoint=settings.deepgram_tts_url)
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
        pipeline=pipeline,
        chat_ctx=chat_ctx,
        fnc_ctx=fnc_ctx,
        vad=tapped_vad,
        audio=audio,
        video=video,
        tool_llm=tool_llm,
        ending=ending,
        options=opts,
        observer=MetricsObserver(metrics),
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
    )
