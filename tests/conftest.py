"""Shared fixtures: a whole conversation session on loopback providers in the in-process room.

``make_session`` builds, through ``worker.session.build_session``, the session a job would run:
real Silero VAD, the real Deepgram plugin (listen and speak) against ``DeepgramLoopback``, the
project's LLM plugin against ``OpenAIServer``, in a ``LocalRoom`` where a participant ("user")
publishes a microphone fed with espeak-ng speech in real time and a camera that keeps sending
frames (as real cameras do: a VideoStream opened after a single frame would never see it).

Teardown closes everything in the order a job does (session while the room is connected, then
the room, then the servers) and fails the test if a task is left behind or the event loop
reported an unhandled error (e.g. "exception was never retrieved").
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
import signal
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import numpy as np
import pytest
from livekit import rtc
from livekit.agents.cli.log import JsonFormatter
from livekit.agents.pipeline.pipeline_agent import EventTypes as AgentEventName
from livekit.rtc._ffi_client import FfiClient

from tests.loopback.deepgram_server import DeepgramLoopback, ListenOptions, SpeakOptions
from tests.loopback.openai_server import OpenAIServer, Responder
from tests.speech import speak
from worker.config import Settings, load_settings
from worker.local_room import LocalRoom, Microphone, RemoteParticipant, VideoFeed, as_rtc_room
from worker.pipeline.conversation import Conversation, ConversationOptions
from worker.providers.selection import load_vad
from worker.session import SessionParts, build_session

SAMPLE_RATE = 16000
"""Rate the test speech is synthesised at (the microphone resamples it to 48 kHz)."""
AUDIO_MODEL = "gpt-4o-audio-preview"
"""An LLM_MODEL with "audio" in its name: the LLM plugin then sends ChatAudio as input_audio."""
CAMERA_SIZE = (320, 240)
CAMERA_INTERVAL = 0.1
"""Seconds between camera frames (10 fps)."""
AGENT_EVENTS: tuple[AgentEventName, ...] = (
    "user_started_speaking",
    "user_stopped_speaking",
    "user_speech_committed",
    "agent_started_speaking",
    "agent_stopped_speaking",
    "agent_speech_committed",
    "agent_speech_interrupted",
)


@dataclass(frozen=True)
class AgentEvent:
    name: str
    at: float
    """time.perf_counter() when the pipeline emitted it."""
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Utterance:
    text: str
    seconds: float
    """Length of the synthesised clip."""
    voiced_seconds: float
    """From the first to the last voiced 10 ms window of the clip."""
    started_at: float
    ended_at: float
    """time.perf_counter() once the last sample was played out."""


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as from a terminal, for the tests and every process they start. A non-interactive
    shell starts its background jobs with SIGINT ignored, and an ignored signal is inherited
    across exec: a test sending SIGINT to ``web`` or ``talk`` would be sending it to a process
    told to ignore it (as ``nohup`` or ``&`` means), and wait for an exit that never comes."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def voiced_span(samples: np.ndarray, rate: int, threshold: float = 0.01) -> float:
    """Seconds from the first to the last 10 ms window whose RMS reaches ``threshold``."""
    window = rate // 100
    n = samples.size // window
    if n == 0:
        return 0.0
    rms = np.sqrt(np.mean(np.square(samples[: n * window].reshape(n, window) / 32768.0), axis=1))
    voiced = np.flatnonzero(rms >= threshold)
    return 0.0 if voiced.size == 0 else (voiced[-1] - voiced[0] + 1) * window / rate


async def eventually(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds, for state that changes with no event to wait for (the
    FFI ends a closed stream in its own time)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 (nothing to wait on but the state itself)
            await asyncio.sleep(0.01)


def open_ffi_subscriptions() -> int:
    """Queues subscribed to the FFI's events: one per open audio or video stream (and per
    request awaiting its answer), so a stream left open shows here."""
    return len(FfiClient.instance.queue._subscribers)


def camera_frame(width: int, height: int, shade: int) -> rtc.VideoFrame:
    """An RGBA frame with a gradient (a real picture for the JPEG encoder, not a flat colour)."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, axis=0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, axis=1)
    rgba = np.stack([x, y, np.full_like(x, shade % 256), np.full_like(x, 255)], axis=-1)
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())


