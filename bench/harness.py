"""What every benchmark part shares: the machine, statistics, scripted providers, the two
pipelines under test on the in-process room, and the probe that timestamps a reply.

The two pipelines (``PIPELINES``):

- ``ours``: :func:`worker.session.build_session`, exactly what a job runs.
- ``stock``: the stock livekit-agents 0.12.21 ``VoicePipelineAgent`` with default options, the
  stock Silero plugin, ``deepgram.STT`` and ``deepgram.TTS`` (no segmenter) and the project's
  LLM plugin (the stock openai plugin does not install next to openai 3.x); tools are given to
  it as ``fnc_ctx``, so it runs them its own (sequential) way.

Both talk to the same kind of loopback providers (``tests/loopback``) with the same script
(:class:`ProviderScript`), each pipeline to its own server instances so their records never mix.
All times are ``time.perf_counter()``; the Deepgram loopback stamps ``time.monotonic()``, which
is the same clock on Linux (both CLOCK_MONOTONIC), converted anyway via :data:`MONO_TO_PERF`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import gc
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import aiohttp
import numpy as np
from livekit import rtc
from livekit.agents import llm, vad
from livekit.agents.pipeline import VoicePipelineAgent
from livekit.agents.pipeline.human_input import HumanInput
from livekit.plugins import deepgram, silero

from plugins.openai_llm import LLM
from tests.loopback.deepgram_server import DeepgramLoopback, ListenOptions, SpeakOptions
from tests.loopback.openai_server import OpenAIServer, Reply, tokens
from tests.speech import speak
from worker.config import Settings, load_settings
from worker.local_room import (
    AudioRecorder,
    LocalRoom,
    LocalRoomOptions,
    Microphone,
    RemoteParticipant,
    VideoFeed,
    as_rtc_room,
)
from worker.pipeline.adapter import close_pipeline_agent
from worker.providers.selection import load_vad
from worker.session import build_session

logger = logging.getLogger("bench.harness")

Pipeline = Literal["ours", "stock"]
PIPELINES: tuple[Pipeline, ...] = ("ours", "stock")
MIC_RATE = 48000
CAMERA_SIZE = (640, 480)
CAMERA_FPS = 15.0
VOICED_RMS = 0.01
"""A 10 ms window is voiced at this RMS (full scale 1.0): the loopback STT's own criterion."""
MONO_TO_PERF = time.perf_counter() - time.monotonic()
"""Add to a ``time.monotonic()`` stamp to get ``time.perf_counter()`` (0 on Linux)."""
DOCS_BENCH = Path("docs/bench")


# ----------------------------------------------------------------------------- the script


@dataclass(frozen=True)
class ProviderScript:
    """The scripted providers, the same for both pipelines."""

    stt_final_delay: float = 0.15
    """Seconds of audio after the end of speech before Deepgram's final transcript."""
    llm_ttft: float = 0.3
    llm_tokens_per_second: float = 50.0
    tts_ttfb: float = 0.15
    """Seconds from a TTS Flush to its first audio."""
    tts_seconds_per_char: float = 0.03
    """Length of the loopback TTS voice per character (shortens the runs, not the latency)."""

    def gen_seconds(self, n_tokens: int) -> float:
        """Seconds from the first token to the ``n_tokens``-th (they are paced)."""
        return max(n_tokens - 1, 0) / self.llm_tokens_per_second


def first_sentence_tokens(text: str) -> int:
    """Tokens (as the loopback LLM sends them) up to the end of the first sentence."""
    count = 0
    for token in tokens(text):
        count += 1
        if token.rstrip().endswith((".", "!", "?")):
            return count
    return count


# ----------------------------------------------------------------------------- machine, stats


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """The machine and software a run measured (goes into every JSON report)."""
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gb": mem_total,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ours_turn_taking": turn_taking_env(),
        "versions": {
            dist: _version(dist)
            for dist in (
                "livekit-agents",
                "livekit",
                "livekit-plugins-silero",
                "livekit-local-inference",
                "livekit-plugins-deepgram",
                "openai",
                "onnxruntime",
                "numpy",
                "aiohttp",
            )
        },
        "git": _git_revision(),
    }


