"""The conversation policy: what a turn carries, when a reply is withdrawn, what is reported.

It runs on a finished :class:`~worker.pipeline.adapter.VoicePipeline` (0.12's turn-taking,
endpointing, playout and interruptions) and fills the pipeline's gaps:

- the user's turn reaches the LLM as text + utterance audio (ChatAudio) + the newest camera /
  screen image (ChatImage), prepared off the voice path, and the committed message keeps them;
- the context is one rolling, bounded ChatContext (``context.trim_chat_context``);
- tool calls run concurrently inside the LLM stream (``worker.tools.runner``), and their
  messages are persisted next to the reply they belong to;
- a reply confirmed for playout but still silent is withdrawn when the user speaks again, and
  one request answers the merged turn; the end-of-turn decision waits for the transcript of
  the user's last words (a reply requested on earlier words would answer stale ones);
- every metrics event and a per-reply summary go to an observer (the session's metrics), the
  summary as soon as the reply ends (played, interrupted, withdrawn or silent);
- ``aclose()`` really closes the pipeline's tasks and streams.

The reply is requested on the final transcript, before the VAD's silence window ends, and
played only once the turn is confirmed; the TTS starts on the first sentence
(``worker.providers.segmenting_tts``), not on the whole reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit import rtc
from livekit.agents import llm, utils, vad

from worker.config import END_OF_TURN_DELAY_MS
from worker.pipeline.adapter import Reply, VoicePipeline, played_text
from worker.pipeline.context import ContextLimits, trim_chat_context
from worker.pipeline.speakable import speakable, speakable_stream
from worker.room_io.utterance_audio import TappedVAD, UtteranceAudio, UtteranceAudioOptions
from worker.room_io.video import VIDEO_SOURCES, ImageOptions, VideoCapture
from worker.tools.runner import (
    ToolCallTiming,
    ToolRoundsStream,
    ToolRunningLLM,
    ToolRunningLLMOptions,
)

logger = logging.getLogger("worker.pipeline.conversation")

TRANSCRIPT_WAIT = 5.0
"""Longest hold, from the end of the user's words, for their transcript before the end-of-turn
decision goes ahead without it (0.12's FINAL_TRANSCRIPT_TIMEOUT), unless the STT says the
transcript is on its way."""
TRANSCRIPT_RECHECK = 0.25
"""While the STT says a transcript is on its way, the decision is looked at again this often."""
TRANSCRIPT_SLACK = 0.3
"""A final transcript this much before the VAD's estimate of the end of speech still counts as
covering it (the VAD's estimate trails the last voiced sound)."""


@dataclass(frozen=True)
class ConversationOptions:
    instructions: str
    greeting: str = ""
    context: ContextLimits = field(default_factory=ContextLimits)
    images: ImageOptions = field(default_factory=ImageOptions)
    audio: UtteranceAudioOptions = field(default_factory=UtteranceAudioOptions)
    tools: ToolRunningLLMOptions = field(default_factory=ToolRunningLLMOptions)
    min_endpointing_delay: float = END_OF_TURN_DELAY_MS / 1000
    """0.12's end-of-turn rule: the reply plays once the VAD has ended the user's speech and
    this long has passed since their last final transcript (since the VAD's end of speech if
    the transcript came later), 3/4 of it when the transcript ends a sentence (. ! ?). The
    reply is prepared from the final transcript meanwhile, so a long delay costs little after a
    finished sentence while a transcript cut at a mid-sentence pause waits for the user to go
    on (the trade-off is measured in bench/voice.py: docs/bench/voice.json)."""
    allow_interruptions: bool = True
    rejoin_timeout: float = 0.0
    """How long to wait for the participant to come back before the conversation ends."""


class ConversationObserver(Protocol):
    """What the conversation reports (the session's metrics implement it).

    Times are ``time.perf_counter()``; ``sequence_id`` is the pipeline's id of a reply.
    """

    def on_metrics(self, metrics: Any) -> None: ...
    def on_user_stopped_speaking(self, at: float) -> None: ...
    def on_first_text(self, sequence_id: str, at: float) -> None: ...
    def on_first_audio(self, sequence_id: str | None, at: float) -> None: ...
    def on_reply_finished(self, reply: FinishedReply) -> None: ...


@dataclass(frozen=True)
class FinishedReply:
    sequence_id: str | None
    interrupted: bool
    tool_time: float
    tool_rounds: int
    user_text: str | None
    agent_text: str
    llm_failed: bool = False
    """The LLM failed for good during this reply (see ``apologised``)."""
    apologised: bool = False
    """... before saying anything: the reply is the apology."""
    tool_calls: tuple[ToolCallTiming, ...] = ()
    """The reply's tool calls, each with its start and end."""
    withdrawn: bool = False
    """Taken back before it made a sound (the user spoke again): nothing of it was heard."""


@dataclass
class CallEnding:
    """Set by the ``end_call`` tool: the conversation ends once the current reply has played."""

    requested: bool = False

    def request(self) -> None:
        self.requested = True


class Conversation:
    """The policy of one conversation, on a finished :class:`VoicePipeline` and its parts.

    ``chat_ctx`` is the context the pipeline was built with (one object for the whole call),
    ``vad`` the tapped VAD the pipeline listens with, ``audio`` / ``video`` what the tap and the
    participant's video tracks fill, ``llm`` the tool-running LLM the pipeline asks, ``ending``
    what the ``end_call`` tool sets.
    """

    def __init__(
        self,
        room: rtc.Room,
        participant_identity: str,
        *,
        pipeline: VoicePipeline,
        chat_ctx: llm.ChatContext,
        fnc_ctx: llm.FunctionContext,
        vad: TappedVAD,
        audio: UtteranceAudio,
        video: VideoCapture,
        tool_llm: ToolRunningLLM,
        ending: CallEnding,
        options: ConversationOptions,
        observer: ConversationObserver | None = None,
    ) -> None:
        self._room = room
        self._identity = participant_identity
        self._opts = options
        self._observer = observer
        self._audio = audio
        self._video = video
        self._llm = tool_llm
        self._fnc_ctx = fnc_ctx
        self._ending = ending
        self._pending_media: tuple[str, list[llm.ChatImage | llm.ChatAudio]] | None = None
        self._done = asyncio.Event()
        self._end_reason = ""
        self._rejoin_task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._closed = False
        self._owned: set[asyncio.Task[None]] = set()
        self._accounting: dict[str, asyncio.Task[None]] = {}  # per reply confirmed or playing
        self._reported: set[str] = set()  # ids of replies reported finished
        self._audible: set[str] = set()  # ids of replies that made a sound
        self._last_user_text: str | None = None
        self._agent_audible = False  # between agent_started_speaking and agent_stopped_speaking
        self._speech_ended_at: float | None = None  # the user's last words ended (perf_counter)
        self.chat_ctx = chat_ctx
        self.pipeline = pipeline
        vad.listen(self._on_vad_event)
        pipeline.set_hooks(self)
        pipeline.on_reply_queued(self._account_for)
        self._wire_pipeline()

    # --- public ------------------------------------------------------------------------------

    @property
    def video(self) -> VideoCapture:
        return self._video

    def interrupt(self) -> None:
        self.pipeline.interrupt()

    async def say(self, text: str) -> None:
        await self.pipeline.say(text)

    def reply_to_text(self, text: str) -> str | None:
        """A chat message the user typed, answered by voice like a spoken turn (see
        ``VoicePipeline.reply_to_text``); returns the reply's id. The turn's latency counts
        from now (the message's arrival)."""
        if self._observer is not None:
            self._observer.on_user_stopped_speaking(time.perf_counter())
        return self.pipeline.reply_to_text(text)

    async def start(self) -> None:
        participant = self._room.remote_participants.get(self._identity)
        if participant is None:
            raise RuntimeError(f"participant {self._identity!r} is not in the room")
        self._room.on("track_subscribed", self._on_track_subscribed)
        self._room.on("track_unsubscribed", self._on_track_unsubscribed)
        self._room.on("participant_disconnected", self._on_participant_disconnected)
        self._room.on("participant_connected", self._on_participant_connected)
        for publication in participant.track_publications.values():
            if publication.track is not None:
                self._on_track_subscribed(publication.track, publication, participant)
        self.pipeline.start(self._room, participant.identity)
        if self._opts.greeting:
            await self.pipeline.say(self._opts.greeting)
        else:  # 0.12 stays "initializing" until its first reply has been played
            self._ready_task = asyncio.create_task(self._announce_listening())

    async def wait_done(self) -> str:
        """Wait until the conversation ends; returns why (participant left, end_call)."""
        await self._done.wait()
        return self._end_reason

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._room.off("track_subscribed", self._on_track_subscribed)
        self._room.off("track_unsubscribed", self._on_track_unsubscribed)
        self._room.off("participant_disconnected", self._on_participant_disconnected)
        self._room.off("participant_connected", self._on_participant_connected)
        if self._rejoin_task is not None:
            await utils.aio.gracefully_cancel(self._rejoin_task)
        if self._ready_task is not None:
            await utils.aio.gracefully_cancel(self._ready_task)
        await asyncio.gather(*self._owned, return_exceptions=True)
        await utils.aio.gracefully_cancel(*self._accounting.values())
        await self.pipeline.aclose()
        await self._video.aclose()
        await self._llm.aclose()
        self._finish("closed")

    # --- pipeline hooks ----------------------------------------------------------------------

    def before_llm(self, chat_ctx: llm.ChatContext) -> llm.LLMStream:
        """Runs when a reply is requested: attach this turn's media to the user message, and
        hold the request (a copy of the context plus the new turn) to the same limits as the
        context, so the LLM never sees more turns or media than the policy allows."""
        last = chat_ctx.messages[-1] if chat_ctx.messages else None
        if last is not None and last.role == "user" and isinstance(last.content, str):
            media: list[llm.ChatImage | llm.ChatAudio] = [*self._video.images()]
            audio = self._audio.take()
            if audio is not None:
                media.append(audio)
            if media:
                self._pending_media = (last.content, media)
                last.content = [last.content, *media]
        trim_chat_context(chat_ctx, self._opts.context)
        return self._llm.chat(chat_ctx=chat_ctx, fnc_ctx=self._fnc_ctx)

    def before_tts(
        self, sequence_id: str | None, source: str | AsyncIterable[str]
    ) -> str | AsyncIterable[str]:
        """Runs when a reply's text starts towards TTS: make it speakable (the transcript keeps
        the original), and stamp its first text for the metrics."""
        source = speakable(source) if isinstance(source, str) else speakable_stream(source)
        observer = self._observer
        if observer is None or sequence_id is None:
            return source
        if isinstance(source, str):
            observer.on_first_text(sequence_id, time.perf_counter())
            return source
        return _stamp_first(
            source, lambda: observer.on_first_text(sequence_id, time.perf_counter())
        )

    def awaiting_reply(self) -> bool:
        """The user's last words are not answered yet: a reply is requested, confirmed or
        playing, or their transcript may still come (see :meth:`transcript_wait`)."""
        if not self.pipeline.idle():
            return True
        return self.transcript_wait(self.pipeline.last_transcript_at()) > 0

    def transcript_wait(self, last_transcript_at: float | None) -> float:
        """Hold the end-of-turn decision while the user's last words have no transcript yet:
        the reply at hand was requested on earlier words (an STT whose final comes after the
        VAD's end of speech, as Whisper's does, or a final in a pause the VAD did not end the
        turn at). Confirming it would play a stale answer, cut off by the next transcript's
        reply. The hold lasts while the STT says the transcript is on its way; words with no
        transcript at all (a cough) release it once the STT is done with them or, for an STT
        that does not say, after ``TRANSCRIPT_WAIT``."""
        ended = self._speech_ended_at
        if ended is None:
            return 0.0
        if last_transcript_at is not None and last_transcript_at >= ended - TRANSCRIPT_SLACK:
            return 0.0
        if self.pipeline.transcribed_since(ended):
            return 0.0
        if self.pipeline.transcribing():
            return TRANSCRIPT_RECHECK
        return max(0.0, ended + TRANSCRIPT_WAIT - time.perf_counter())

    def _wire_pipeline(self) -> None:
        agent = self.pipeline
        agent.on("user_speech_committed", self._on_user_committed)
        agent.on("user_stopped_speaking", self._on_user_stopped_speaking)
        agent.on("agent_speech_committed", self._on_agent_committed)
        agent.on("agent_speech_interrupted", self._on_agent_interrupted)
        agent.on("agent_started_speaking", self._on_agent_started_speaking)
        agent.on("agent_stopped_speaking", self._on_agent_stopped_speaking)
        agent.on("metrics_collected", self._on_metrics)

    def _on_vad_event(self, ev: vad.VADEvent) -> None:
        self._audio.on_vad_event(ev)
        if ev.type == vad.VADEventType.START_OF_SPEECH:
            self._video.user_speaking(True)
        elif ev.type == vad.VADEventType.END_OF_SPEECH:
            self._video.user_speaking(False)
        if ev.type == vad.VADEventType.START_OF_SPEECH and not self._agent_audible:
            withdrawn = self.pipeline.withdraw_unplayed_replies(may_withdraw=_ran_no_tools)
            if withdrawn:
                logger.info(
                    "user spoke again before the reply's first sound: reply withdrawn",
                    extra={"speech_ids": [reply.id for reply in withdrawn]},
                )
        if ev.type == vad.VADEventType.END_OF_SPEECH:
            self._speech_ended_at = time.perf_counter() - ev.silence_duration
            if self._observer is not None:
                self._observer.on_user_stopped_speaking(self._speech_ended_at)
        if ev.type != vad.VADEventType.END_OF_SPEECH and self._audio.in_utterance:
            self._video.refresh()  # rate-limited: keeps a ready image while the user speaks

    def _on_user_stopped_speaking(self, *_: Any) -> None:
        # 0.12 says "thinking" only when a reply is requested after the user stopped speaking;
        # with preemptive synthesis it was requested earlier (on the final transcript).
        if self.pipeline.reply_pending():
            self.pipeline.set_state("thinking")

    async def _announce_listening(self) -> None:
        await self.pipeline.ready()
        self.pipeline.set_state("listening")

    def _on_user_committed(self, msg: llm.ChatMessage) -> None:
        self._last_user_text = msg.content if isinstance(msg.content, str) else None
        if self._pending_media is not None and msg.content == self._pending_media[0]:
            msg.content = [msg.content, *self._pending_media[1]]
        self._pending_media = None
        self._audio.reset()
        self._trim()

    def _on_agent_committed(self, msg: llm.ChatMessage) -> None:
        self._reply_finished(msg, interrupted=False)

    def _on_agent_interrupted(self, msg: llm.ChatMessage) -> None:
        self._reply_finished(msg, interrupted=True)

    def _reply_finished(self, msg: llm.ChatMessage, *, interrupted: bool) -> None:
        speech = self.pipeline.playing_reply()
        self._report_reply(
            speech,
            interrupted=interrupted,
            user_text=self._last_user_text,
            agent_text=msg.content if isinstance(msg.content, str) else "",
            committed=msg,
        )
        self._trim()

    def _report_reply(
        self,
        speech: Reply | None,
        *,
        interrupted: bool,
        user_text: str | None,
        agent_text: str,
        committed: llm.ChatMessage | None,
        withdrawn: bool = False,
    ) -> None:
        if speech is not None:
            self._reported.add(speech.id)
        stream = speech.source if speech is not None and speech.initialized else None
        tool_time, tool_rounds = 0.0, 0
        tool_calls: tuple[ToolCallTiming, ...] = ()
        llm_failed = apologised = False
        if isinstance(stream, ToolRoundsStream):
            tool_time, tool_rounds = stream.tool_time, stream.rounds
            tool_calls = tuple(stream.tool_calls)
            llm_failed, apologised = stream.error is not None, stream.apologised
            if (
                committed is not None
                and stream.tool_messages
                and committed in self.chat_ctx.messages
            ):
                at = self.chat_ctx.messages.index(committed)
                self.chat_ctx.messages[at:at] = stream.tool_messages
        if self._observer is not None:
            self._observer.on_reply_finished(
                FinishedReply(
                    sequence_id=speech.id if speech is not None else None,
                    interrupted=interrupted,
                    tool_time=tool_time,
                    tool_rounds=tool_rounds,
                    user_text=user_text,
                    agent_text=agent_text,
                    llm_failed=llm_failed and not withdrawn,
                    apologised=apologised and not withdrawn,
                    tool_calls=tool_calls,
                    withdrawn=withdrawn,
                )
            )

    def _on_agent_started_speaking(self, *_: Any) -> None:
        self._agent_audible = True
        speech = self.pipeline.playing_reply()
        if self._observer is not None:
            self._observer.on_first_audio(
                speech.id if speech is not None else None, time.perf_counter()
            )
        if speech is not None:
            self._audible.add(speech.id)
            self._account_for(speech)  # a say() nested into a reply was never queued

    def _account_for(self, speech: Reply) -> None:
        """Report the reply when it ends, unless its commit event does (once per reply)."""
        if speech.id not in self._reported and speech.id not in self._accounting:
            task = asyncio.create_task(self._report_when_ended(speech), name="conversation.turn")
            self._accounting[speech.id] = task
            task.add_done_callback(lambda _: self._accounting.pop(speech.id, None))

    async def _report_when_ended(self, speech: Reply) -> None:
        """Report a reply that ended without a commit event: 0.12 commits nothing for a reply
        interrupted in its first 1.5 s of playout (MIN_TIME_PLAYED_FOR_COMMIT: the user's
        question then merges into their next turn), for one withdrawn before its first sound,
        or for one with no text to say. The user heard part of the first all the same, and
        the metrics must count each (interrupted, withdrawn, or as it ended)."""
        try:
            await self.pipeline.wait_ended(speech)
            if speech.id in self._reported:
                return  # reported by its commit
            audible = speech.id in self._audible
            self._report_reply(
                speech,
                interrupted=speech.interrupted and audible,
                user_text=speech.user_question or None,
                agent_text=played_text(speech),
                committed=None,
                withdrawn=speech.interrupted and not audible,
            )
            if not audible and not self._agent_audible and self.pipeline.idle(ending=speech):
                self.pipeline.set_state("listening")  # 0.12 says so only after a playout
        finally:
            self._reported.discard(speech.id)
            self._audible.discard(speech.id)

    def _on_agent_stopped_speaking(self, *_: Any) -> None:
        self._agent_audible = False
        if self._ending.requested:
            self._finish("end_call")

    def _on_metrics(self, metrics: Any) -> None:
        if self._observer is not None:
            self._observer.on_metrics(metrics)

    def _trim(self) -> None:
        report = trim_chat_context(self.chat_ctx, self._opts.context)
        if report.changed:
            logger.debug("context trimmed", extra=report.as_dict())

    # --- room events -------------------------------------------------------------------------

    def _on_track_subscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if participant.identity == self._identity and publication.source in VIDEO_SOURCES:
            self._video.add_track(track, publication.source)

    def _on_track_unsubscribed(
        self,
        track: rtc.Track,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        if participant.identity == self._identity:
            self._own(asyncio.create_task(self._video.remove_track(track.sid)))

    def _on_participant_disconnected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity != self._identity:
            return
        if self._opts.rejoin_timeout <= 0:
            self._finish("participant_left")
            return
        logger.info("participant left; waiting for a rejoin", extra={"identity": self._identity})
        self._rejoin_task = asyncio.create_task(self._wait_rejoin())

    def _on_participant_connected(self, participant: rtc.RemoteParticipant) -> None:
        if participant.identity == self._identity and self._rejoin_task is not None:
            self._rejoin_task.cancel()
            self._rejoin_task = None
            closing = self.pipeline.relink(participant.identity)
            if closing is not None:
                self._own(closing)

    async def _wait_rejoin(self) -> None:
        await asyncio.sleep(self._opts.rejoin_timeout)
        self._finish("participant_left")

    def _own(self, task: asyncio.Task[None]) -> None:
        self._owned.add(task)
        task.add_done_callback(self._owned.discard)

    def _finish(self, reason: str) -> None:
        if not self._done.is_set():
            self._end_reason = reason
            self._done.set()


def _ran_no_tools(speech: Reply) -> bool:
    """A reply whose tools started is kept: asking again would run them (and their side
    effects) twice."""
    stream = speech.source if speech.initialized else None
    return not (isinstance(stream, ToolRoundsStream) and stream.tools_started)


async def _stamp_first(source: AsyncIterable[str], stamp: Callable[[], None]) -> AsyncIterator[str]:
    first = True
    async for text in source:
        if first and text:
            stamp()
            first = False
        yield text
