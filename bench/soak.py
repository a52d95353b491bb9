"""Soak: many turns through whole sessions, with a fault of some kind injected into most of them.

``python -m bench.soak [--turns 1000] [--sessions 8] [--seed 7] [--kinds KIND ...]
[--warmup TURNS] [--tracemalloc] [--json PATH]``

What runs is what a job runs: ``worker.session.build_session`` in the in-process room, real
Silero VAD on espeak-ng speech pushed into the participant's microphone in real time, the real
Deepgram plugin (listen and speak) and the project's LLM plugin against the loopback servers
(each session has its own, so faults stay per session), the project's tools loaded through
AGENT_TOOLS. Every turn is a spoken utterance, answered (or apologised for, or interrupted).

Fast-forward. Real-time audio bounds one session to a turn every ~2 s, so:
- sessions run side by side in one event loop (``--sessions``), each its own room, servers,
  pipeline and fault plan;
- turns are short: a 0.5 s utterance, VAD silence 0.25 s, endpointing 0.2 s, providers
  answering at once, replies of a few words (tone voice at 0.02 s per character);
- retries are fast (LLM: 0.1 s between attempts, 3 s stall timeout; TTS: 0.2 s; STT: 0.5 s).
Only waits shrink; no code path is skipped.

Faults (one per turn, drawn from a fixed seed; ``--round-robin`` cycles through all kinds):
LLM 5xx / 429 / connection reset / stalled stream before the first token (retried), dropped
after the first tokens (cut short), down for every attempt (apology); TTS refused once,
closed mid-audio, down (text-only reply); STT socket dropped mid-utterance, connections refused
(replaced with backoff); tools raising, hanging past their timeout, returning a megabyte,
called with hostile arguments or an unknown name; odd camera frames, a microphone republished
at another rate/layout with empty frames, the camera unpublished and republished, hostile data
messages; a barge-in. Each kind has an expected outcome (``answered``, ``cut_short``,
``apologised``, ``interrupted``) and error (``llm``/``tts`` or none), checked against the
session's ``turn`` metrics messages: a turn without one is lost.

Memory, sampled every 1/50 of the run: RSS; the Python heap (allocated blocks, objects the
collector tracks); malloc's bytes in use and bytes freed but kept in its arenas (glibc's
mallinfo2: RSS can rise with the second while nothing is in use, fragmentation, not a leak);
tracemalloc's total with ``--tracemalloc``. Growth = least-squares slope per 100 turns over
the samples after the warm-up. From the warm-up to the end the report also diffs the live
objects by type and, with ``--tracemalloc``, the allocations by traceback (top 15). Tracing
slows every allocation: with more than a session or two the real-time audio falls behind and
turns are lost, so trace with ``--sessions 1`` or ``2`` and a few hundred turns.

Checked at the end: no turn lost, every outcome as expected, no error the event loop saw (an
unretrieved exception, a failing callback), no task, stream or provider connection left after
the sessions closed, the fake provider keys in no log line or data message, and each
session's context within the context policy's bound. The test doubles' records (data messages,
events, received audio, requests) are dropped after every turn, so what grows is the agent's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import logging
import random
import secrets
import sys
import time
import tracemalloc
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import aiohttp
import numpy as np
import psutil  # type: ignore[import-untyped]  # no stubs installed
from livekit import rtc
from livekit.agents import APIConnectOptions, llm, stt, tts
from livekit.agents import vad as agents_vad
from livekit.agents.cli.log import JsonFormatter
from livekit.plugins import deepgram

from plugins.silero_vad import VAD as SileroVAD
from tests.conftest import CAMERA_SIZE, Harness, _known_plugin_error, camera_frame
from tests.loopback.deepgram_server import DeepgramLoopback, ListenOptions, SpeakOptions
from tests.loopback.openai_server import Fault, OpenAIServer, Reply, ToolCall
from tests.speech import speak
from worker.config import load_settings
from worker.local_room import LocalRoom, as_rtc_room
from worker.pipeline.context import ContextLimits
from worker.pipeline.conversation import ConversationOptions
from worker.providers.reconnecting_stt import ReconnectingSTT
from worker.providers.segmenting_tts import SegmentingTTS
from worker.room_io.data_messages import CONTROL_TOPIC
from worker.session import build_session
from worker.tools.runner import ToolRunningLLMOptions, tool_options

logger = logging.getLogger("bench.soak")

APOLOGY = "Sorry, please say that again."
UTTERANCE = "tell me more"
LONG_REPLY = " ".join(
    [
        "Here is a longer answer that takes a few seconds to speak.",
        "It goes on with a second sentence about the weather.",
        "And a third one, so that there is time to interrupt it.",
    ]
)
TWO_SENTENCES = "The first sentence is long enough to be spoken alone. The second one follows."
CONTEXT = ContextLimits(max_turns=6)
OPTIONS = ConversationOptions(
    instructions="Be brief.",
    context=CONTEXT,
    min_endpointing_delay=0.2,
    tools=ToolRunningLLMOptions(
        default_timeout=2.0,
        apology=APOLOGY,
        # 3 s: a stalled stream is noticed soon, and a loaded machine running many sessions
        # in one event loop does not time out healthy requests
        llm_conn_options=APIConnectOptions(max_retry=3, retry_interval=0.1, timeout=3.0),
    ),
)
MIC_LAYOUTS = [(8000, 1), (16000, 1), (16000, 2), (24000, 1), (44100, 2), (48000, 1), (48000, 2)]
VIDEO_FRAMES = [  # what the in-process room can carry (see tests/test_faults_media.py)
    (rtc.VideoBufferType.RGBA, 641, 479),
    (rtc.VideoBufferType.BGRA, 1280, 720),
    (rtc.VideoBufferType.I420, 641, 479),
    (rtc.VideoBufferType.I444, 320, 240),
    (rtc.VideoBufferType.RGB24, 641, 479),
    (rtc.VideoBufferType.I420, 3840, 2160),
]
HOSTILE_ARGUMENTS = [
    '{"city": ' + "[" * 3000 + "]" * 3000 + "}",
    '{"city": "' + "A" * 60_000 + '"}',
    '{"city": 5}',
    '{"city": "Rome", "days": true}',
    '{"city": "Rome", "days": 9}',
    '{"city": {"$ne": null}}',
    "null",
    '{"city": "Par',
]
HOSTILE_DATA: list[bytes | str] = [
    "[" * 1000 + "]" * 1000,
    b"\xff\xfe\x00",
    "x" * 50_000,
    '{"type": "say", "text": NaN}',
    json.dumps({"type": "exec", "code": "import os"}),
    json.dumps({"type": "say", "text": [[[[[[[[[["deep"]]]]]]]]]]}),
]


class SoakTools(llm.FunctionContext):
    """The tools of every soak session (AGENT_TOOLS=bench.soak:SoakTools)."""

    @llm.ai_callable()
    async def weather(
        self,
        city: Annotated[str, llm.TypeInfo(description="city")],
        days: Annotated[int, llm.TypeInfo(description="days", choices=[1, 2, 3])] = 1,
    ) -> str:
        """The weather forecast for a city."""
        return f"{city}: sunny for {days} days"

    @llm.ai_callable()
    async def broken(self) -> str:
        """A tool whose backend fails."""
        raise RuntimeError("backend unavailable")

    @llm.ai_callable()
    @tool_options(timeout=0.3)
    async def hang(self) -> str:
        """A tool that never answers in time."""
        await asyncio.sleep(30)
        return "never"

    @llm.ai_callable()
    async def dump(self) -> str:
        """Returns a megabyte."""
        return "x" * 1_000_000


@dataclass(frozen=True)
class Expect:
    outcome: str = "answered"
    error: str | None = None


KINDS: dict[str, Expect] = {
    "clean": Expect(),
    "llm_5xx": Expect(),
    "llm_429": Expect(),
    "llm_reset": Expect(),
    "llm_stall": Expect(),
    "llm_cut": Expect("cut_short", "llm"),
    "llm_down": Expect("apologised", "llm"),
    "tts_refused": Expect(),
    "tts_cut": Expect(),
    "tts_down": Expect("answered", "tts"),
    "stt_drop": Expect(),
    "stt_refused": Expect(),
    "tool_error": Expect(),
    "tool_hang": Expect(),
    "tool_huge": Expect(),
    "tool_hostile": Expect(),
    "tool_unknown": Expect(),
    "media_video": Expect(),
    "media_mic": Expect(),
    "media_camera": Expect(),
    "data_hostile": Expect(),
    "barge_in": Expect("interrupted"),
}


@dataclass
class TurnRecord:
    session: int
    index: int
    kind: str
    outcome: str | None = None
    error: str | None = None
    lost: str | None = None
    """Why the turn has no turn metric (None: it was accounted for)."""
    unexpected: str | None = None
    """The turn metric says something else than the fault predicts (None: as predicted)."""


@dataclass
class SoakOptions:
    turns: int = 1000
    sessions: int = 8
    seed: int = 7
    round_robin: bool = False
    kinds: tuple[str, ...] = ()
    """Only these fault kinds (empty: all of KINDS)."""
    turn_timeout: float = 45.0
    warmup: int | None = None
    """Turns before growth is measured (None: a quarter of the turns, at least 100)."""
    tracemalloc: bool = False
    """Trace Python allocations: the heap's growth after the warm-up, by where it was made."""

    def warmup_turns(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return min(self.turns // 2, max(100, self.turns // 4))

    def sample_every(self) -> int:
        return max(1, self.turns // 50)


@dataclass(frozen=True)
class MemorySample:
    """The process's memory after ``turns`` turns. RSS alone is noisy (glibc's arenas keep
    freed memory and hand it back when they please), so the Python heap is sampled too."""

    turns: int
    rss_mb: float
    heap_blocks_k: float
    """Thousands of memory blocks Python has allocated (sys.getallocatedblocks)."""
    gc_objects_k: float
    """Thousands of objects the garbage collector tracks (containers, instances)."""
    tasks: int
    malloc_used_mb: float | None
    """Bytes malloc handed out and not yet freed, in every arena (Python, the FFI, ONNX)."""
    malloc_free_mb: float | None
    """Bytes freed but kept by malloc in its arenas (fragmentation: RSS that is not in use)."""
    traced_mb: float | None = None
    """Python allocations traced by tracemalloc (None: not tracing)."""


def slope_per_100(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of ``(turns, value)`` points, per 100 turns (None: too few)."""
    if len(points) < 3:
        return None
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    if np.ptp(x) == 0:
        return None
    return round(float(np.polyfit(x, y, 1)[0]) * 100, 3)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's mallinfo2 (2.33+), None elsewhere."""
    try:
        function = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


def malloc_mb() -> tuple[float, float] | tuple[None, None]:
    """(in use, free) in malloc's arenas and mmapped chunks, in MB."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None, None
    info = mallinfo2()
    used = (info.uordblks + info.hblkhd) / 2**20
    return round(used, 1), round(info.fordblks / 2**20, 1)


def sample_memory(turns: int, process: psutil.Process) -> MemorySample:
    used, free = malloc_mb()
    traced = tracemalloc.get_traced_memory()[0] / 2**20 if tracemalloc.is_tracing() else None
    return MemorySample(
        turns=turns,
        rss_mb=round(process.memory_info().rss / 2**20, 1),
        heap_blocks_k=round(sys.getallocatedblocks() / 1000, 1),
        gc_objects_k=round(len(gc.get_objects()) / 1000, 1),
        tasks=len(asyncio.all_tasks()),
        malloc_used_mb=used,
        malloc_free_mb=free,
        traced_mb=None if traced is None else round(traced, 2),
    )


@dataclass
class HeapProbe:
    """What the Python heap holds at one moment: a tracemalloc snapshot (when tracing) and
    the live objects counted by type, to diff the end of the run against the warm-up."""

    turns: int
    types: Counter[str]
    snapshot: tracemalloc.Snapshot | None

    @classmethod
    def take(cls, turns: int) -> HeapProbe:
        gc.collect()
        types = Counter(type(o).__qualname__ for o in gc.get_objects())
        snapshot = None
        if tracemalloc.is_tracing():
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [
                    tracemalloc.Filter(False, tracemalloc.__file__),
                    tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
                ]
            )
        return cls(turns, types, snapshot)

    def growth(self, end: HeapProbe, top: int = 15) -> dict[str, Any]:
        types = [
            {"type": name, "count_diff": n} for name, n in (end.types - self.types).most_common(top)
        ]
        found: dict[str, Any] = {"from_turn": self.turns, "to_turn": end.turns, "types": types}
        if self.snapshot is not None and end.snapshot is not None:
            stats = end.snapshot.compare_to(self.snapshot, "traceback")
            found["traced_mb_diff"] = round(sum(s.size_diff for s in stats) / 2**20, 2)
            found["allocations"] = [
                {
                    "size_diff_kb": round(s.size_diff / 1024, 1),
                    "count_diff": s.count_diff,
                    "traceback": [  # where it was allocated first, then its callers
                        f"{short_path(f.filename)}:{f.lineno}" for f in reversed(s.traceback)
                    ],
                }
                for s in sorted(stats, key=lambda s: s.size_diff, reverse=True)[:top]
            ]
        return found


def short_path(filename: str) -> str:
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    cwd = str(Path.cwd()) + "/"
    return filename.removeprefix(cwd)


@dataclass
class SoakReport:
    options: dict[str, Any]
    seconds: float = 0.0
    turns: list[TurnRecord] = field(default_factory=list)
    bad_inputs: Counter[str] = field(default_factory=Counter)
    loop_errors: list[str] = field(default_factory=list)
    leaked_keys: int = 0
    memory: list[MemorySample] = field(default_factory=list)
    heap_growth: dict[str, Any] = field(default_factory=dict)
    """What the Python heap gained from the warm-up to the end (HeapProbe.growth)."""
    max_context_messages: int = 0
    tasks_before: int = 0
    tasks_max: int = 0
    tasks_left: list[str] = field(default_factory=list)
    streams_left: list[str] = field(default_factory=list)
    connections_left: int = 0

    @property
    def lost(self) -> list[TurnRecord]:
        return [t for t in self.turns if t.lost is not None]

    @property
    def unexpected(self) -> list[TurnRecord]:
        return [t for t in self.turns if t.lost is None and t.unexpected is not None]

    def fault_table(self) -> dict[str, dict[str, int]]:
        table: dict[str, dict[str, int]] = {}
        for t in self.turns:
            row = table.setdefault(
                t.kind, {"injected": 0, "survived": 0, "lost": 0, "unexpected": 0}
            )
            row["injected"] += 1
            row["survived" if t.lost is None else "lost"] += 1
            row["unexpected"] += int(t.lost is None and t.unexpected is not None)
        return dict(sorted(table.items()))

    def growth_per_100_turns(self) -> dict[str, float | None]:
        """Least-squares slopes over the samples after the warm-up (the first turns fill
        caches, pools and the bounded context)."""
        warmup = SoakOptions(**self.options).warmup_turns()
        after = [m for m in self.memory if m.turns >= warmup]
        fields = [f for f in MemorySample.__dataclass_fields__ if f != "turns"]
        return {
            f: slope_per_100([(m.turns, v) for m in after if (v := getattr(m, f)) is not None])
            for f in fields
        }

    def problems(self) -> list[str]:
        found = [f"turn lost: {t}" for t in self.lost]
        found += [f"unexpected outcome: {t}" for t in self.unexpected]
        found += [f"event loop error: {e}" for e in self.loop_errors]
        if self.leaked_keys:
            found.append(f"fake keys in {self.leaked_keys} outputs")
        if self.tasks_left:
            found.append(f"tasks left: {self.tasks_left}")
        if self.streams_left:
            found.append(f"STT/TTS/LLM streams alive after close: {self.streams_left}")
        if self.connections_left:
            found.append(f"{self.connections_left} provider connections open after close")
        if self.max_context_messages > context_bound():
            found.append(f"context grew to {self.max_context_messages} messages")
        return found

    def summary(self) -> dict[str, Any]:
        outcomes = Counter(t.outcome for t in self.turns if t.outcome)
        return {
            "options": self.options,
            "seconds": round(self.seconds, 1),
            "turns": len(self.turns),
            "turns_lost": len(self.lost),
            "unexpected_outcomes": len(self.unexpected),
            "outcomes": dict(outcomes),
            "faults": self.fault_table(),
            "faults_injected": sum(1 for t in self.turns if t.kind != "clean"),
            "bad_inputs": dict(self.bad_inputs),
            "loop_errors": self.loop_errors,
            "leaked_keys": self.leaked_keys,
            "memory": {
                "warmup_turns": SoakOptions(**self.options).warmup_turns(),
                "growth_per_100_turns": self.growth_per_100_turns(),
                "rss_mb": {
                    "first": self.memory[0].rss_mb if self.memory else None,
                    "last": self.memory[-1].rss_mb if self.memory else None,
                    "max": max((m.rss_mb for m in self.memory), default=None),
                },
                "heap_growth": self.heap_growth,
                "samples": [asdict(m) for m in self.memory],
            },
            "max_context_messages": self.max_context_messages,
            "tasks": {"before": self.tasks_before, "max": self.tasks_max, "left": self.tasks_left},
            "streams_left": self.streams_left,
            "connections_left": self.connections_left,
            "lost": [asdict(t) for t in self.lost],
            "unexpected": [asdict(t) for t in self.unexpected],
            "problems": self.problems(),
        }


def context_bound() -> int:
    """Most messages a session's context may hold: system + per turn a user message, an
    assistant message and up to two tool rounds (call + result each) + the image note."""
    return 1 + CONTEXT.max_turns * 8


class KeyScan(logging.Handler):
    """Formats every record as the worker prints it and counts those holding a fake key."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(level=logging.DEBUG)
        self._keys = keys
        self._json = JsonFormatter()
        self.leaks = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self._json.format(record)
        except Exception:
            text = record.getMessage()
        if any(k in text for k in self._keys):
            self.leaks += 1


def quota(options: SoakOptions, session: int) -> int:
    """Turns of one session (the sessions share ``options.turns``)."""
    share, rest = divmod(options.turns, options.sessions)
    return share + (1 if session < rest else 0)


def plan(options: SoakOptions, session: int, turns: int) -> list[str]:
    kinds = list(options.kinds or KINDS)
    if options.round_robin:  # sessions take consecutive stretches of the cycle
        first = sum(quota(options, s) for s in range(session))
        return [kinds[(first + i) % len(kinds)] for i in range(turns)]
    rng = random.Random(options.seed * 1000 + session)
    return [rng.choice(kinds) for _ in range(turns)]


class Session:
    """One soak session: its servers, room, participant, pipeline and fault script."""

    def __init__(self, index: int, keys: dict[str, str], report: SoakReport) -> None:
        self.index = index
        self.keys = keys
        self.report = report
        self.script: deque[Reply | Fault] = deque()
        self.rng = random.Random(index)
        self.h: Harness | None = None
        self.turns_read: list[dict[str, Any]] = []
        """``turn`` metrics messages received and not yet credited to a turn."""
        self.data_read = 0
        """How many of the room's outbox data messages were read into ``turns_read``."""
        self.requests = 0

    def respond(self, body: dict[str, Any]) -> Reply | Fault:
        if self.script:
            return self.script.popleft()
        return Reply(text="Okay, noted.")

    async def start(self, vad: agents_vad.VAD) -> None:
        oai = OpenAIServer(self.respond)
        await oai.start()
        dg = DeepgramLoopback(
            # a 0.3 s gap ends an utterance: a loaded event loop may starve the microphone's
            # source for a moment, which must not split one utterance into two
            listen=ListenOptions(final_delay=0.1, min_gap=0.3),
            speak=SpeakOptions(ttfb=0.02, seconds_per_char=0.02),
        )
        await dg.start()
        settings = load_settings(
            {
                **self.keys,
                "OPENAI_BASE_URL": oai.base_url,
                "DEEPGRAM_STT_URL": dg.stt_url,
                "DEEPGRAM_TTS_URL": dg.tts_url,
                "LLM_MODEL": "gpt-4o-audio-preview",
                "AGENT_TOOLS": "bench.soak:SoakTools",
            },
            dotenv=None,
        )
        room = LocalRoom(f"soak-{self.index}")
        user = room.add_participant("user")
        mic = user.publish_microphone()
        camera = user.publish_camera(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1])
        parts = build_session(
            as_rtc_room(room),
            user.identity,
            settings,
            vad=vad,
            http_session=aiohttp.ClientSession(),
            options=OPTIONS,
        )
        self.h = h = Harness(
            room=room, user=user, mic=mic, camera=camera, parts=parts, oai=oai, dg=dg
        )
        for name in (
            "agent_started_speaking",
            "agent_speech_committed",
            "agent_speech_interrupted",
        ):
            parts.conversation.pipeline.on(name, lambda *args, _n=name: h.record(_n, *args))
        await parts.start()
        camera.capture_frame(camera_frame(*CAMERA_SIZE, self.index))

    # -- one turn

    def new_turns(self) -> int:
        """``turn`` metrics messages not yet credited to a turn (reads only what is new)."""
        assert self.h is not None
        data = self.h.room.outbox.data
        for d in data[self.data_read :]:
            if d.topic == "agent.metrics" and (m := d.json())["type"] == "turn":
                self.turns_read.append(m)
        self.data_read = len(data)
        return len(self.turns_read)

    async def run_turn(self, n: int, kind: str, timeout: float) -> TurnRecord:
        h = self.h
        assert h is not None
        record = TurnRecord(self.index, n, kind)
        self.script.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.arm(kind)
                await self.speak_turn(n, kind)
                await h.room.outbox.wait_for(lambda: self.new_turns() > 0, timeout=timeout)
        except TimeoutError:
            record.lost = "no turn metric in time"
        except Exception as e:  # the driver's own failure: count the turn as lost, go on
            logger.exception("soak driver failed", extra={"kind": kind})
            record.lost = f"driver error: {e!r}"
        finally:
            await self.disarm(kind)
        if record.lost is not None:
            await self.resync()
        if self.new_turns():
            turn = self.turns_read[0]
            self.turns_read.clear()  # after a lost turn, its late metric is not credited next
            record.outcome, record.error = turn["outcome"], turn["error"]
            expected = KINDS[kind]
            if (record.outcome, record.error) != (expected.outcome, expected.error):
                record.unexpected = f"expected {expected}, got {record.outcome}/{record.error}"
        self.trim_records()
        self.report.max_context_messages = max(
            self.report.max_context_messages, len(h.conversation.chat_ctx.messages)
        )
        return record

    async def resync(self) -> None:
        """After a lost turn: give its metric a few seconds to come late (it is then noted,
        and every metric sent so far skipped), so the next turn is not credited with it."""
        assert self.h is not None
        h = self.h
        with contextlib.suppress(TimeoutError):
            await h.room.outbox.wait_for(lambda: self.new_turns() > 0, timeout=10)

    def trim_records(self) -> None:
        """Drop what the test doubles recorded (data messages, transcriptions, pipeline events,
        requests, closed connections, received audio), after scanning it for the keys: the
        memory measured is then the agent's, not a record of everything it did. Between turns
        only (a turn being driven waits on the events)."""
        h = self.h
        assert h is not None
        self.new_turns()  # the turn metrics not yet credited are kept
        self.report.leaked_keys += room_leaks(self, list(self.keys.values()))
        h.room.outbox.data.clear()
        self.data_read = 0
        h.room.outbox.transcriptions.clear()
        h.room.outbox.attribute_updates.clear()
        h.events.clear()
        self.trim_audio()
        self.requests += len(h.oai.requests)
        h.oai.requests[:] = [r for r in h.oai.requests if not r.done.is_set()]
        h.dg.listen_connections[:] = [c for c in h.dg.listen_connections if c.closed_at is None]
        h.dg.speak_connections[:] = [c for c in h.dg.speak_connections if c.closed_at is None]
        for conn in h.dg.speak_connections:
            conn.messages.clear()
            conn.flushes.clear()
        for listening in h.dg.listen_connections:
            listening.control.clear()
            listening.speech_started.clear()
            listening.finals.clear()
        h.dg.refused.clear()

    def trim_audio(self) -> None:
        """Drop the agent audio received so far (safe at any time: a barge-in waits on the
        recorder's running count of audible seconds). The agent's track keeps sending frames
        while the session waits for the others to finish."""
        assert self.h is not None
        for recorder in self.h.room.outbox.audio:
            recorder.frames.clear()

    async def speak_turn(self, n: int, kind: str) -> None:
        h = self.h
        assert h is not None
        started = len(h.named("agent_started_speaking"))
        recorder = h.room.outbox.audio[0] if h.room.outbox.audio else None
        audible = recorder.audible_seconds if recorder is not None else 0.0
        h.dg.transcripts.append(f"question {n} of session {self.index}")
        await h.mic.push(speak(UTTERANCE, 16000, words_per_minute=260), 16000)
        if kind == "barge_in":
            await h.wait_for_event("agent_started_speaking", started + 1, timeout=30)
            if recorder is None:
                recorder = h.room.outbox.audio[0]
            await recorder.wait_for_audio(audible + 0.5, timeout=30)  # some of it was heard
            h.user.send_data(json.dumps({"type": "interrupt"}), topic=CONTROL_TOPIC)

    # -- faults

    def resilient(self) -> ReconnectingSTT:
        assert self.h is not None
        wrapper = self.h.parts.stt
        assert isinstance(wrapper, ReconnectingSTT)
        return wrapper

    async def reconnect_stt(self) -> None:
        """Make the live Deepgram stream open a new connection (the plugin's public API)."""
        h = self.h
        assert h is not None
        inner = self.resilient().inner
        assert isinstance(inner, deepgram.STT)
        before = len(h.dg.listen_connections) + len(h.dg.refused)
        inner.update_options(language="en-US")
        await h.dg.wait_until(
            lambda: len(h.dg.listen_connections) + len(h.dg.refused) > before, timeout=20
        )

    def drop_pooled_tts_connections(self) -> None:
        """The Deepgram TTS keeps its websocket for the next reply; its public
        update_options() drops it, so the next reply opens a new one."""
        assert self.h is not None
        segmenting = self.h.parts.tts
        assert isinstance(segmenting, SegmentingTTS)
        inner = segmenting.inner
        assert isinstance(inner, deepgram.TTS)
        inner.update_options(model="aura-asteria-en")

    async def arm(self, kind: str) -> None:
        h = self.h
        assert h is not None
        s, bad = self.script, self.report.bad_inputs
        if kind == "llm_5xx":
            s.extend([Fault(503, "overloaded"), Fault(500), Reply(text="Back again.")])
        elif kind == "llm_429":
            s.extend([Fault(429, "slow down"), Reply(text="Here you go.")])
        elif kind == "llm_reset":
            s.extend([Fault(status=None), Reply(text="Reconnected.")])
        elif kind == "llm_stall":
            s.extend([Reply(text="never", stall_after=0), Reply(text="After a stall.")])
        elif kind == "llm_cut":
            s.append(Reply(text="The first words and then nothing more.", drop_after=2))
        elif kind == "llm_down":
            s.extend([Fault(500, "down")] * 4)
        elif kind == "tts_refused":
            self.drop_pooled_tts_connections()  # so the refusal is met
            h.dg.speak_faults.refuse_connections = 1
        elif kind == "tts_cut":
            h.dg.speak_faults.close_mid_audio = 1
            s.append(Reply(text=TWO_SENTENCES))
        elif kind == "tts_down":
            self.drop_pooled_tts_connections()
            h.dg.speak_faults.refuse_connections = 1000
        elif kind == "stt_drop":
            h.dg.listen_faults.drop_after_audio = 0.3
            h.dg.listen_faults.drop_connections = 1
            await self.reconnect_stt()
        elif kind == "stt_refused":
            h.dg.listen_faults.refuse_connections = 2
            await self.reconnect_stt()
        elif kind.startswith("tool_"):
            s.extend([self.tool_reply(kind), Reply(text="That is what I found.")])
        elif kind == "media_video":
            kind_, width, height = self.rng.choice(VIDEO_FRAMES)
            for _ in range(3):
                h.camera.capture_frame(video_frame(kind_, width, height))
            bad["odd_video_frames"] += 1
        elif kind == "media_mic":
            rate, channels = self.rng.choice(MIC_LAYOUTS)
            await h.user.unpublish(h.mic.publication.sid)
            h.mic = h.user.publish_microphone(sample_rate=rate, num_channels=channels)
            for _ in range(3):
                await h.mic.capture_frame(rtc.AudioFrame(b"", rate, channels, 0))
            bad["empty_audio_frames"] += 3
            bad["microphone_layouts"] += 1
        elif kind == "media_camera":
            await h.user.unpublish(h.camera.publication.sid)
            h.camera = h.user.publish_camera(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1])
            h.camera.capture_frame(camera_frame(*CAMERA_SIZE, self.rng.randrange(256)))
        elif kind == "data_hostile":
            for payload in self.rng.sample(HOSTILE_DATA, 3):
                h.user.send_data(payload, topic=CONTROL_TOPIC)
            bad["hostile_data_messages"] += 3
        elif kind == "barge_in":
            s.append(Reply(text=LONG_REPLY))

    def tool_reply(self, kind: str) -> Reply:
        if kind == "tool_hostile":
            self.report.bad_inputs["hostile_tool_arguments"] += 1
            call = ToolCall("weather", self.rng.choice(HOSTILE_ARGUMENTS))
        elif kind == "tool_unknown":
            self.report.bad_inputs["unknown_tool_names"] += 1
            call = ToolCall("format_disk", '{"drive": "C"}')
        else:
            call = ToolCall(
                {"tool_error": "broken", "tool_hang": "hang", "tool_huge": "dump"}[kind]
            )
        return Reply(tool_calls=[call, ToolCall("weather", '{"city": "Paris"}')])

    async def disarm(self, kind: str) -> None:
        h = self.h
        assert h is not None
        h.dg.speak_faults.refuse_connections = 0
        h.dg.speak_faults.close_mid_audio = 0
        h.dg.listen_faults.refuse_connections = 0
        h.dg.listen_faults.drop_after_audio = None
        self.script.clear()

    async def aclose(self) -> None:
        if self.h is not None:
            await self.h.aclose()


@functools.lru_cache(maxsize=len(VIDEO_FRAMES))
def video_frame(kind: rtc.VideoBufferType.ValueType, width: int, height: int) -> rtc.VideoFrame:
    """Made once per layout: making a 4K frame takes the event loop long enough to starve the
    sessions' microphones (the driver's cost, not the agent's)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    luma = width * height
    size = {
        rtc.VideoBufferType.RGBA: 4 * luma,
        rtc.VideoBufferType.BGRA: 4 * luma,
        rtc.VideoBufferType.RGB24: 3 * luma,
        rtc.VideoBufferType.I420: luma + 2 * cw * ch,
        rtc.VideoBufferType.I444: 3 * luma,
    }[kind]
    data = np.random.default_rng([int(kind), width, height]).integers(0, 255, size, dtype=np.uint8)
    return rtc.VideoFrame(width, height, kind, data.tobytes())


def room_leaks(session: Session, keys: list[str]) -> int:
    """Data messages and transcriptions the session's agent sent that hold a key."""
    if session.h is None:
        return 0
    outbox = session.h.room.outbox
    texts = [d.payload.decode("utf-8", "replace") for d in outbox.data]
    texts += [t.text for t in outbox.transcriptions]
    return sum(any(k in t for k in keys) for t in texts)


def live_streams() -> list[str]:
    """STT/TTS/LLM streams still alive (after a full collection)."""
    gc.collect()
    kinds = (stt.RecognizeStream, tts.SynthesizeStream, tts.ChunkedStream, llm.LLMStream)
    return [type(o).__qualname__ for o in gc.get_objects() if isinstance(o, kinds)]


async def run_soak(
    options: SoakOptions, progress: Callable[[str], None] | None = None
) -> SoakReport:
    report = SoakReport(options=asdict(options))
    keys = {
        "DEEPGRAM_API_KEY": f"dgsoak{secrets.token_hex(12)}",
        "OPENAI_API_KEY": f"sk-soak{secrets.token_hex(12)}",
    }
    scan = KeyScan(list(keys.values()))
    root = logging.getLogger()
    root.addHandler(scan)
    root_level = root.level
    root.setLevel(logging.DEBUG)  # every record is formatted and scanned for the keys
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()

    def on_loop_error(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not _known_plugin_error(context):
            report.loop_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

    loop.set_exception_handler(on_loop_error)
    own = asyncio.current_task()
    before = {t for t in asyncio.all_tasks() if t is not own}
    report.tasks_before = len(before)
    process = psutil.Process()
    if options.tracemalloc:
        tracemalloc.start(8)
    warmed: HeapProbe | None = None
    started = time.perf_counter()
    vad = SileroVAD.load(min_silence_duration=0.25)
    sessions = [Session(i, keys, report) for i in range(options.sessions)]
    done = 0
    try:
        await asyncio.gather(*(s.start(vad) for s in sessions))

        async def drive(session: Session) -> None:
            nonlocal done, warmed
            turns = quota(options, session.index)
            for n, kind in enumerate(plan(options, session.index, turns)):
                report.turns.append(await session.run_turn(n, kind, options.turn_timeout))
                done += 1
                report.tasks_max = max(report.tasks_max, len(asyncio.all_tasks()))
                if warmed is None and done >= options.warmup_turns():
                    warmed = HeapProbe.take(done)
                if done % options.sample_every() == 0:
                    for s in sessions:
                        s.trim_audio()
                    report.memory.append(sample_memory(done, process))
                    if progress is not None:
                        lost = len(report.lost)
                        progress(f"{done}/{options.turns} turns, {lost} lost")

        await asyncio.gather(*(drive(s) for s in sessions))
        if warmed is not None:  # the end, with the sessions still open
            report.heap_growth = warmed.growth(HeapProbe.take(done))
    finally:
        # tracemalloc stays on: stopping it while the FFI's threads allocate crashes CPython
        await asyncio.gather(*(s.aclose() for s in sessions))
        # the FFI ends the audio streams of released tracks asynchronously
        streams = [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "AudioStream._run"
        ]
        if streams:
            await asyncio.wait(streams, timeout=10)
        report.seconds = time.perf_counter() - started
        left = [t for t in asyncio.all_tasks() if t is not own and t not in before and not t.done()]
        report.tasks_left = [
            f"{t.get_name()} {getattr(t.get_coro(), '__qualname__', '')}" for t in left
        ]
        report.connections_left = sum(
            sum(c.closed_at is None for c in s.h.dg.listen_connections + s.h.dg.speak_connections)
            + sum(not r.done.is_set() for r in s.h.oai.requests)
            for s in sessions
            if s.h is not None
        )
        gc.collect()
        loop.set_exception_handler(previous_handler)
        root.removeHandler(scan)
        root.setLevel(root_level)
        report.leaked_keys = scan.leaks
        report.leaked_keys += sum(room_leaks(s, list(keys.values())) for s in sessions)
        sessions.clear()  # drop our references: what stays alive now is a leak
        report.streams_left = live_streams()
    return report


def format_table(summary: dict[str, Any]) -> str:
    rows = [("fault", "injected", "survived", "lost", "unexpected outcome")]
    for kind, row in summary["faults"].items():
        rows.append(
            (
                kind,
                str(row["injected"]),
                str(row["survived"]),
                str(row["lost"]),
                str(row["unexpected"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    bad = ", ".join(f"{k}: {v}" for k, v in sorted(summary["bad_inputs"].items()))
    memory = summary["memory"]
    growth = memory["growth_per_100_turns"]
    lines += [
        "",
        f"turns {summary['turns']}, lost {summary['turns_lost']}, unexpected outcomes "
        f"{summary['unexpected_outcomes']}, outcomes {summary['outcomes']}",
        f"bad inputs tried: {bad}",
        "RSS MB first/last/max {first}/{last}/{max}".format(**memory["rss_mb"]),
        f"growth per 100 turns after {memory['warmup_turns']} turns: "
        + ", ".join(f"{k} {v:+}" for k, v in growth.items() if v is not None),
        f"tasks left {len(summary['tasks']['left'])}, streams left {len(summary['streams_left'])}, "
        f"connections left {summary['connections_left']}, leaked keys {summary['leaked_keys']}",
        f"{summary['seconds']} s",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--turns", type=int, default=1000)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--round-robin", action="store_true", help="cycle through every fault kind")
    parser.add_argument("--kinds", nargs="*", choices=sorted(KINDS), default=[])
    parser.add_argument(
        "--warmup", type=int, help="turns before growth is measured (default: a quarter)"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace Python allocations; the JSON lists what grew after the warm-up (slow)",
    )
    parser.add_argument("--json", type=Path, default=Path("docs/bench/soak.json"))
    args = parser.parse_args(argv)
    # Console: errors of the soak itself only (the injected faults make every layer log).
    console = logging.StreamHandler()
    console.setLevel(logging.ERROR)
    console.addFilter(lambda record: record.name.startswith("bench"))
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.getLogger().addHandler(console)
    options = SoakOptions(
        turns=args.turns,
        sessions=args.sessions,
        seed=args.seed,
        round_robin=args.round_robin,
        kinds=tuple(args.kinds),
        warmup=args.warmup,
        tracemalloc=args.tracemalloc,
    )
    report = asyncio.run(run_soak(options, progress=lambda line: print(line, file=sys.stderr)))
    summary = report.summary()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(format_table(summary))
    for problem in summary["problems"]:
        print("PROBLEM:", problem, file=sys.stderr)
    return 1 if summary["problems"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