def summarize(values: Iterable[float | None]) -> dict[str, Any]:
    """n, p50, p95, mean, min, max of the values that are not None (seconds, rounded)."""
    xs = np.array([v for v in values if v is not None], dtype=float)
    if xs.size == 0:
        return {"n": 0, "p50": None, "p95": None, "mean": None, "min": None, "max": None}
    return {
        "n": int(xs.size),
        "p50": round(float(np.percentile(xs, 50)), 4),
        "p95": round(float(np.percentile(xs, 95)), 4),
        "mean": round(float(xs.mean()), 4),
        "min": round(float(xs.min()), 4),
        "max": round(float(xs.max()), 4),
    }


def ratio(ours: float | None, stock: float | None) -> float | None:
    """ours / stock, rounded (None if either is missing or stock is 0)."""
    if ours is None or stock is None or stock == 0:
        return None
    return round(ours / stock, 3)


Row = tuple[str, str, str, str]
"""A row of the bench's table: metric, ours, stock, ours/stock."""


def ms_row(
    label: str, ours: float | None, stock: float | None, ours_over_stock: float | None
) -> Row:
    """A row of two times (seconds, shown in ms) and their ratio; "-" for what is missing."""
    return (
        label,
        "-" if ours is None else f"{ours * 1000:.0f} ms",
        "-" if stock is None else f"{stock * 1000:.0f} ms",
        "-" if ours_over_stock is None else f"{ours_over_stock:.2f}",
    )


def rounded(x: float | None, digits: int = 4) -> float | None:
    return None if x is None else round(x, digits)


BENCH_LIVEKIT_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "devkey",
    "LIVEKIT_API_SECRET": "bench-secret-0123456789abcdef0123456789",
}
"""The worker's settings need a server; the in-process room never contacts one."""


def prewarmed_job_process(kind: Pipeline, endpoints: dict[str, str]) -> Any:
    """A ``JobProcess`` prepared the way each pipeline's job process is before a job: ours runs
    ``worker.entrypoint.prewarm`` (settings from the environment, VAD, SDK modules,
    gc.freeze); stock loads the stock Silero VAD. Either way ``userdata["vad"]`` is the VAD.
    Sets ``endpoints`` and :data:`BENCH_LIVEKIT_ENV` in ``os.environ`` (a child process's)."""
    from livekit.agents import JobProcess

    import worker.entrypoint

    os.environ.update({**endpoints, **BENCH_LIVEKIT_ENV})
    proc = JobProcess()
    if kind == "ours":
        worker.entrypoint.prewarm(proc)
    else:
        proc.userdata["vad"] = silero.VAD.load()
    return proc


