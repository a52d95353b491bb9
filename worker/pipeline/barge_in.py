"""Barge-in and backchannels: the agent falls silent as soon as the user speaks over it, and goes
on where it stopped when what they said was only a short sound ("mm-hm", a cough, a laugh).

0.12 interrupts a reply after ``interrupt_speech_duration`` (0.5 s) of user speech and never
resumes one: a short sound the VAD flags either does nothing audible for half a second or loses
the reply. Here the reply's audio is held back after ``pause_after`` of speech (the frames queued
in the audio source but not yet played are taken back, so the agent is silent at once), and:
- the user's speech reaches ``interrupt_after``: a barge-in, the reply is interrupted (0.12
  then commits the words played, as it does); the source stays paused until 0.12 has ended the
  reply's playout, which may hand over a frame or two meanwhile;
- the user stops before that (the VAD's END_OF_SPEECH): a backchannel, the reply goes on from
  the first frame not played. Not sooner: a short word then a pause is also how a barge-in
  starts ("wait, ..."), and the agent must not be heard again in that pause.
0.12's own interruption rules are switched off meanwhile (see ``VoicePipeline``): its VAD rule
would interrupt after 0.5 s of speech, and its end-of-turn validation would drop the reply for
one to "Mm-hmm." once the backchannel's transcript arrived.

``speech_duration`` must count speech only (``plugins.livekit_vad`` does; Silero's counts its
trailing silence too, so with Silero every flagged sound becomes a barge-in).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import vad

logger = logging.getLogger("worker.pipeline.barge_in")


@dataclass(frozen=True)
class BargeInOptions:
    pause_after: float = 0.1
    """Seconds of user speech over the agent before its audio is held back."""
    interrupt_after: float = 0.4
    """Seconds of user speech that make it a barge-in rather than a backchannel."""


class PausableAudioSource:
    """The agent's ``rtc.AudioSource`` as 0.12's playout uses it, with :meth:`pause` and
    :meth:`resume`.

    While paused, ``capture_frame`` waits. Pausing clears the source's queue (up to a second
    of audio is queued ahead of what the user hears) and keeps the frames that were queued but
    not played; resuming plays them first. ``queued_duration`` counts them, so 0.12's account
    of what was played stays right."""

    def __init__(self, inner: rtc.AudioSource) -> None:
        self._inner = inner
        self._running = asyncio.Event()
        self._running.set()
        self._recent: deque[rtc.AudioFrame] = deque()  # pushed frames, newest last
        self._recent_seconds = 0.0
        self._held: list[rtc.AudioFrame] = []  # taken back at the pause, to replay first
        self.pauses = 0
        self.resumes = 0

    @property
    def sample_rate(self) -> int:
        return self._inner.sample_rate

    @property
    def num_channels(self) -> int:
        return self._inner.num_channels

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    @property
    def queued_duration(self) -> float:
        return self._inner.queued_duration + sum(_seconds(f) for f in self._held)

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await self._running.wait()
        await self._replay_held()
        self._remember(frame)
        await self._inner.capture_frame(frame)

    async def wait_for_playout(self) -> None:
        await self._running.wait()
        await self._replay_held()
        await self._inner.wait_for_playout()

    def clear_queue(self) -> None:
        """0.12 ends a playout (interrupted or failed): nothing of it plays any more."""
        self.discard()
        self._running.set()

    def discard(self) -> None:
        """Drop what is queued and held, and stay paused: the playout of a reply being
        interrupted may still hand over frames until 0.12 ends it (with :meth:`clear_queue`)."""
        self._inner.clear_queue()
        self._held = []
        self._recent.clear()
        self._recent_seconds = 0.0
        if not self.paused:
            self._running.clear()
            self.pauses += 1

    def pause(self) -> None:
        if self.paused:
            return
        queued = self._inner.queued_duration
        self._inner.clear_queue()
        held: list[rtc.AudioFrame] = []
        while self._recent and queued > 1e-6:
            frame = self._recent.pop()
            held.append(frame)
            queued -= _seconds(frame)
        self._held = held[::-1] + self._held
        self._recent.clear()
        self._recent_seconds = 0.0
        self._running.clear()
        self.pauses += 1

    def resume(self) -> None:
        if not self.paused:
            return
        self._running.set()
        self.resumes += 1

    async def _replay_held(self) -> None:
        while self._held and not self.paused:
            frame = self._held.pop(0)
            self._remember(frame)
            await self._inner.capture_frame(frame)

    def _remember(self, frame: rtc.AudioFrame) -> None:
        # enough to take back whatever the source can have queued
        self._recent.append(frame)
        self._recent_seconds += _seconds(frame)
        while self._recent and self._recent_seconds - _seconds(self._recent[0]) > 2.0:
            self._recent_seconds -= _seconds(self._recent.popleft())


class BargeIn:
    """The policy, fed the VAD's events; ``agent_speaking`` says whether a speech is playing
    and ``interrupt`` interrupts it."""

    def __init__(
        self,
        source: PausableAudioSource,
        *,
        agent_speaking: Callable[[], bool],
        interrupt: Callable[[], None],
        options: BargeInOptions | None = None,
    ) -> None:
        self._source = source
        self._agent_speaking = agent_speaking
        self._interrupt = interrupt
        self.options = options or BargeInOptions()
        self.barge_ins = 0
        self.backchannels = 0
        self.paused_at: float | None = None
        """When the agent's audio was last held back (``time.perf_counter()``)."""
        self.interrupted_at: float | None = None
        """When a reply was last interrupted by a barge-in."""
        self._cut = False  # a barge-in interrupted the reply, the user still speaks

    def on_vad_event(self, ev: vad.VADEvent) -> None:
        source = self._source
        if ev.type == vad.VADEventType.END_OF_SPEECH:
            self._go_on()
            return
        if ev.type != vad.VADEventType.INFERENCE_DONE or not ev.speaking:
            return
        if not self._agent_speaking():
            # nothing of a reply left to hold (an interrupted one's playout has ended by now:
            # 0.12 ends it within a few loop turns of the interruption, a VAD window is 32 ms)
            self._cut = False
            source.resume()
            return
        if ev.speech_duration >= self.options.interrupt_after:
            self.barge_ins += 1
            self.interrupted_at = time.perf_counter()
            self._cut = True
            self._interrupt()
            source.discard()
        elif ev.speech_duration >= self.options.pause_after and not source.paused:
            self.paused_at = time.perf_counter()
            source.pause()

    def _go_on(self) -> None:
        if self._source.paused and not self._cut:
            self.backchannels += 1
            logger.info("short sound over the agent: its reply goes on")
        self._cut = False
        self._source.resume()


def _seconds(frame: rtc.AudioFrame) -> float:
    return frame.samples_per_channel / frame.sample_rate
