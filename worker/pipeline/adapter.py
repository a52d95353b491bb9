"""The seam to livekit-agents 0.12: the one module that reaches the framework's private members.

Everything else in the worker uses public 0.12 API (or the plugin contract every 0.12 plugin
implements: ``_run``, ``_input_ch``, ``_event_ch``, ``_metrics_monitor_task``). A move to the
1.x ``AgentSession`` replaces this module and ``conversation``; the rest stays.

:class:`VoicePipeline` is the typed interface the conversation policy uses. It owns a
``VoicePipelineAgent`` and exposes what the policy needs of it, including what 0.12 offers only
through private members. Each private member reached, and why (``PRIVATE_MEMBERS`` lists the
names; tests/test_conversation_internals.py checks they exist with the meaning relied on, and
that no other module reaches them):

VoicePipelineAgent (pipeline/pipeline_agent.py)
  ``_link_participant`` + the module name ``HumanInput``: 0.12 builds its microphone input by
  that name, with no hook; swapped for :class:`MicrophoneInput` during the call (and called
  again to relink a participant who rejoined, after taking ``_human_input`` away).
  ``_playing_speech``: the reply a commit event belongs to (no public tie between the two).
  ``_pending_agent_reply``, ``_speech_q``, ``_transcribed_text``: withdrawing a reply that has
  not made a sound when the user speaks again. ``_synthesize_agent_reply`` and
  ``_validate_reply_if_possible`` (overridden): after a withdrawal, one request for the merged
  turn, made on the next final transcript or, if none comes, at the end-of-turn decision; with
  the barge-in policy, none for words heard over a reply that plays on (a backchannel).
  ``_add_speech_for_playout`` (overridden): the moment a reply is confirmed, so the policy can
  report every reply when it ends, including one that never made a sound.
  ``_last_final_transcript_time``, ``_deferred_validation._run``: holding the end-of-turn
  decision until the transcript of the user's last words is in (a reply requested on an
  earlier transcript would answer stale words), re-running it after the policy's wait.
  ``_validate_reply_if_possible``, ``_last_speech_time`` (with ``_transcribed_text`` and
  ``_synthesize_agent_reply``): a typed chat message answered as a user turn (0.12 has no
  public entry for text the user did not speak); no end-of-utterance metric for it.
  ``_nested_speech_done_fut`` (SpeechHandle): waiting out the window in which ``say()`` would
  be nested into a finishing speech and lost.
  ``_update_state``: publishing ``lk.agent.state`` the way the agent does.
  ``_track_published_fut``: the agent's audio track is published (what its ``say()`` awaits).
  ``_room``, ``_on_participant_connected``, ``_main_atask``, ``_agent_reply_task``,
  ``_update_state_task``, ``_human_input``, ``_agent_output``, ``_agent_playout``,
  ``_playout_atask``, ``_deferred_validation``: closing what the agent started (its own
  ``aclose()`` is a no-op).
  ``_agent_output._agent_playout._audio_source`` (AgentPlayout): the agent's audio goes
  through :class:`PausableAudioSource`, so a barge-in silences it at once and a backchannel
  lets it go on (0.12 has no pause).
HumanInput (pipeline/human_input.py)
  ``_recognize_task``, ``_subscribed_track``, ``_noise_cancellation``: reading the microphone
  in 50 ms frames instead of the FFI's 10 ms (:class:`MicrophoneInput`).
STT / TTS streams
  ``RecognizeStream._FlushSentinel``, ``SynthesizeStream._FlushSentinel``: the flush marker in
  a stream's input channel (wrappers forward it). ``_conn_options`` (TTS and SynthesizeStream):
  turning off the framework's retry of an inner TTS stream, which would lose its text.
  ``StreamAdapter._vad``, ``StreamAdapterWrapper._vad_stream``: closing the VAD stream the
  framework's STT StreamAdapter opens and leaves running; the stream it builds is given an STT
  that counts its ``recognize`` calls (all it calls), to tell when a transcript is on its way.
LLM
  ``FallbackAdapter._status[i].recovering_task``: the background probes of a failed LLM.
Worker
  ``worker._DefaultLoadCalc``: the framework's CPU load, for the job limiter's load_fnc.
  ``Worker._draining``: a draining worker (SIGTERM) still answers job offers through
  request_fnc; the job limiter refuses them (0.12 only stops advertising itself).
  ``Worker._http_server._app``: the aiohttp application behind the health port (``GET /``);
  the probes ``/healthz`` and ``/readyz`` are added to it before the worker runs, so they share
  ``WORKER_PORT`` with 0.12's answer. ``Worker._connecting``: true from the start of a
  connection attempt until the server accepted the registration (readiness; 0.12 has only the
  ``worker_registered`` event, nothing for a lost connection). ``Worker._update_job_status``:
  0.12 reports a job from its process's exit code with an empty error, so a job whose
  entrypoint raised goes out as ``JS_SUCCESS``; it is replaced by one that reports
  ``JS_FAILED`` with the error the job process recorded, sent the way 0.12 sends it
  (``Worker._queue_msg``, which drops it while reconnecting). ``Worker._proc_pool``: ending
  the calls still running when the drain times out while the server connection is still up
  (``Worker.aclose`` cancels the connection first, so the server would never hear they ended).
livekit.rtc (the in-process room builds real tracks outside a room)
  ``Track._info.sid``: a track's sid matches its publication; ``Track._ffi_handle``: ending a
  track ends every stream on it, as when a participant unpublishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any, Literal, Protocol, cast

from aiohttp import web
from livekit import rtc
from livekit.agents import llm, stt, tts, utils, vad
from livekit.agents.ipc.job_executor import JobExecutor
from livekit.agents.ipc.job_executor import JobStatus as JobExecutorStatus
from livekit.agents.pipeline import AgentTranscriptionOptions, VoicePipelineAgent, pipeline_agent
from livekit.agents.pipeline.human_input import HumanInput
from livekit.agents.pipeline.pipeline_agent import SpeechDataContextVar
from livekit.agents.pipeline.speech_handle import SpeechHandle
from livekit.agents.stt.stream_adapter import StreamAdapterWrapper
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, AgentState, APIConnectOptions
from livekit.agents.worker import Worker, _DefaultLoadCalc
from livekit.protocol import agent as agent_proto

from worker.pipeline.barge_in import BargeIn, BargeInOptions, PausableAudioSource
from worker.pipeline.transcript_text import VerbatimSentenceTokenizer
from worker.pipeline.turn_detector import AudioTurnDetector
from worker.room_io.microphone import open_microphone

PRIVATE_MEMBERS: frozenset[str] = frozenset(
    {
        # VoicePipelineAgent and SpeechHandle
        "_link_participant",
        "_playing_speech",
        "_pending_agent_reply",
        "_speech_q",
        "_transcribed_text",
        "_synthesize_agent_reply",
        "_validate_reply_if_possible",
        "_last_speech_time",
        "_deferred_validation",
        "_add_speech_for_playout",
        "_last_final_transcript_time",
        "_run",
        "_nested_speech_done_fut",
        "_update_state",
        "_track_published_fut",
        "_room",
        "_on_participant_connected",
        "_main_atask",
        "_agent_reply_task",
        "_update_state_task",
        "_human_input",
        "_agent_output",
        "_agent_playout",
        "_playout_atask",
        "_audio_source",
        # HumanInput
        "_recognize_task",
        "_subscribed_track",
        "_noise_cancellation",
        # STT / TTS / LLM / worker
        "_FlushSentinel",
        "_conn_options",
        "_vad",
        "_vad_stream",
        "_status",
        "_DefaultLoadCalc",
        "_draining",
        "_http_server",
        "_app",
        "_connecting",
        "_update_job_status",
        "_queue_msg",
        "_proc_pool",
        # livekit.rtc
        "_info",
        "_ffi_handle",
    }
)
"""Every private member of the framework this module reaches (and no other module does)."""

NEVER = 1_000_000
"""An ``interrupt_min_words`` no transcript reaches."""
REPLY_POLL_INTERVAL = 0.05
"""Seconds between looks at a reply that may have been dropped silent (see ``wait_ended``)."""

PipelineEvent = Literal[
    "user_started_speaking",
    "user_stopped_speaking",
    "agent_started_speaking",
    "agent_stopped_speaking",
    "user_speech_committed",
    "agent_speech_committed",
    "agent_speech_interrupted",
    "function_calls_collected",
    "function_calls_finished",
    "metrics_collected",
]

Reply = SpeechHandle
"""One reply of the pipeline (0.12's SpeechHandle): ``id``, ``source``, ``interrupted``, ..."""


class PipelineHooks(Protocol):
    """What the conversation policy decides inside the pipeline."""

    def before_llm(self, chat_ctx: llm.ChatContext) -> llm.LLMStream:
        """A reply is requested: ``chat_ctx`` is a copy of the context plus the user's turn."""
        ...

    def before_tts(
        self, sequence_id: str | None, source: str | AsyncIterable[str]
    ) -> str | AsyncIterable[str]:
        """A reply's (or a ``say()``'s) text starts towards TTS."""
        ...

    def transcript_wait(self, last_transcript_at: float | None) -> float:
        """The end-of-turn rule would confirm the reply now: seconds to hold that decision
        for the transcript of the user's last words (0: decide now). ``last_transcript_at`` is
        when the last final transcript arrived (perf_counter)."""
        ...


# --- VoicePipelineAgent ---------------------------------------------------------------------


class MicrophoneInput(HumanInput):
    """HumanInput reading the microphone through :func:`open_microphone` (50 ms frames)."""

    async def _recognize_task(self, audio_stream: rtc.AudioStream) -> None:
        # 0.12 opens the stream itself, with no say in its frame size: read the same track
        # through a stream of our own and close 0.12's unread (once per subscription; ours is
        # opened first, so no audio waits for that close)
        track = self._subscribed_track
        if track is None:  # 0.12 sets it before it starts this task
            await audio_stream.aclose()
            return
        ours = open_microphone(track, noise_cancellation=self._noise_cancellation)
        try:
            await audio_stream.aclose()
            await super()._recognize_task(ours)
        finally:
            await ours.aclose()  # 0.12 leaves its stream open when the task ends


class _Agent(VoicePipelineAgent):
    """VoicePipelineAgent hearing the participant through ``MicrophoneInput``, and asking the LLM
    once per user turn when a reply is withdrawn (:meth:`VoicePipeline.withdraw_unplayed_replies`).
    """

    on_queued: Callable[[SpeechHandle], None] | None = None
    """Called with each speech queued for playout (a confirmed reply, a ``say()``)."""
    transcript_wait: Callable[[float | None], float] | None = None
    """The policy's hold on the end-of-turn decision (``PipelineHooks.transcript_wait``)."""
    reply_owed = False
    """The user's words have no reply requested (one was withdrawn, or none was asked while a
    reply played on): the next final transcript asks (with the merged words); if none comes,
    the end-of-turn decision does."""
    hold_over_reply = False
    """The barge-in policy decides interruptions: while a reply plays uninterrupted, a final
    transcript asks for no reply. 0.12 would request one, then drop it (a backchannel's words
    never interrupt). A barge-in goes on speaking: its next final transcript asks, with every
    word since the last reply (the end-of-turn decision does if none comes)."""

    def reply_playing(self) -> bool:
        """A reply is playing and was not interrupted."""
        speech = self._playing_speech
        return speech is not None and not speech.interrupted

    def _link_participant(self, identity: str) -> None:
        # 0.12 builds its HumanInput by the name in its module, with no hook: swap the name for
        # this synchronous call only (no other code runs on this thread meanwhile)
        pipeline_agent.HumanInput = MicrophoneInput  # type: ignore[misc]
        try:
            super()._link_participant(identity)
        finally:
            pipeline_agent.HumanInput = HumanInput  # type: ignore[misc]

    def _synthesize_agent_reply(self) -> None:
        if self.hold_over_reply and self.reply_playing():
            self.reply_owed = True
            return
        self.reply_owed = False  # the new request carries every word not answered yet
        super()._synthesize_agent_reply()

    def _add_speech_for_playout(self, speech_handle: SpeechHandle) -> None:
        super()._add_speech_for_playout(speech_handle)
        if self.on_queued is not None:
            self.on_queued(speech_handle)

    def confirm_now(self) -> None:
        """The end-of-turn decision without the wait for a transcript (typed text needs none)."""
        super()._validate_reply_if_possible()

    def _validate_reply_if_possible(self) -> None:
        wait = self.transcript_wait(self._last_final_transcript_time) if self.transcript_wait else 0
        if wait > 0:
            # decide again when a final transcript arrives (0.12 then re-runs the decision) or
            # after ``wait``; the user speaking again cancels it, as any pending decision. (This
            # runs in the decision's own task, which ends right after: replacing it is safe.)
            self._deferred_validation._run(wait)
            return
        # With preemptive synthesis 0.12 confirms only a reply requested on a final transcript;
        # after a withdrawal with no transcript since (a cough), ask now, as 0.12 does without it.
        if self.reply_owed and self._pending_agent_reply is None and self._transcribed_text.strip():
            self._synthesize_agent_reply()
        super()._validate_reply_if_possible()


class VoicePipeline:
    """0.12's VoicePipelineAgent behind the interface the conversation policy uses.

    Built from finished providers; the policy attaches its hooks with :meth:`set_hooks` before
    :meth:`start`. The reply is requested on the final transcript (preemptive synthesis) and
    played once the end-of-turn rule confirms it.
    """

    def __init__(
        self,
        *,
        vad: vad.VAD,
        stt: stt.STT,
        llm: llm.LLM,
        tts: tts.TTS,
        fnc_ctx: llm.FunctionContext | None,
        chat_ctx: llm.ChatContext,
        allow_interruptions: bool,
        min_endpointing_delay: float,
        turn_detector: AudioTurnDetector | None = None,
        barge_in: BargeInOptions | None = None,
    ) -> None:
        """``turn_detector`` (0.12's public turn-detector argument) decides the end of the turn
        with ``min_endpointing_delay`` and its own long wait; without it, the delay rule.
        ``barge_in``: :class:`BargeIn` decides interruptions (fed by :meth:`on_vad_event`), and
        0.12's own rules are switched off; without it, 0.12's."""
        self._hooks: PipelineHooks | None = None
        self._turn_detector = turn_detector
        self._barge_in_options = barge_in
        self._barge_in: BargeIn | None = None
        self._install_task: asyncio.Task[None] | None = None
        interrupt_speech_duration, interrupt_min_words = 0.5, 0  # 0.12's defaults
        if barge_in is not None:
            # never by 0.12's VAD rule, nor by its end-of-turn validation of a reply to a
            # backchannel's transcript (it interrupts whatever plays once the words are enough)
            interrupt_speech_duration, interrupt_min_words = float("inf"), NEVER
        max_endpointing_delay = 6.0  # 0.12's default, used only with a turn detector
        if turn_detector is not None:
            min_endpointing_delay = turn_detector.options.min_delay
            max_endpointing_delay = turn_detector.options.long_wait
        self._agent = _Agent(
            vad=vad,
            stt=stt,
            llm=llm,
            tts=tts,
            chat_ctx=chat_ctx,
            fnc_ctx=fnc_ctx,
            allow_interruptions=allow_interruptions,
            min_endpointing_delay=min_endpointing_delay,
            max_endpointing_delay=max_endpointing_delay,
            turn_detector=turn_detector,
            preemptive_synthesis=True,
            interrupt_speech_duration=interrupt_speech_duration,
            interrupt_min_words=interrupt_min_words,
            # the transcript keeps the reply's text as the TTS got it
            transcription=AgentTranscriptionOptions(sentence_tokenizer=VerbatimSentenceTokenizer()),
            before_llm_cb=self._before_llm,
            before_tts_cb=self._before_tts,
        )
        self._agent.hold_over_reply = barge_in is not None

    @property
    def agent(self) -> VoicePipelineAgent:
        """The 0.12 agent itself, for the bench's recorder (which measures stock 0.12 too)."""
        return self._agent

    @property
    def turn_detector(self) -> AudioTurnDetector | None:
        """The end-of-turn detector the pipeline asks (None: 0.12's delay rule)."""
        return self._turn_detector

    def set_hooks(self, hooks: PipelineHooks) -> None:
        self._hooks = hooks
        self._agent.transcript_wait = hooks.transcript_wait

    def on(self, event: PipelineEvent, callback: Callable[..., None]) -> None:
        self._agent.on(event, callback)

    def on_reply_queued(self, callback: Callable[[Reply], None]) -> None:
        """``callback(reply)`` once a reply is confirmed (or a ``say()`` queued) for playout:
        from then on it ends by ``reply.join()``, whether it played, was interrupted or was
        withdrawn before making a sound."""
        self._agent.on_queued = callback

    def start(self, room: rtc.Room, identity: str) -> None:
        self._agent.start(room, identity)
        if self._barge_in_options is not None:
            self._install_task = asyncio.create_task(self._install_barge_in())

    def on_vad_event(self, ev: vad.VADEvent) -> None:
        """The VAD's events, for the barge-in policy (once the agent's output exists)."""
        if self._barge_in is not None:
            self._barge_in.on_vad_event(ev)

    @property
    def barge_in(self) -> BargeIn | None:
        return self._barge_in

    def _interrupt_playing(self) -> None:
        """What 0.12's own barge-in does: interrupt the speech playing (queued ones stay)."""
        speech = self._agent._playing_speech
        if speech is not None and speech.allow_interruptions and not speech.interrupted:
            speech.interrupt()

    async def _install_barge_in(self) -> None:
        # 0.12 builds its playout with the agent's audio source once the track is published;
        # the playout (and each playout handle it makes) captures through this wrapper from now
        await self.ready()
        output = self._agent._agent_output
        if output is None:
            return
        playout = output._agent_playout
        source = PausableAudioSource(playout._audio_source)
        playout._audio_source = source  # type: ignore[assignment]  # the calls it makes
        self._barge_in = BargeIn(
            source,
            agent_speaking=self._agent.reply_playing,
            interrupt=self._interrupt_playing,
            options=self._barge_in_options,
        )

    async def say(self, text: str, *, add_to_chat_ctx: bool = True) -> None:
        """Speak ``text`` after what is playing (never lost to a finishing speech)."""
        await self._settle_playout_queue()
        await self._agent.say(text, allow_interruptions=True, add_to_chat_ctx=add_to_chat_ctx)

    def interrupt(self) -> None:
        self._agent.interrupt()

    def reply_to_text(self, text: str) -> str | None:
        """Answer ``text`` the user typed as if they had just said it: it is the user's turn
        (joined to words they spoke and were not answered yet), committed to the context when
        the reply plays, as a spoken turn is. A playing reply that allows interruptions is
        interrupted, as by speech. Returns the reply's id (None: the playing reply may not be
        interrupted; the text then waits for the next turn, as a transcript would)."""
        agent = self._agent
        playing = agent._playing_speech
        if playing is not None and playing.allow_interruptions and not playing.interrupted:
            playing.interrupt()
        agent._transcribed_text = f"{agent._transcribed_text} {text}".strip()
        agent._last_speech_time = None  # no end of utterance to measure: nothing was spoken
        agent._synthesize_agent_reply()
        reply = agent._pending_agent_reply
        agent.confirm_now()
        return reply.id if reply is not None and agent._pending_agent_reply is None else None

    def playing_reply(self) -> Reply | None:
        """The reply being played: commit events fire while their reply is the playing one."""
        return self._agent._playing_speech

    def reply_pending(self) -> bool:
        """A reply was requested and awaits the end-of-turn decision; nothing is playing."""
        agent = self._agent
        return agent._pending_agent_reply is not None and agent._playing_speech is None

    def idle(self, *, ending: Reply | None = None) -> bool:
        """No reply requested, confirmed or playing (``ending``: one that is over but still
        on 0.12's queue for a moment)."""
        agent = self._agent
        return agent._pending_agent_reply is None and all(s is ending for s in agent._speech_q)

    def transcribing(self) -> bool:
        """The STT is working on a transcript it has not delivered yet (known for an STT that
        transcribes whole utterances, :class:`VADSegmentedSTT`; False for a streaming one)."""
        speech_to_text = self._agent.stt
        return isinstance(speech_to_text, VADSegmentedSTT) and speech_to_text.transcribing

    def transcribed_since(self, at: float) -> bool:
        """An STT that transcribes whole utterances finished one after ``at`` (perf_counter),
        and has nothing under way: whatever it heard since then has been delivered (an empty
        transcript is not delivered at all)."""
        speech_to_text = self._agent.stt
        if not isinstance(speech_to_text, VADSegmentedSTT) or speech_to_text.transcribing:
            return False
        done = speech_to_text.last_recognition_at
        return done is not None and done > at

    def last_transcript_at(self) -> float | None:
        """When the user's last final transcript arrived (perf_counter), if any did."""
        return self._agent._last_final_transcript_time

    def set_state(self, state: AgentState) -> None:
        """Publish ``lk.agent.state`` the way the agent does (its update task, replacing any
        pending update; skipped while the room is disconnected)."""
        self._agent._update_state(state)

    async def ready(self) -> None:
        """Until the agent's audio track is published (what its own say() waits for)."""
        await asyncio.shield(self._agent._track_published_fut)

    def withdraw_unplayed_replies(self, *, may_withdraw: Callable[[Reply], bool]) -> list[Reply]:
        """Take back the replies confirmed for playout that have not made a sound yet (call it
        only while the agent is silent), because the user spoke again: a pause the VAD took for
        the end of the turn. Returns them (interrupted: their LLM request and synthesis stop).

        0.12 would play them and leave the user to barge in (0.5 s of speech later, the reply
        already audible). Nothing of theirs was committed (0.12 commits the user's question once
        a reply played), so the user's words so far stay in the transcript, and the next
        request carries them with the new ones: it is made on the next final transcript (one
        request for the merged turn, never one more with the stale words while the user still
        speaks). If no transcript comes (a cough), the end-of-turn decision asks for the words
        there are, after 0.12's wait for a transcript."""
        agent = self._agent
        withdrawn = [
            speech
            for speech in agent._speech_q
            if speech.is_reply
            and speech.allow_interruptions
            and not speech.interrupted
            and may_withdraw(speech)
        ]
        for speech in withdrawn:
            speech.interrupt()
        if withdrawn and agent._pending_agent_reply is None and agent._transcribed_text.strip():
            agent.reply_owed = True
        return withdrawn

    async def wait_ended(self, reply: Reply) -> None:
        """Until the pipeline is done with a reply confirmed for playout: played out,
        interrupted, or dropped silent (0.12 never marks done a reply interrupted before its
        playout began; it only takes it off its queue, with no event to wait for)."""
        agent = self._agent
        done = reply.join()
        while not done.done():
            if reply.interrupted and reply not in agent._speech_q:
                return
            await asyncio.wait([done], timeout=REPLY_POLL_INTERVAL)

    def relink(self, identity: str) -> asyncio.Task[None] | None:
        """Listen to a participant that rejoined (0.12's agent links one participant at start).

        Returns the task closing the old input, for the caller to own."""
        agent = self._agent
        old = agent._human_input
        agent._human_input = None
        agent._link_participant(identity)
        return asyncio.create_task(old.aclose()) if old is not None else None

    async def aclose(self) -> None:
        if self._install_task is not None:
            await utils.aio.gracefully_cancel(self._install_task)
        await close_pipeline_agent(self._agent)
        if self._turn_detector is not None:
            await self._turn_detector.aclose()

    # --- internals --------------------------------------------------------------------------

    def _before_llm(self, agent: VoicePipelineAgent, chat_ctx: llm.ChatContext) -> llm.LLMStream:
        if self._hooks is None:
            raise RuntimeError("VoicePipeline started without hooks")
        return self._hooks.before_llm(chat_ctx)

    def _before_tts(
        self, agent: VoicePipelineAgent, source: str | AsyncIterable[str]
    ) -> str | AsyncIterable[str]:
        if self._hooks is None:
            return source
        return self._hooks.before_tts(current_sequence_id(), source)

    async def _settle_playout_queue(self) -> None:
        """Let the playing speech leave the queue if it is finishing, before ``say()``.

        0.12's say() nests a new speech into the playing one (or into the head of the queue).
        Once the playing speech has finished playing its nested speeches, but before the main
        loop pops it (a loop turn or two later), a speech nested into it is never played: say()
        right after a reply ends would be lost. That window ends without any event to wait
        for, within a few loop turns, so yield until it has passed (bounded, in case a speech
        is stuck there)."""
        agent = self._agent
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


async def close_pipeline_agent(agent: VoicePipelineAgent) -> None:
    """Close what a VoicePipelineAgent started: 0.12's own aclose() is a no-op."""
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


def current_sequence_id() -> str | None:
    """The reply id the pipeline sets around its hooks (a context variable)."""
    data = SpeechDataContextVar.get(None)
    return data.sequence_id if data is not None else None


def played_text(reply: Reply) -> str:
    """The text of a reply that reached the user's ears so far."""
    return reply.synthesis_handle.tts_forwarder.played_text if reply.initialized else ""


# --- STT / TTS / LLM streams ----------------------------------------------------------------

STTFlush = stt.RecognizeStream._FlushSentinel
"""The flush marker in an STT stream's input channel."""
TTSFlush = tts.SynthesizeStream._FlushSentinel
"""The flush marker in a TTS stream's input channel."""


def tts_conn_options(provider: tts.TTS) -> APIConnectOptions:
    """The connection options a TTS was built with (its streams' default)."""
    return provider._conn_options


def without_retries(stream: tts.SynthesizeStream) -> tts.SynthesizeStream:
    """Turn off the framework's retry of an inner stream (the caller retries per segment).

    Deepgram 0.7.4's ``TTS.stream()`` ignores ``conn_options``, and its retry re-runs ``_run``
    on an input channel already consumed: the text of the failed attempt is lost (silence or
    half a reply). The retry loop reads ``_conn_options`` when the stream's task first runs, so
    replacing it right after creation takes effect."""
    stream._conn_options = dataclasses.replace(stream._conn_options, max_retry=0)
    return stream


class VADSegmentedSTT(stt.StreamAdapter):
    """The framework's StreamAdapter (a batch STT made streaming by VAD segments), whose
    streams close the VAD stream they open (0.12.21 leaves it running: two tasks a session),
    and which says when a transcript is on its way (:attr:`transcribing`)."""

    def __init__(self, *, stt: stt.STT, vad: vad.VAD) -> None:
        super().__init__(stt=stt, vad=vad)
        self.recognitions = _Recognitions(stt)

    @property
    def transcribing(self) -> bool:
        """A segment is being recognised, or its transcript was just handed on (it reaches the
        pipeline a loop turn or two later). The transcript of an utterance comes only after it
        ended, and takes time in proportion to it."""
        done = self.recognitions.finished_at
        recent = done is not None and time.perf_counter() - done < DELIVERY_SLACK
        return self.recognitions.running > 0 or recent

    @property
    def last_recognition_at(self) -> float | None:
        """When the last recognition ended (perf_counter)."""
        return self.recognitions.finished_at

    def stream(
        self,
        *,
        language: str | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        # the stream only calls ``recognize`` on the STT it wraps: count those calls
        wrapped = cast(stt.STT, self.recognitions)
        return _ClosingAdapterStream(
            self, vad=self._vad, wrapped_stt=wrapped, language=language, conn_options=conn_options
        )


DELIVERY_SLACK = 0.2
"""Seconds a finished recognition counts as still under way (its result is being delivered)."""


class _Recognitions:
    """A batch STT as StreamAdapterWrapper uses it (``recognize`` only), counting the calls
    under way."""

    def __init__(self, inner: stt.STT) -> None:
        self.inner = inner
        self.running = 0
        self.finished_at: float | None = None

    async def recognize(self, **kwargs: Any) -> stt.SpeechEvent:
        self.running += 1
        try:
            return await self.inner.recognize(**kwargs)
        finally:
            self.running -= 1
            self.finished_at = time.perf_counter()


class _ClosingAdapterStream(StreamAdapterWrapper):
    async def aclose(self) -> None:
        await super().aclose()
        await self._vad_stream.aclose()


def fallback_recovery_tasks(adapter: llm.FallbackAdapter) -> list[asyncio.Task[None]]:
    """The background probes of failed LLMs that are still running."""
    return [
        s.recovering_task
        for s in adapter._status
        if s.recovering_task is not None and not s.recovering_task.done()
    ]


# --- worker and rtc -------------------------------------------------------------------------


def cpu_load(worker: Worker) -> float:
    """The framework's own load figure (CPU over a short window), in [0, 1]."""
    return float(_DefaultLoadCalc.get_load(worker))


def worker_draining(worker: Worker) -> bool:
    """The worker is draining (SIGTERM in ``start``): it must take no new job."""
    return bool(worker._draining)


def health_app(worker: Worker) -> web.Application:
    """The aiohttp application serving the worker's health port (routes may be added until the
    worker runs)."""
    app: web.Application = worker._http_server._app
    return app


def worker_connected(worker: Worker) -> bool:
    """The worker holds a registered connection to the server (false while (re)connecting)."""
    return not worker._connecting


JobFailure = Callable[[str], "str | None"]


def report_job_failures(
    worker: Worker, failure_of: JobFailure, on_finished: Callable[[str, bool], None]
) -> None:
    """Report finished jobs as ``JS_FAILED`` with ``failure_of(job_id)`` (the error, or None if
    the job did not fail), or as 0.12 does (its process's exit code) when there is none;
    ``on_finished(job_id, failed)`` is called once per finished job."""

    async def update_job_status(proc: JobExecutor) -> None:
        info = proc.running_job
        if info is None:
            return
        status = {
            JobExecutorStatus.FAILED: agent_proto.JobStatus.JS_FAILED,
            JobExecutorStatus.SUCCESS: agent_proto.JobStatus.JS_SUCCESS,
        }.get(proc.status, agent_proto.JobStatus.JS_RUNNING)
        error = ""
        if status != agent_proto.JobStatus.JS_RUNNING:
            failure = failure_of(info.job.id)
            if failure is not None:
                status, error = agent_proto.JobStatus.JS_FAILED, failure
            elif status == agent_proto.JobStatus.JS_FAILED:
                error = "job process exited with an error"
            on_finished(info.job.id, status == agent_proto.JobStatus.JS_FAILED)
        update = agent_proto.UpdateJobStatus(job_id=info.job.id, status=status, error=error)
        with contextlib.suppress(utils.aio.ChanClosed):
            await worker._queue_msg(agent_proto.WorkerMessage(update_job=update))

    worker._update_job_status = update_job_status  # type: ignore[method-assign]


async def end_running_jobs(worker: Worker) -> int:
    """End every running job through its shutdown path (the job process gets a shutdown
    request: its session closes and flushes its metrics) and wait until they exited; their
    final status goes to the server on the still-open connection. Returns how many there were."""
    running = [p for p in worker._proc_pool.processes if p.running_job is not None]
    await asyncio.gather(*(p.aclose() for p in running), return_exceptions=True)
    return len(running)


def close_before_disconnect(room: rtc.Room, close: Callable[[], Awaitable[None]]) -> None:
    """Run ``close`` whenever the job's room is about to be disconnected.

    0.12 ends a job it was told to end (the drain timeout expired, the server terminated the
    job) by disconnecting the room first and running the shutdown callbacks after: a session
    closed from a callback could no longer send its last metrics. Every disconnect of this room
    now closes the session first (``close`` must be idempotent)."""
    disconnect = room.disconnect

    async def close_then_disconnect(**kwargs: Any) -> None:
        try:
            await close()
        finally:
            await disconnect(**kwargs)

    room.disconnect = close_then_disconnect  # type: ignore[method-assign]


def set_track_sid(track: rtc.Track, sid: str) -> None:
    """Give a real track the sid of its publication, as ``LocalParticipant.publish_track`` does
    (tracks created without a room report ``TR_unknown``; transcriptions carry ``track.sid``)."""
    track._info.sid = sid


def end_track(track: rtc.Track) -> None:
    """End a real track: every AudioStream/VideoStream on it gets end-of-stream, as when a remote
    participant unpublishes or leaves. Releasing the track's FFI handle does that."""
    track._ffi_handle.dispose()


__all__ = [
    "PRIVATE_MEMBERS",
    "MicrophoneInput",
    "PipelineEvent",
    "PipelineHooks",
    "Reply",
    "STTFlush",
    "TTSFlush",
    "VADSegmentedSTT",
    "VoicePipeline",
    "close_before_disconnect",
    "close_pipeline_agent",
    "cpu_load",
    "current_sequence_id",
    "end_running_jobs",
    "end_track",
    "fallback_recovery_tasks",
    "health_app",
    "played_text",
    "report_job_failures",
    "set_track_sid",
    "tts_conn_options",
    "without_retries",
    "worker_connected",
]