def exit_child() -> NoReturn:
    """End a measuring child process once its result is printed, without the interpreter's
    finalization: livekit-ffi's tokio threads may still call back into Python then and abort
    the process ("panic in a function that cannot unwind", seen ~1 run in 20), which would
    turn a finished measurement into a failed run."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


class LoopMonitor:
    """Event-loop lag (how late a 10 ms sleep wakes up) and garbage-collector pauses."""

    def __init__(self, interval: float = 0.01) -> None:
        self._interval = interval
        self.lags: list[float] = []
        self.gc_pauses: list[tuple[int, float]] = []
        self._gc_started = 0.0
        self._task: asyncio.Task[None] | None = None

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pauses.append((int(info["generation"]), time.perf_counter() - self._gc_started))

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self._interval)
            self.lags.append(time.perf_counter() - t - self._interval)

    def start(self) -> None:
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._run(), name="bench:loop-monitor")

    async def stop(self) -> dict[str, Any]:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        full = [d for g, d in self.gc_pauses if g == 2]
        lags = np.array(self.lags or [0.0]) * 1000
        return {
            "loop_lag_ms": {
                "p50": round(float(np.percentile(lags, 50)), 2),
                "p99": round(float(np.percentile(lags, 99)), 2),
                "max": round(float(lags.max()), 1),
            },
            "gc_full_collections": len(full),
            "gc_full_max_ms": round(max(full) * 1000, 1) if full else None,
            "gc_max_pause_ms": round(max(d for _, d in self.gc_pauses) * 1000, 1)
            if self.gc_pauses
            else None,
        }


# ----------------------------------------------------------------------------- speech


@functools.lru_cache(maxsize=128)
def voiced_clip(text: str, words_per_minute: int = 175) -> np.ndarray:
    """``text`` spoken by espeak-ng at 48 kHz, cut to its voiced span (first to last voiced
    10 ms window), so the end of the clip is the end of speech."""
    samples = speak(text, MIC_RATE, words_per_minute)
    window = MIC_RATE // 100
    n = samples.size // window
    rms = np.sqrt(np.mean(np.square(samples[: n * window].reshape(n, window) / 32768.0), axis=1))
    voiced = np.flatnonzero(rms >= VOICED_RMS)
    if voiced.size == 0:
        raise ValueError(f"espeak produced no voiced audio for {text!r}")
    clip = samples[voiced[0] * window : (voiced[-1] + 1) * window]
    clip.flags.writeable = False
    return clip


async def push_speech(mic: Microphone, clip: np.ndarray) -> tuple[float, float]:
    """Feed ``clip`` in real time; returns (start, end) of the speech as it plays into the
    track: the end is when the last queued sample plays (push returns up to the microphone's
    queue ahead of that)."""
    started = time.perf_counter() + mic.source.queued_duration
    await mic.push(clip, MIC_RATE)
    return started, time.perf_counter() + mic.source.queued_duration


# ----------------------------------------------------------------------------- providers


ReplyFor = Callable[[dict[str, Any]], Reply]


class LoopbackProviders:
    """One loopback OpenAI server and one loopback Deepgram server, scripted.

    ``reply_for(body)`` picks the LLM's answer (settable between turns). ``done_at[i]`` is when
    the server finished sending the answer to request ``i`` (perf_counter)."""

    def __init__(self, script: ProviderScript, reply_for: ReplyFor | None = None) -> None:
        self.script = script
        self.reply_for: ReplyFor = reply_for or (lambda body: self.reply("Okay."))
        self.oai = OpenAIServer(self._respond)
        self.dg = DeepgramLoopback(
            listen=ListenOptions(final_delay=script.stt_final_delay),
            speak=SpeakOptions(ttfb=script.tts_ttfb, seconds_per_char=script.tts_seconds_per_char),
        )
        self.done_at: dict[int, float] = {}
        self._watchers: set[asyncio.Task[None]] = set()

    def reply(self, text: str = "", **kwargs: Any) -> Reply:
        """A Reply paced by the script."""
        return Reply(
            text=text,
            ttft=self.script.llm_ttft,
            tokens_per_second=self.script.llm_tokens_per_second,
            **kwargs,
        )

    def _respond(self, body: dict[str, Any]) -> Reply:
        index = len(self.oai.requests) - 1
        received = self.oai.requests[index]

        async def watch() -> None:
            await received.done.wait()
            self.done_at[index] = time.perf_counter()

        task = asyncio.create_task(watch(), name=f"bench:llm-done-{index}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        return self.reply_for(body)

    def env(self) -> dict[str, str]:
        """Settings for ``ours`` pointing at these servers."""
        return {
            "DEEPGRAM_API_KEY": "dg-bench",
            "OPENAI_API_KEY": "sk-bench",
            "OPENAI_BASE_URL": self.oai.base_url,
            "DEEPGRAM_STT_URL": self.dg.stt_url,
            "DEEPGRAM_TTS_URL": self.dg.tts_url,
        }

    def clear_records(self) -> None:
        """Forget what was recorded so far (long runs)."""
        self.oai.requests.clear()
        self.done_at.clear()
        for conn in self.dg.listen_connections:
            conn.finals.clear()
            conn.control.clear()
            conn.speech_started.clear()
        for sconn in self.dg.speak_connections:
            sconn.messages.clear()
            sconn.flushes.clear()

    async def start(self) -> None:
        await self.oai.start()
        await self.dg.start()

    async def aclose(self) -> None:
        for task in list(self._watchers):
            task.cancel()
        await asyncio.gather(*self._watchers, return_exceptions=True)
        await self.dg.aclose()
        await self.oai.stop()

    # -- records, in perf_counter time

    def request_times(self) -> list[float]:
        return [r.received_at for r in self.oai.requests]

    def final_times(self) -> list[float]:
        return sorted(f.sent_at + MONO_TO_PERF for f in self.dg.finals)

    def flushes(self) -> list[tuple[float, float | None, str]]:
        """(flush_at, first_audio_at, text) of every TTS Flush, in order."""
        return [
            (
                f.flush_at + MONO_TO_PERF,
                None if f.first_audio_at is None else f.first_audio_at + MONO_TO_PERF,
                f.text,
            )
            for f in self.dg.flushes
        ]


# ----------------------------------------------------------------------------- the probe


def human_input_of(agent: VoicePipelineAgent) -> HumanInput | None:
    """The agent's microphone input (private in 0.12; the bench only listens to its events)."""
    return agent._human_input


