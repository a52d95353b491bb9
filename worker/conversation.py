"""One spoken conversation with one participant, on VoicePipelineAgent 0.12.

This is the only module that knows VoicePipelineAgent (its constructor, events and hooks), so a
move to the 1.x AgentSession stays contained here. It fills the pipeline's gaps:

- the user's turn reaches the LLM as text + utterance audio (ChatAudio) + the newest camera /
  screen image (ChatImage), prepared off the voice path, and the committed message keeps them;
- the context is one rolling, bounded ChatContext (``context.trim_chat_context``);
- tool calls run concurrently inside the LLM stream (``tool_runner``), and their messages are
  persisted next to the reply they belong to;
- every metrics event and a per-turn summary go to an observer (the metrics publisher);
- ``aclose()`` really closes the agent's tasks and streams (the 0.12 agent's does nothing);
- the microphone is read in 50 ms frames (``microphone_input``) and the camera only while the
  user speaks (``video_capture``): a session costs less CPU than 0.12's.

Voice-path choices: the reply is requested on the final transcript (``preemptive_synthesis``),
before the VAD's silence window ends, and played only once the turn is confirmed; the TTS
starts on the first sentence (``tts_segmenter``), not on the whole reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from livekit import rtc
from livekit.agents import llm, stt, tts, utils, vad
from livekit.agents.pipeline import AgentTranscriptionOptions, VoicePipelineAgent, pipeline_agent
from livekit.agents.pipeline.human_input import HumanInput
from livekit.agents.pipeline.pipeline_agent import SpeechDataContextVar
from livekit.agents.pipeline.speech_handle import SpeechHandle
from livekit.agents.types import AgentState

from .audio_capture import TappedVAD, UtteranceAudio, UtteranceAudioOptions
from .builtin_tools import BuiltinTools
from .config import END_OF_TURN_DELAY_MS
from .context import ContextLimits, trim_chat_context
from .microphone_input import MicrophoneInput
from .tool_loading import merge_tools
from .tool_runner import ToolRoundsStream, ToolRunnerOptions, ToolRunningLLM
from .video_capture import VIDEO_SOURCES, ImageOptions, VideoCapture

logger = logging.getLogger("worker.conversation")


@dataclass(frozen=True)
class ConversationOptions:
    instructions: str
    greeting: str = ""
    context: ContextLimits = field(default_factory=ContextLimits)
    images: ImageOptions = field(default_factory=ImageOptions)
    audio: UtteranceAudioOptions = field(default_factory=UtteranceAudioOptions)
    tools: ToolRunnerOptions = field(default_factory=ToolRunnerOptions)
    min_endpointing_delay: float = END_OF_TURN_DELAY_MS / 1000
    """0.12's end-of-turn rule: the reply plays once the VAD has ended the user's speech and
    this long has passed since their last final transcript (since the VAD's end of speech if
    the transcript came later), 3/4 of it when the transcript ends a sentence (. ! ?).

    The reply is prepared from the final transcript meanwhile, so with providers that take
    ~0.75 s anyway, 0.8 s costs no latency after a finished sentence (0.6 s after the final
    transcript, ~0.77 s after the speech) while a final transcript cut at a mid-sentence pause
    waits 0.8 s for the user to go on: bench/voice.py counts 0 false cut-offs on 0.3-0.8 s
    pauses against stock's 5 (its 0.5 s expires before the VAD's 0.55 s silence window)."""
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
    def on_first_audio(self, at: float) -> None: ...
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


class Conversation:
    def __init__(
        self,
        room: rtc.Room,
        participant_identity: str,
        *,
        vad: vad.VAD,
        stt: stt.STT,
        llm_: llm.LLM,
        tts: tts.TTS,
        user_tools: llm.FunctionContext | None,
        options: ConversationOptions,
        observer: ConversationObserver | None = None,
    ) -> None:
        self._room = room
        self._identity = participant_identity
        self._opts = options
        self._observer = observer
        self._audio = UtteranceAudio(options.audio)
        self._video = VideoCapture(options.images)
        self._llm = ToolRunningLLM(llm_, options.tools)
        self._pending_media: tuple[str, list[llm.ChatImage | llm.ChatAudio]] | None = None
        self._ending = False
        self._done = asyncio.Event()
        self._end_reason = ""
        self._rejoin_task: asyncio.Task[None] | None = None
        self._ready_task: asyncio.Task[None] | None = None
        self._closed = False
        self._owned: set[asyncio.Task[None]] = set()
        self._accounting: set[asyncio.Task[None]] = set()  # one per reply that started playing
        self._reported: set[str] = set()  # speech ids whose reply was reported finished
        self._last_user_text: str | None = None
        self._agent_audible = False  # between agent_started_speaking and agent_stopped_speaking
        self.chat_ctx = llm.ChatContext().append(role="system", text=options.instructions)
        self.agent: VoicePipelineAgent = _Agent(
            vad=TappedVAD(vad, on_frame=self._audio.push, on_event=self._on_vad_event),
            stt=stt,
            llm=self._llm,
            tts=tts,
            chat_ctx=self.chat_ctx,
            fnc_ctx=merge_tools(
                BuiltinTools(look=self._video.fresh_images, end_call=self.end_after_reply),
                *([user_tools] if user_tools is not None else []),
            ),
            allow_interruptions=options.allow_interruptions,
            min_endpointing_delay=options.min_endpointing_delay,
            preemptive_synthesis=True,
            transcription=AgentTranscriptionOptions(),
            before_llm_cb=self._before_llm,
            before_tts_cb=self._before_tts,
        )
        self._wire_agent()

    # --- public ------------------------------------------------------------------------------

    @property
    def video(self) -> VideoCapture:
        return self._video

    def interrupt(self) -> None:
        self.agent.interrupt()

    async def say(self, text: str) -> None:
        await settle_playout_queue(self.agent)
        await self.agent.say(text, allow_interruptions=True)

    def end_after_reply(self) -> None:
        """End the conversation once the current reply finished playing (the end_call tool)."""
        self._ending = True

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
        self.agent.start(self._room, participant.identity)
        if self._opts.greeting:
            await self.agent.say(self._opts.greeting, allow_interruptions=True)
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
        await utils.aio.gracefully_cancel(*self._accounting)
        await close_pipeline_agent(self.agent)
        await self._video.aclose()
        await self._llm.aclose()
        self._finish("closed")

    # --- pipeline hooks ----------------------------------------------------------------------

    def _before_llm(self, agent: VoicePipelineAgent, chat_ctx: llm.ChatContext) -> llm.LLMStream:
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
        return self._llm.chat(chat_ctx=chat_ctx, fnc_ctx=agent.fnc_ctx)

    def _before_tts(
        self, agent: VoicePipelineAgent, source: str | AsyncIterable[str]
    ) -> str | AsyncIterable[str]:
        """Runs when a reply's text starts towards TTS: stamp its first text for the metrics."""
        sequence_id = current_sequence_id()
        observer = self._observer
        if observer is None or sequence_id is None:
            return source
        if isinstance(source, str):
            observer.on_first_text(sequence_id, time.perf_counter())
            return source
        return _stamp_first(
            source, lambda: observer.on_first_text(sequence_id, time.perf_counter())
        )

    def _wire_agent(self) -> None:
        agent = self.agent
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
            withdrawn = withdraw_unplayed_replies(self.agent, may_withdraw=_ran_no_tools)
            if withdrawn:
                logger.info(
                    "user spoke again before the reply's first sound: reply withdrawn",
                    extra={"speech_ids": withdrawn},
                )
        if ev.type == vad.VADEventType.END_OF_SPEECH and self._observer is not None:
            self._observer.on_user_stopped_speaking(time.perf_counter() - ev.silence_duration)
        if ev.type != vad.VADEventType.END_OF_SPEECH and self._audio.in_utterance:
            self._video.refresh()  # rate-limited: keeps a ready image while the user speaks

    def _on_user_stopped_speaking(self, *_: Any) -> None:
        # 0.12 says "thinking" only when a reply is requested after the user stopped speaking;
        # with preemptive synthesis it was requested earlier (on the final transcript).
        if reply_pending(self.agent):
            set_agent_state(self.agent, "thinking")

    async def _announce_listening(self) -> None:
        await agent_ready(self.agent)
        set_agent_state(self.agent, "listening")

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
        speech = playing_speech(self.agent)
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
        speech: SpeechHandle | None,
        *,
        interrupted: bool,
        user_text: str | None,
        agent_text: str,
        committed: llm.ChatMessage | None,
    ) -> None:
        if speech is not None:
            self._reported.add(speech.id)
        stream = speech.source if speech is not None and speech.initialized else None
        tool_time, tool_rounds = 0.0, 0
        llm_failed = apologised = False
        if isinstance(stream, ToolRoundsStream):
            tool_time, tool_rounds = stream.tool_time, stream.rounds
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
                    llm_failed=llm_failed,
                    apologised=apologised,
                )
            )

    def _on_agent_started_speaking(self, *_: Any) -> None:
        self._agent_audible = True
        if self._observer is not None:
            self._observer.on_first_audio(time.perf_counter())
        speech = playing_speech(self.agent)
        if speech is not None and speech.id not in self._reported:
            task = asyncio.create_task(self._account_for(speech), name="conversation.account")
            self._accounting.add(task)
            task.add_done_callback(self._accounting.discard)

    async def _account_for(self, speech: SpeechHandle) -> None:
        """Report a reply that played but was never committed. 0.12 commits nothing for a
        reply interrupted in its first 1.5 s of playout (MIN_TIME_PLAYED_FOR_COMMIT: the
        user's question then merges into their next turn), so no event says it ended; the user
        heard part of it all the same, and the metrics must count it (as interrupted)."""
        await asyncio.shield(speech.join())
        if speech.id in self._reported:
            self._reported.discard(speech.id)  # reported by its commit: forget it
            return
        played = speech.synthesis_handle.tts_forwarder.played_text if speech.initialized else ""
        self._report_reply(
            speech,
            interrupted=speech.interrupted,
            user_text=speech.user_question or None,
            agent_text=played,
            committed=None,
        )
        self._reported.discard(speech.id)

    def _on_agent_stopped_speaking(self, *_: Any) -> None:
        self._agent_audible = False
        if self._ending:
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
            closing = relink_participant(self.agent, participant.identity)
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


