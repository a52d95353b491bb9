"""Per-reply summary: joins one agent reply's measurements into one ``turn`` payload.

The session wiring feeds :class:`TurnTracker` explicit observations; the tracker never looks
at the pipeline itself. Which event feeds which call (VoicePipelineAgent 0.12):

==========================================  =================================================
event in the session                        call
==========================================  =================================================
VAD ``END_OF_SPEECH`` of the user's stream  ``user_stopped_speaking(time.perf_counter() -
                                            ev.silence_duration)``: the real end of speech,
                                            not the moment the VAD decided.
agent ``metrics_collected(m)``              ``metrics(m)``: EOU (binds the end of speech to
                                            the reply), LLM (first round's ttft), TTS (the
                                            framework's ttfb, fallback only).
``before_tts_cb``: first text chunk of      ``first_text(sequence_id, time.perf_counter())``;
the reply's text stream                     the id is the pipeline's reply id, set
                                            around its hooks.
a tool round of the reply                   ``tool_round(sequence_id, seconds)``, or the
                                            totals in ``reply_finished``
first frame of a reply handed to the        ``first_audio(sequence_id, time.perf_counter())``
room's ``rtc.AudioSource``                  (the playing reply's id); the agent emits
(``agent_started_speaking`` is emitted      ``agent_started_speaking`` synchronously just
right before that ``capture_frame``)        before it, so calling from that handler is exact.
the reply ends (played out, interrupted or  ``reply_finished(sequence_id or None,
cancelled)                                  interrupted)`` -> emits the ``turn`` payload.
==========================================  =================================================

All ``at`` values are ``time.perf_counter()`` moments. ``e2e_latency`` is
``first_audio.at - user end of speech``: two measured moments, never a sum of components.

``tts_ttfb`` in the payload is ``first_audio.at - first_text.at`` (from the first reply text
handed to TTS to the first audio frame handed to the room; it includes sentence buffering
and the TTS round trip) and ``tts_ttfb_source`` is ``"first_text"``. Without a
``first_text`` observation it is the framework's ``TTSMetrics.ttfb`` of the reply's first
TTS segment, ``tts_ttfb_source: "framework"``; that one counts from the TTS stream's start,
so it includes the LLM's generation time.

``outcome`` says how the turn ended for the user: ``answered``, ``interrupted`` (barge-in),
``withdrawn`` (confirmed, then taken back before its first sound because the user spoke again:
the next reply answers the merged turn),
``apologised`` (the LLM failed for good before saying anything: the apology was spoken) or
``cut_short`` (the LLM failed after part of the answer was spoken). ``error`` names the
providers that failed for good during the reply (``"llm"``, ``"tts"``: the rest of the reply
reached the room as a transcript only), or null; recovered failures show only in the
components' own payloads.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from livekit.agents.metrics import AgentMetrics, LLMMetrics, PipelineEOUMetrics, TTSMetrics

from worker.metrics.payloads import Payload, TurnCounts, envelope, seconds
from worker.providers.errors import ProviderError

logger = logging.getLogger("worker.metrics.turns")

MAX_OPEN_REPLIES = 16


@dataclass
class _Reply:
    sequence_id: str
    user_end: float | None = None
    eou_delay: float | None = None
    transcription_delay: float | None = None
    validated: bool = False
    llm_ttft: float | None = None
    llm_rounds: int = 0
    framework_tts_ttfb: float | None = None
    tool_time: float = 0.0
    tool_rounds: int = 0
    first_text: float | None = None
    first_audio: float | None = None
    errors: set[str] = field(default_factory=set)


class TurnTracker:
    """Builds one ``turn`` payload per agent reply from explicit observations.

    ``emit`` receives each ``turn`` payload (normally ``MetricsPublisher.publish``). Set
    ``include_text`` to carry the transcript texts passed to :meth:`reply_finished`; by
    default no transcript text leaves the process.
    """

    def __init__(
        self,
        emit: Callable[[Payload], None],
        *,
        include_text: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._emit = emit
        self._include_text = include_text
        self._clock = clock
        self._open: dict[str, _Reply] = {}
        self._finished: dict[str, None] = {}  # insertion-ordered set, bounded
        self._user_end: float | None = None
        self._turns = 0
        self._interrupted = 0
        self._apologised = 0
        self._with_errors = 0

    @property
    def counts(self) -> TurnCounts:
        return TurnCounts(
            turns=self._turns,
            interrupted=self._interrupted,
            apologised=self._apologised,
            with_errors=self._with_errors,
        )

    # --- observations ---------------------------------------------------------------------

    def user_stopped_speaking(self, at: float) -> None:
        """The user's real end of speech (perf_counter). The next EOU metric claims it."""
        self._user_end = at

    def metrics(self, m: AgentMetrics) -> None:
        """One ``metrics_collected`` metric; those without a ``sequence_id`` are ignored."""
        sequence_id = getattr(m, "sequence_id", None)
        if not isinstance(sequence_id, str) or not sequence_id:
            return
        reply = self._reply(sequence_id)
        if reply is None:
            return
        if isinstance(m, PipelineEOUMetrics):
            reply.validated = True
            reply.eou_delay = m.end_of_utterance_delay
            reply.transcription_delay = m.transcription_delay
            if reply.user_end is None and self._user_end is not None:
                reply.user_end, self._user_end = self._user_end, None
        elif isinstance(m, LLMMetrics):
            reply.llm_rounds += 1
            if reply.llm_ttft is None and m.ttft >= 0:
                reply.llm_ttft = m.ttft
        elif isinstance(m, TTSMetrics):
            if isinstance(m.error, ProviderError) and not m.error.recovered:
                reply.errors.add("tts")  # the rest of the reply went out as text only
            elif m.error is None and reply.framework_tts_ttfb is None and m.ttfb >= 0:
                reply.framework_tts_ttfb = m.ttfb

    def first_text(self, sequence_id: str, at: float) -> None:
        """The first text of the reply was handed to TTS (only the first call counts)."""
        reply = self._reply(sequence_id)
        if reply is not None and reply.first_text is None:
            reply.first_text = at

    def tool_round(self, sequence_id: str, seconds: float) -> None:
        """One round of tool calls for the reply took ``seconds`` (wall time of the round)."""
        reply = self._reply(sequence_id)
        if reply is not None:
            reply.tool_time += max(0.0, seconds)
            reply.tool_rounds += 1

    def first_audio(self, sequence_id: str | None, at: float) -> None:
        """The reply's first audio frame was handed to the room's audio source.

        ``sequence_id=None`` means the reply now starting to play: the oldest open reply
        without audio yet, preferring validated ones (EOU seen) over replies that were
        only prepared (preemptive synthesis). Only the first call per reply counts.
        """
        if sequence_id is not None:
            reply = self._reply(sequence_id)
        else:
            waiting = [r for r in self._open.values() if r.first_audio is None]
            reply = next((r for r in waiting if r.validated), waiting[0] if waiting else None)
            if reply is None:
                logger.debug("first audio with no open reply, ignored")
                return
        if reply is None or reply.first_audio is not None:
            return
        reply.first_audio = at
        # replies prepared before this one that never played and were never validated
        # were abandoned (preemptive synthesis); forget them so they cannot claim audio
        for stale in list(self._open.values()):
            if stale is reply:
                break
            if stale.first_audio is None and not stale.validated:
                del self._open[stale.sequence_id]

    def reply_finished(
        self,
        sequence_id: str | None,
        interrupted: bool,
        *,
        user_text: str | None = None,
        agent_text: str | None = None,
        tool_time: float = 0.0,
        tool_rounds: int = 0,
        llm_failed: bool = False,
        apologised: bool = False,
        withdrawn: bool = False,
    ) -> Payload | None:
        """The reply is over; emits (and returns) its ``turn`` payload, once per reply.

        ``sequence_id=None`` means the reply that most recently started playing. Metrics
        arriving for the reply after this call are ignored by the tracker. ``llm_failed``: the
        LLM failed for good during this reply; ``apologised``: before saying anything, so the
        apology was spoken instead. ``tool_time`` / ``tool_rounds``: the reply's tool rounds not
        reported by :meth:`tool_round` (their total wall time and count). ``withdrawn``: the
        reply was taken back before it made a sound (the user spoke again).
        """
        reply: _Reply | None
        if sequence_id is None:
            playing = [r for r in self._open.values() if r.first_audio is not None]
            reply = max(playing, key=lambda r: r.first_audio or 0.0, default=None)
        else:
            reply = self._open.get(sequence_id)
        if reply is None:
            return None
        del self._open[reply.sequence_id]
        self._remember_finished(reply.sequence_id)
        reply.tool_time += max(0.0, tool_time)
        reply.tool_rounds += tool_rounds
        if llm_failed:
            reply.errors.add("llm")
        outcome = (
            "withdrawn"
            if withdrawn
            else "interrupted"
            if interrupted
            else "apologised"
            if apologised
            else "cut_short"
            if llm_failed
            else "answered"
        )
        payload = self._payload(reply, interrupted, outcome)
        if self._include_text:
            payload["user_text"] = user_text
            payload["agent_text"] = agent_text
        self._turns += 1
        self._interrupted += int(interrupted)
        self._apologised += int(outcome == "apologised")
        self._with_errors += int(bool(reply.errors))
        self._emit(payload)
        return payload

    # --- internals ------------------------------------------------------------------------

    def _reply(self, sequence_id: str) -> _Reply | None:
        if sequence_id in self._finished:
            return None
        reply = self._open.get(sequence_id)
        if reply is None:
            reply = self._open[sequence_id] = _Reply(sequence_id)
            if len(self._open) > MAX_OPEN_REPLIES:
                oldest = next(iter(self._open))
                logger.debug("too many open replies, forgetting one", extra={"sequence_id": oldest})
                del self._open[oldest]
        return reply

    def _remember_finished(self, sequence_id: str) -> None:
        self._finished[sequence_id] = None
        if len(self._finished) > 4 * MAX_OPEN_REPLIES:
            del self._finished[next(iter(self._finished))]

    def _payload(self, r: _Reply, interrupted: bool, outcome: str) -> Payload:
        e2e = None
        if r.user_end is not None and r.first_audio is not None:
            e2e = r.first_audio - r.user_end
        if r.first_text is not None and r.first_audio is not None:
            tts_ttfb, source = r.first_audio - r.first_text, "first_text"
        elif r.framework_tts_ttfb is not None:
            tts_ttfb, source = r.framework_tts_ttfb, "framework"
        else:
            tts_ttfb, source = None, None
        p = envelope("turn", self._clock())
        p["sequence_id"] = r.sequence_id
        p["e2e_latency"] = seconds(e2e)
        p["end_of_utterance_delay"] = seconds(r.eou_delay)
        p["transcription_delay"] = seconds(r.transcription_delay)
        p["llm_ttft"] = seconds(r.llm_ttft)
        p["tts_ttfb"] = seconds(tts_ttfb)
        p["tts_ttfb_source"] = source
        p["tool_time"] = seconds(r.tool_time)
        p["tool_rounds"] = r.tool_rounds
        p["interrupted"] = interrupted
        p["outcome"] = outcome
        p["error"] = ",".join(sorted(r.errors)) or None
        return p