AGENT_EVENTS = (
    "user_started_speaking",
    "user_stopped_speaking",
    "agent_started_speaking",
    "agent_stopped_speaking",
    "agent_speech_committed",
    "agent_speech_interrupted",
    "function_calls_collected",
)


class AgentProbe:
    """Timestamps what a VoicePipelineAgent does (events, EOU decision, VAD, transcripts).

    Works the same on both pipelines: it only listens to the agent's public events and to its
    microphone input's events."""

    def __init__(self, agent: VoicePipelineAgent) -> None:
        self.agent = agent
        self.events: dict[str, list[float]] = {name: [] for name in AGENT_EVENTS}
        self.eou: list[float] = []
        """When the pipeline decided the user's turn was over (its EOU metrics are emitted
        right at validation)."""
        self.vad_ends: list[tuple[float, float]] = []
        """(received, silence_duration) of every VAD END_OF_SPEECH."""
        self.finals: list[float] = []
        """When a final transcript reached the agent."""
        self._hi: HumanInput | None = None
        self._handlers: list[tuple[str, Callable[..., None]]] = []

    def attach(self) -> None:
        for name in AGENT_EVENTS:
            handler = functools.partial(self._stamp, name)
            self.agent.on(name, handler)  # type: ignore[arg-type]
            self._handlers.append((name, handler))
        self.agent.on("metrics_collected", self._on_metrics)
        self._hi = human_input_of(self.agent)
        if self._hi is None:
            raise RuntimeError("the agent has no microphone input (start() not called?)")
        self._hi.on("end_of_speech", self._on_vad_end)
        self._hi.on("final_transcript", self._on_final)
        # Not "vad_inference_done": ~31 events/s, and every emit of the framework's
        # EventEmitter runs inspect.signature per handler (a listener would cost CPU).

    def detach(self) -> None:
        for name, handler in self._handlers:
            self.agent.off(name, handler)  # type: ignore[arg-type]
        self._handlers.clear()
        self.agent.off("metrics_collected", self._on_metrics)
        if self._hi is not None:
            self._hi.off("end_of_speech", self._on_vad_end)
            self._hi.off("final_transcript", self._on_final)
            self._hi = None

    def _stamp(self, name: str, *_: Any) -> None:
        self.events[name].append(time.perf_counter())

    def _on_metrics(self, m: Any) -> None:
        if type(m).__name__ == "PipelineEOUMetrics":
            self.eou.append(time.perf_counter())

    def _on_vad_end(self, ev: vad.VADEvent) -> None:
        self.vad_ends.append((time.perf_counter(), ev.silence_duration))

    def _on_final(self, *_: Any) -> None:
        self.finals.append(time.perf_counter())

    @property
    def preemptive(self) -> bool:
        """Whether the pipeline requests the reply at the final transcript (before its
        end-of-turn decision) rather than at that decision."""
        return bool(self.agent._opts.preemptive_synthesis)


def first_after(stamps: Sequence[float], t: float, before: float | None = None) -> float | None:
    """The first stamp >= t (and < before)."""
    i = bisect.bisect_left(stamps, t)
    if i < len(stamps) and (before is None or stamps[i] < before):
        return stamps[i]
    return None