# --- the VoicePipelineAgent 0.12 internals we must reach (test_conversation_internals) -------


class _Agent(VoicePipelineAgent):
    """VoicePipelineAgent hearing the participant through ``MicrophoneInput``."""

    def _link_participant(self, identity: str) -> None:
        # 0.12 builds its HumanInput by the name in its module, with no hook: swap the name for
        # this synchronous call only (no other code runs on this thread meanwhile)
        pipeline_agent.HumanInput = MicrophoneInput  # type: ignore[misc]
        try:
            super()._link_participant(identity)
        finally:
            pipeline_agent.HumanInput = HumanInput  # type: ignore[misc]


def playing_speech(agent: VoicePipelineAgent) -> SpeechHandle | None:
    """The speech being committed: agent_speech_committed/interrupted fire while it is the
    playing speech. 0.12 offers no public way to tie a committed message to its reply."""
    return agent._playing_speech


def current_sequence_id() -> str | None:
    """The reply id the pipeline sets around before_llm_cb/before_tts_cb (a context var)."""
    data = SpeechDataContextVar.get(None)
    return data.sequence_id if data is not None else None


def set_agent_state(agent: VoicePipelineAgent, state: AgentState) -> None:
    """Publish ``lk.agent.state`` the way the agent does (its update task, replacing any
    pending update; skipped while the room is disconnected)."""
    agent._update_state(state)