class _Waiters:
    """Futures woken on every recorded change (waiting without polling)."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        futures, self._futures = self._futures, []
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    async def until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() >= deadline:
                raise TimeoutError(f"{what}: not reached within {timeout} s")
            fut = loop.create_future()
            self._futures.append(fut)
            try:
                await asyncio.wait_for(fut, deadline - loop.time())
            except TimeoutError:
                continue


def loopback_settings(
    oai: OpenAIServer, dg: DeepgramLoopback, env: dict[str, str] | None = None
) -> Settings:
    """Settings pointing every provider at the loopback servers (plus ``env``)."""
    return load_settings(
        {
            "DEEPGRAM_API_KEY": "dg-test",
            "OPENAI_API_KEY": "sk-test",
            "OPENAI_BASE_URL": oai.base_url,
            "DEEPGRAM_STT_URL": dg.stt_url,
            "DEEPGRAM_TTS_URL": dg.tts_url,
            "LLM_MODEL": AUDIO_MODEL,
            **(env or {}),
        },
        dotenv=None,
    )


@dataclass
class Harness:
    """One session in one room, with what a test drives and what it observes."""

    room: LocalRoom
    user: RemoteParticipant
    mic: Microphone
    camera: VideoFeed
    parts: SessionParts
    oai: OpenAIServer
    dg: DeepgramLoopback
    events: list[AgentEvent] = field(default_factory=list)
    _camera_task: asyncio.Task[None] | None = None
    _waiters: _Waiters = field(default_factory=_Waiters)
    _closed: bool = False

    @property
    def conversation(self) -> Conversation:
        return self.parts.conversation

    # -- driving

    def start_camera(self) -> None:
        async def feed() -> None:
            shade = 0
            while True:  # a live camera: a new frame every CAMERA_INTERVAL
                self.camera.capture_frame(camera_frame(*CAMERA_SIZE, shade))
                shade += 1
                await asyncio.sleep(CAMERA_INTERVAL)

        self._camera_task = asyncio.create_task(feed(), name="test:camera")

    async def stop_camera(self) -> None:
        task, self._camera_task = self._camera_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def utter(self, text: str, *, transcript: str | None = None) -> Utterance:
        """Speak ``text`` into the microphone in real time and return once it has been spoken;
        the loopback STT will "recognise" it as ``transcript`` (default: ``text``). Silence
        follows by itself (an idle source)."""
        self.dg.transcripts.append(transcript if transcript is not None else text)
        samples = speak(text, SAMPLE_RATE)
        started = time.perf_counter() + self.mic.source.queued_duration
        await self.mic.push(samples, SAMPLE_RATE)
        await self.mic.wait_for_playout()
        return Utterance(
            text=text,
            seconds=samples.size / SAMPLE_RATE,
            voiced_seconds=voiced_span(samples, SAMPLE_RATE),
            started_at=started,
            ended_at=time.perf_counter(),
        )

    # -- observing

    def record(self, name: str, *args: Any) -> None:
        self.events.append(AgentEvent(name, time.perf_counter(), args))
        self._waiters.notify()

    def named(self, name: str) -> list[AgentEvent]:
        return [e for e in self.events if e.name == name]

    async def wait_for_event(
        self, name: str, count: int = 1, *, timeout: float = 20.0
    ) -> AgentEvent:
        """The ``count``-th event ``name`` (1-based), once it happened."""
        await self._waiters.until(
            lambda: len(self.named(name)) >= count, timeout, f"{name} x{count}"
        )
        return self.named(name)[count - 1]

    async def wait_for_replies(self, count: int, *, timeout: float = 20.0) -> AgentEvent:
        """Until ``count`` replies were committed (fully played or interrupted)."""

        def finished() -> list[AgentEvent]:
            ends = ("agent_speech_committed", "agent_speech_interrupted")
            return [e for e in self.events if e.name in ends]

        await self._waiters.until(lambda: len(finished()) >= count, timeout, f"{count} replies")
        return finished()[count - 1]

    async def wait_for_requests(self, count: int, *, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            await self.oai.wait_for_requests(count)

    # -- teardown

    async def aclose(self) -> None:
        """Close like a job does: the session while the room is connected, then the room."""
        if self._closed:
            return
        self._closed = True
        await self.stop_camera()
        await self.parts.aclose()
        await self.room.aclose()
        await self.dg.aclose()
        await self.oai.stop()


class SessionFactory(Protocol):
    def __call__(
        self,
        responder: Responder,
        *,
        options: ConversationOptions | None = None,
        env: dict[str, str] | None = None,
        listen: ListenOptions | None = None,
        speak: SpeakOptions | None = None,
    ) -> Awaitable[Harness]: ...


async def build_harness(
    responder: Responder,
    *,
    options: ConversationOptions | None = None,
    env: dict[str, str] | None = None,
    listen: ListenOptions | None = None,
    speak: SpeakOptions | None = None,
) -> Harness:
    """Servers, room, participant with microphone and camera, and a started session."""
    oai = OpenAIServer(responder)
    await oai.start()
    dg = DeepgramLoopback(listen=listen, speak=speak)
    await dg.start()
    settings = loopback_settings(oai, dg, env)
    room = LocalRoom()
    user = room.add_participant("user")
    mic = user.publish_microphone()
    camera = user.publish_camera(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1])
    parts = build_session(
        as_rtc_room(room),
        user.identity,
        settings,
        vad=load_vad(settings.vad_provider, settings.turn_detector),
        http_session=aiohttp.ClientSession(),
        options=options,
    )
    harness = Harness(room=room, user=user, mic=mic, camera=camera, parts=parts, oai=oai, dg=dg)
    for name in AGENT_EVENTS:
        parts.conversation.pipeline.on(name, lambda *args, _n=name: harness.record(_n, *args))
    harness.start_camera()
    await parts.start()
    return harness


def _known_plugin_error(context: dict[str, Any]) -> bool:
    """livekit-plugins-deepgram 0.7.4, SpeechStream._run: cancelling the stream, or its own
    reconnect (``update_options``), cancels its send/recv/keepalive tasks while ``asyncio.wait``
    holds their ``gather``; the gather's CancelledError is never retrieved. A session's close
    avoids it (ReconnectingStream lets the stream end by itself); tests that make the plugin
    reconnect still cause it."""
    exc = context.get("exception")
    if not isinstance(exc, asyncio.CancelledError) or "_GatheringFuture" not in str(
        context.get("message")
    ):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    return any(f.filename.endswith("livekit/plugins/deepgram/stt.py") for f in frames)


def _describe_error(context: dict[str, Any]) -> str:
    exc = context.get("exception")
    where = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else ""
    return f"{context.get('message')}: {exc!r}\n{where}"


def _describe(task: asyncio.Task[Any]) -> str:
    coro = task.get_coro()
    return f"{task.get_name()} ({getattr(coro, '__qualname__', coro)})"


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Errors the event loop reported (unretrieved exceptions, failing callbacks); the test
    fails if any remain at teardown."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield errors
    gc.collect()  # futures whose exception nobody retrieved report it when collected
    loop.set_exception_handler(previous)
    unexpected = [e for e in errors if not _known_plugin_error(e)]
    assert not unexpected, "\n".join(_describe_error(e) for e in unexpected)


@pytest.fixture
async def make_session(loop_errors: list[dict[str, Any]]) -> AsyncIterator[SessionFactory]:
    """Build sessions (``await make_session(responder, options=...)``); all are closed at
    teardown, which then checks that no task is left."""
    built: list[Harness] = []
    own = asyncio.current_task()
    before = {t for t in asyncio.all_tasks() if t is not own}

    async def make(responder: Responder, **kwargs: Any) -> Harness:
        harness = await build_harness(responder, **kwargs)
        built.append(harness)
        return harness

    yield make
    for harness in reversed(built):
        await harness.aclose()
    current = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not current and t not in before and not t.done()]
    assert not left, "tasks left after teardown: " + ", ".join(_describe(t) for t in left)


# --- fault and security tests (tests/test_faults_*.py) ----------------------------------------


@dataclass
class LeakCheck:
    """Random fake provider keys, and everything to scan for them at teardown."""

    env: dict[str, str]
    """DEEPGRAM_API_KEY and OPENAI_API_KEY values for ``make_session(env=...)``."""
    outputs: list[Callable[[], list[str]]] = field(default_factory=list)
    """More text to scan, read at teardown (e.g. what a room's agent sent)."""

    def watch_room(self, room: LocalRoom) -> None:
        def sent() -> list[str]:
            out = room.outbox
            texts = [d.payload.decode("utf-8", "replace") for d in out.data]
            texts += [t.text for t in out.transcriptions]
            texts += [json.dumps(dict(u.changed)) for u in out.attribute_updates]
            return texts

        self.outputs.append(sent)

    def leaks(self, texts: list[str]) -> list[str]:
        return [name for name, value in self.env.items() if any(value in t for t in texts)]


def _record_texts(records: list[logging.LogRecord]) -> list[str]:
    """Each record as the worker prints it (the framework's JSON formatter: message, extra
    fields, traceback) and as a console formatter does (with the stack)."""
    formatters = [JsonFormatter(), logging.Formatter("%(name)s %(message)s")]
    return [f.format(r) for r in records for f in formatters]


@pytest.fixture
def leak_check(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> Iterator[LeakCheck]:
    """Fails the test if a fake key shows up in any log record (every logger, DEBUG and up,
    formatted as the worker prints it), in stdout/stderr, or in what a watched room received."""
    caplog.set_level(logging.DEBUG)
    check = LeakCheck(
        env={
            "DEEPGRAM_API_KEY": f"dgleak{secrets.token_hex(12)}",
            "OPENAI_API_KEY": f"sk-leak{secrets.token_hex(12)}",
        }
    )
    yield check
    captured = capsys.readouterr()
    records = [*caplog.get_records("setup"), *caplog.get_records("call"), *caplog.records]
    texts = [*_record_texts(records), captured.out, captured.err]
    for output in check.outputs:
        texts += output()
    leaked = check.leaks(texts)
    assert not leaked, f"fake keys found in the output: {leaked}"


@pytest.fixture
async def make_faulty_session(
    leak_check: LeakCheck, make_session: SessionFactory
) -> SessionFactory:
    """``make_session`` with the leak check's fake keys, and its room watched for them. The
    sessions are closed (and tasks checked) before the leak check scans."""

    async def make(responder: Responder, **kwargs: Any) -> Harness:
        env = {**leak_check.env, **(kwargs.pop("env", None) or {})}
        harness = await make_session(responder, env=env, **kwargs)
        leak_check.watch_room(harness.room)
        return harness

    return make