def last_between(stamps: Sequence[float], t0: float, t1: float) -> float | None:
    i = bisect.bisect_left(stamps, t1)
    if i > 0 and stamps[i - 1] >= t0:
        return stamps[i - 1]
    return None


def first_audible_after(
    recorder: AudioRecorder, t: float, before: float | None = None
) -> float | None:
    """Receive time of the first non-silent frame of the agent's track at or after ``t``."""
    frames = recorder.frames
    i = bisect.bisect_left(frames, t, key=lambda f: f.received_at)
    for f in frames[i:]:
        if before is not None and f.received_at >= before:
            return None
        if f.audible:
            return f.received_at
    return None


def audible_starts(
    recorder: AudioRecorder, t0: float, t1: float, min_silence: float = 0.3
) -> list[float]:
    """Starts of agent speech in [t0, t1): audible frames after >= ``min_silence`` of silence
    (or the first audible frame of the window if the agent was silent just before t0)."""
    frames = recorder.frames
    i = bisect.bisect_left(frames, t0 - min_silence, key=lambda f: f.received_at)
    starts: list[float] = []
    last_audible: float | None = None
    for f in frames[i:]:
        if f.received_at >= t1:
            break
        if not f.audible:
            continue
        gap_ok = last_audible is None or f.received_at - last_audible >= min_silence
        if gap_ok and f.received_at >= t0:
            starts.append(f.received_at)
        last_audible = f.received_at
    return starts


def silent_gaps(
    recorder: AudioRecorder, t0: float, t1: float, longer_than: float
) -> list[tuple[float, float]]:
    """Runs of silence longer than ``longer_than`` between audible frames inside [t0, t1]
    (measured in audio time: frames x their duration, not receive time)."""
    frames = recorder.frames
    i = bisect.bisect_left(frames, t0, key=lambda f: f.received_at)
    gaps: list[tuple[float, float]] = []
    run = 0.0
    run_start: float | None = None
    seen_audible = False
    for f in frames[i:]:
        if f.received_at > t1:
            break
        duration = f.frame.samples_per_channel / f.frame.sample_rate
        if f.audible:
            if seen_audible and run > longer_than and run_start is not None:
                gaps.append((run_start, run))
            seen_audible = True
            run, run_start = 0.0, None
        elif seen_audible:
            if run_start is None:
                run_start = f.received_at
            run += duration
    return gaps


# ----------------------------------------------------------------------------- sessions