async def agent_ready(agent: VoicePipelineAgent) -> None:
    """Until the agent's audio track is published (what its own say() waits for)."""
    await asyncio.shield(agent._track_published_fut)


def reply_pending(agent: VoicePipelineAgent) -> bool:
    """A reply was requested and awaits the end-of-turn decision; nothing is playing."""
    return agent._pending_agent_reply is not None and agent._playing_speech is None


def withdraw_unplayed_replies(
    agent: VoicePipelineAgent, *, may_withdraw: Callable[[SpeechHandle], bool]
) -> list[str]:
    """Take back the replies confirmed for playout that have not made a sound yet (call it only
    while the agent is silent), because the user spoke again: a pause the VAD took for the end
    of the turn. Returns their ids.

    0.12 would play them and leave the user to barge in (0.5 s of speech later, the reply
    already audible). Nothing of theirs was committed (0.12 commits the user's question once a
    reply played), so the user's words so far stay in the transcript and the reply is requested
    again from them at once: the next final transcript replaces it with a fuller one, and if
    none comes (a cough), the next end of speech confirms it after the usual endpointing delay
    rather than 0.12's 5 s wait for a transcript."""
    withdrawn = [
        speech
        for speech in agent._speech_q
        if speech.is_reply
        and speech.allow_interruptions
        and not speech.interrupted
        and may_withdraw(speech)
    ]
    if not withdrawn:
        return []
    for speech in withdrawn:
        speech.interrupt()
    if agent._pending_agent_reply is None and agent._transcribed_text.strip():
        agent._synthesize_agent_reply()
        # the transcript the withdrawn reply was confirmed on counts again for the next decision
        agent._deferred_validation._last_final_transcript = withdrawn[-1].user_question
    return [speech.id for speech in withdrawn]


async def settle_playout_queue(agent: VoicePipelineAgent) -> None:
    """Let the playing speech leave the queue if it is finishing, before ``agent.say()``.

    0.12's say() nests a new speech into the playing one (or into the head of the queue). Once
    the playing speech has finished playing its nested speeches, but before the main loop pops
    it (a loop turn or two later), a speech nested into it is never played: say() right after
    a reply ends would be lost. That window ends without any event to wait for, within a few
    loop turns, so yield until it has passed (bounded, in case a speech is stuck there)."""
    for _ in range(50):
        playing = agent._playing_speech
        finishing = (
            playing is not None
            and playing._nested_speech_done_fut is not None
            and playing._nested_speech_done_fut.done()
            and bool(agent._speech_q)
            and agent._speech_q[0] is playing
        )
        if not finishing:
            return
        await asyncio.sleep(0)


def relink_participant(agent: VoicePipelineAgent, identity: str) -> asyncio.Task[None] | None:
    """Listen to a participant that rejoined (0.12's agent links one participant at start).

    Returns the task closing the old input, for the caller to own."""
    old = agent._human_input
    agent._human_input = None
    agent._link_participant(identity)
    return asyncio.create_task(old.aclose()) if old is not None else None


async def close_pipeline_agent(agent: VoicePipelineAgent) -> None:
    """Close what a 0.12 VoicePipelineAgent started: its own aclose() is a no-op."""
    room = getattr(agent, "_room", None)
    if room is not None:
        room.off("participant_connected", agent._on_participant_connected)
    speeches = [agent._pending_agent_reply, agent._playing_speech, *agent._speech_q]
    streams: list[llm.LLMStream] = []
    for speech in speeches:
        if speech is None:
            continue
        if speech.initialized and isinstance(speech.source, llm.LLMStream):
            streams.append(speech.source)
        speech.cancel(cancel_nested=True)
    await agent._deferred_validation.aclose()
    tasks = [
        t
        for t in (
            getattr(agent, "_main_atask", None),
            agent._agent_reply_task,
            agent._update_state_task,
        )
        if t is not None
    ]
    await utils.aio.gracefully_cancel(*tasks)
    if agent._human_input is not None:
        await agent._human_input.aclose()
        agent._human_input = None
    if agent._agent_output is not None:
        await agent._agent_output.aclose()
        playout = agent._agent_output._agent_playout
        # AgentPlayout.aclose() only awaits its task, which never ends when the reply's text
        # was cut off (an interruption or this close while the LLM still streams): its
        # transcription forwarder waits for the end of a sentence stream that never comes.
        # So cancel it instead (its aclose() would then re-raise that cancellation).
        if playout._playout_atask is not None:
            await utils.aio.gracefully_cancel(playout._playout_atask)
        else:
            await playout.aclose()
    for stream in streams:
        await stream.aclose()


def _ran_no_tools(speech: SpeechHandle) -> bool:
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