def camera_frames(width: int, height: int, count: int = 15) -> list[bytes]:
    """I420 frames of a moving gradient (what a decoded WebRTC camera track delivers)."""
    y = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    u = np.full((height // 2, width // 2), 128, dtype=np.uint8)
    out = []
    for i in range(count):
        shifted = np.roll(y, i * 8, axis=1)
        out.append(shifted.tobytes() + u.tobytes() + u.tobytes())
    return out


class CameraFeed:
    """Sends a 640x480 I420 frame every 1/fps seconds, as a live camera does."""

    def __init__(self, feed: VideoFeed, size: tuple[int, int], fps: float) -> None:
        self._feed = feed
        self._size = size
        self._interval = 1.0 / fps
        self._frames = camera_frames(*size)
        self.sent = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bench:camera")

    async def _run(self) -> None:
        w, h = self._size
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            data = self._frames[self.sent % len(self._frames)]
            self._feed.capture_frame(rtc.VideoFrame(w, h, rtc.VideoBufferType.I420, data))
            self.sent += 1
            next_at += self._interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


TURN_TAKING_ENV = ("VAD_PROVIDER", "TURN_DETECTOR")
"""Ours runs with these settings from the bench's own environment (unset: the worker's
defaults), e.g. ``TURN_DETECTOR=audio python -m bench voice``; stock always runs stock Silero
and 0.12's delay rule."""


def turn_taking_env() -> dict[str, str]:
    return {name: os.environ[name] for name in TURN_TAKING_ENV if os.environ.get(name)}


def ours_turn_taking() -> dict[str, Any]:
    """The VAD, end-of-turn detector and delay ours runs with (the environment's or the
    worker's defaults), for the reports: a run with ``TURN_DETECTOR=audio`` says so."""
    settings = load_settings(turn_taking_env(), dotenv=None)
    return {
        "vad_provider": settings.vad_provider,
        "turn_detector": settings.turn_detector,
        "end_of_turn_delay_ms": settings.end_of_turn_delay_ms,
    }


@functools.lru_cache(maxsize=2)
def shared_vad(kind: Pipeline) -> vad.VAD:
    """One VAD per pipeline per process (a job process loads it once, in prewarm)."""
    if kind == "stock":
        return silero.VAD.load()
    settings = load_settings(turn_taking_env(), dotenv=None)
    return load_vad(settings.vad_provider, settings.turn_detector)


@dataclass
class BenchSession:
    """One pipeline in its own room with its own providers, and what observes it."""

    kind: Pipeline
    room: LocalRoom
    user: RemoteParticipant
    mic: Microphone
    camera: CameraFeed | None
    agent: VoicePipelineAgent
    loopback: LoopbackProviders | None
    """The in-process providers (None when they run in another process)."""
    probe: AgentProbe
    chat_ctx: llm.ChatContext
    """The context the pipeline keeps (ours: the rolling one; stock: the agent's)."""
    _close: Callable[[], Awaitable[None]]
    _closed: bool = False

    @property
    def providers(self) -> LoopbackProviders:
        if self.loopback is None:
            raise RuntimeError("this session's providers run in another process")
        return self.loopback

    @property
    def recorder(self) -> AudioRecorder:
        return self.room.outbox.audio[0]

    def trim_records(self, before: float) -> None:
        """Drop recorded agent audio older than ``before``: a long run would otherwise keep
        every 10 ms frame, and the garbage collector's full passes grow with them."""
        if self.room.outbox.audio:
            frames = self.recorder.frames
            i = bisect.bisect_left(frames, before, key=lambda f: f.received_at)
            del frames[:i]
        self.room.outbox.data.clear()
        self.room.outbox.transcriptions.clear()
        self.room.outbox.attribute_updates.clear()

    async def wait_for(
        self, predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.02
    ) -> None:
        """Poll ``predicate`` (the bench's waits are coarse; stamps come from events)."""
        deadline = time.perf_counter() + timeout
        while not predicate():
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{self.kind}: {what} not within {timeout} s")
            await asyncio.sleep(poll)

    async def wait_reply_done(self, after: float, timeout: float = 30.0) -> None:
        """Until a reply that started after ``after`` has stopped playing."""
        started = self.probe.events["agent_started_speaking"]
        stopped = self.probe.events["agent_stopped_speaking"]
        await self.wait_for(lambda: first_after(started, after) is not None, timeout, "reply")
        t = first_after(started, after)
        assert t is not None
        await self.wait_for(lambda: first_after(stopped, t) is not None, timeout, "reply end")

    async def wait_quiet(self, quiet: float, timeout: float = 30.0) -> None:
        """Until the agent has neither spoken nor been about to speak for ``quiet`` seconds."""
        started = self.probe.events["agent_started_speaking"]
        stopped = self.probe.events["agent_stopped_speaking"]
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            speaking = len(started) > len(stopped)
            last = max([*started[-1:], *stopped[-1:], *self.probe.eou[-1:], 0.0])
            if not speaking and time.perf_counter() - last >= quiet:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{self.kind}: agent not quiet within {timeout} s")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.probe.detach()
        if self.camera is not None:
            await self.camera.aclose()
        await self._close()
        await self.room.aclose()
        if self.loopback is not None:
            await self.loopback.aclose()


def stock_agent(
    endpoints: dict[str, str],
    http: aiohttp.ClientSession,
    *,
    vad_: vad.VAD,
    fnc_ctx: llm.FunctionContext | None = None,
    min_endpointing_delay: float | None = None,
) -> VoicePipelineAgent:
    """The baseline: stock 0.12.21 VoicePipelineAgent, default options, same providers."""
    extra: dict[str, Any] = {}
    if min_endpointing_delay is not None:
        extra["min_endpointing_delay"] = min_endpointing_delay
    return VoicePipelineAgent(
        vad=vad_,
        stt=deepgram.STT(
            api_key="dg-bench", base_url=endpoints["DEEPGRAM_STT_URL"], http_session=http
        ),
        llm=LLM(base_url=endpoints["OPENAI_BASE_URL"], api_key="sk-bench"),
        tts=deepgram.TTS(
            api_key="dg-bench", base_url=endpoints["DEEPGRAM_TTS_URL"], http_session=http
        ),
        chat_ctx=llm.ChatContext().append(role="system", text=Settings().instructions),
        fnc_ctx=fnc_ctx,
        **extra,
    )


@dataclass(frozen=True)
class SessionOptions:
    tools: str | None = None
    """``package.module:ClassName`` of a FunctionContext (ours: AGENT_TOOLS; stock: fnc_ctx)."""
    env: dict[str, str] = field(default_factory=dict)
    """Extra settings for ours (e.g. LLM_AUDIO_INPUT)."""
    camera: bool = True
    record_rate: int | None = MIC_RATE
    record_frame_ms: int = 10
    """Frames the agent's audio is read in (:class:`worker.local_room.AudioRecorder`)."""
    vad: vad.VAD | None = None
    """None: the pipeline's usual VAD (:func:`shared_vad`)."""
    min_endpointing_delay: float | None = None
    """None: the pipeline's default (ours: END_OF_TURN_DELAY_MS, 0.8 s; stock: 0.5 s)."""


async def open_session(
    kind: Pipeline,
    script: ProviderScript,
    options: SessionOptions | None = None,
    *,
    endpoints: dict[str, str] | None = None,
) -> BenchSession:
    """A room, a participant with microphone and camera, and a started pipeline, talking to
    in-process loopback providers (or to ``endpoints``: providers running elsewhere)."""
    opts = options or SessionOptions()
    loopback: LoopbackProviders | None = None
    if endpoints is None:
        loopback = LoopbackProviders(script)
        await loopback.start()
        endpoints = loopback.env()
    room = LocalRoom(
        options=LocalRoomOptions(
            record_sample_rate=opts.record_rate, record_frame_ms=opts.record_frame_ms
        )
    )
    user = room.add_participant("user")
    mic = user.publish_microphone(sample_rate=MIC_RATE)
    camera = None
    if opts.camera:
        camera = CameraFeed(
            user.publish_camera(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1]),
            CAMERA_SIZE,
            CAMERA_FPS,
        )
        camera.start()
    vad_ = opts.vad or shared_vad(kind)
    http = aiohttp.ClientSession()
    close: Callable[[], Awaitable[None]]
    if kind == "ours":
        env = {
            **endpoints,
            **turn_taking_env(),
            **({"AGENT_TOOLS": opts.tools} if opts.tools else {}),
            **opts.env,
        }
        if opts.min_endpointing_delay is not None:
            env["END_OF_TURN_DELAY_MS"] = str(round(opts.min_endpointing_delay * 1000))
        settings = load_settings(env, dotenv=None)
        parts = build_session(
            as_rtc_room(room), user.identity, settings, vad=vad_, http_session=http
        )
        await parts.start()
        agent = parts.conversation.pipeline.agent
        chat_ctx = parts.conversation.chat_ctx
        close = parts.aclose
    else:
        from worker.tools.loading import load_user_tools

        fnc_ctx = load_user_tools(opts.tools) if opts.tools else None
        agent = stock_agent(
            endpoints,
            http,
            vad_=vad_,
            fnc_ctx=fnc_ctx,
            min_endpointing_delay=opts.min_endpointing_delay,
        )
        agent.start(as_rtc_room(room), user.identity)
        chat_ctx = agent.chat_ctx

        async def close() -> None:
            await close_pipeline_agent(agent)
            await agent.llm.aclose()
            await agent.tts.aclose()
            await agent.stt.aclose()
            await http.close()

    probe = AgentProbe(agent)
    probe.attach()
    session = BenchSession(
        kind=kind,
        room=room,
        user=user,
        mic=mic,
        camera=camera,
        agent=agent,
        loopback=loopback,
        probe=probe,
        chat_ctx=chat_ctx,
        _close=close,
    )
    await session.wait_for(lambda: bool(room.outbox.published), 10.0, "agent track")
    return session


def as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
