"""A loopback Deepgram server: the listen (STT) and speak (TTS) websockets on 127.0.0.1.

It speaks the wire protocol the real ``livekit-plugins-deepgram`` 0.7.4 client uses, so tests and
benchmarks drive the real plugin against it (``deepgram.STT(base_url=server.stt_url, ...)``,
``deepgram.TTS(base_url=server.tts_url, ...)``, both with ``http_session=`` and any api key).

Listen (``/v1/listen`` websocket): binary PCM16 at the query's ``sample_rate``/``channels``, plus
``KeepAlive``, ``Finalize`` and ``CloseStream`` text messages. Speech is "recognised" by energy on
10 ms windows: a voiced window opens a segment (``SpeechStarted``), ``min_gap`` seconds of
unvoiced audio close it, and its final ``Results`` (``is_final`` and ``speech_final``) carries the
next text of :attr:`DeepgramLoopback.transcripts` (or ``default_transcript``).

Timeline choice: finals are scheduled on the AUDIO timeline, not the wall clock. The final is
sent once the server has received ``final_delay`` seconds of audio past the last voiced window
(effectively ``max(final_delay, min_gap)``). A client streaming in real time (a room, a
benchmark) therefore gets the final ``final_delay`` after speech ends (plus up to one 50 ms client
chunk), while a test pushing audio faster than real time gets the same, deterministic result
whatever the machine's load. ``Finalize``/``CloseStream`` send any pending final at once
(``from_finalize``), like Deepgram.

Speak (``/v1/speak`` websocket): ``Speak`` texts accumulate; each ``Flush`` is answered, after
``ttfb`` seconds, with binary linear16 audio at the query's ``sample_rate`` and then ``Flushed``.
Flushes are synthesised one after another per connection while messages keep being recorded, so
tests can see when each ``Flush`` arrived relative to the text. ``Clear`` drops the buffer,
``Close`` finishes pending flushes and closes. ``POST /v1/speak`` with ``{"text"}`` returns raw
PCM. The audio is a speech-like voiced tone (``voice="tone"``, about ``seconds_per_char`` per
character, deterministic and cheap) or real espeak-ng speech (``voice="espeak"``).

Everything is recorded with ``time.monotonic()`` timestamps. Fault injection (mutable at any
time): :class:`ListenFaults` and :class:`SpeakFaults`.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal

import numpy as np
from aiohttp import WSMsgType, web

logger = logging.getLogger("tests.loopback.deepgram")

_WINDOW_SECONDS = 0.01
_PUNCTUATION = ".,!?;:\"'()"


# ----------------------------------------------------------------------------- options / faults


@dataclass
class ListenOptions:
    """How the listen endpoint "recognises" speech. Mutable between connections."""

    final_delay: float = 0.15
    """Audio seconds after the last voiced window before the final Results is sent."""
    min_gap: float = 0.1
    """Unvoiced audio (seconds) that ends a speech segment; raise it to keep pauses inside one."""
    energy_threshold: float = 0.01
    """RMS (full scale = 1.0) at or above which a 10 ms window counts as voiced."""
    interim_interval: float | None = 0.5
    """Audio seconds between interim Results while speaking (if the client asked for them)."""
    default_transcript: str = "hello there"
    """Text of a final when :attr:`DeepgramLoopback.transcripts` is empty."""
    confidence: float = 0.98


@dataclass
class ListenFaults:
    """Fault injection for the listen endpoint; counters are decremented as faults fire."""

    refuse_connections: int = 0
    """The next N connection attempts are answered with HTTP 500."""
    drop_after_audio: float | None = None
    """Close a connection (code 1011) once it has received this many seconds of audio."""
    drop_connections: int = 1
    """How many connections ``drop_after_audio`` applies to."""


@dataclass
class SpeakOptions:
    """How the speak endpoint answers. Mutable between flushes."""

    ttfb: float = 0.15
    """Wall-clock seconds from a Flush to its first audio message."""
    seconds_per_char: float = 0.06
    """Length of the tone voice's audio per character of text."""
    voice: Literal["tone", "espeak"] = "tone"
    chunk_seconds: float = 0.1
    """Audio per binary message (sent as fast as the socket takes them, like Deepgram)."""


@dataclass
class SpeakFaults:
    """Fault injection for the speak endpoint; counters are decremented as faults fire."""

    refuse_connections: int = 0
    """The next N connection attempts (websocket or POST) are answered with HTTP 500."""
    close_mid_audio: int = 0
    """The next N flushes send about half their audio, then the socket is closed (code 1011)."""


# ----------------------------------------------------------------------------------- records


@dataclass
class FinalRecord:
    """One final Results sent on the listen endpoint."""

    connection: int
    transcript: str
    speech_start: float
    """Stream audio seconds (since the connection opened) where the segment's voice began."""
    speech_end: float
    """Stream audio seconds where the segment's last voiced window ended."""
    audio_time: float
    """Stream audio seconds received when the final was sent."""
    sent_at: float
    """``time.monotonic()`` right after sending."""
    from_finalize: bool


@dataclass
class ListenConnection:
    index: int
    query: dict[str, str]
    request_id: str
    opened_at: float
    closed_at: float | None = None
    audio_seconds: float = 0.0
    control: list[tuple[float, str]] = field(default_factory=list)
    """``(monotonic time, message type)`` of every text message received."""
    speech_started: list[float] = field(default_factory=list)
    """Stream audio seconds of every SpeechStarted sent."""
    interims: int = 0
    finals: list[FinalRecord] = field(default_factory=list)
    dropped: bool = False


@dataclass
class SpeakMessage:
    """One text message received on the speak endpoint."""

    connection: int
    at: float
    type: str
    text: str = ""


@dataclass
class FlushRecord:
    """One Flush on the speak endpoint and what was sent for it."""

    connection: int
    text: str
    flush_at: float
    first_audio_at: float | None = None
    flushed_at: float | None = None
    """When ``Flushed`` was sent (None if the flush was cut off)."""
    audio_seconds: float = 0.0
    closed_mid_audio: bool = False


@dataclass
class SpeakConnection:
    index: int
    query: dict[str, str]
    request_id: str
    opened_at: float
    closed_at: float | None = None
    messages: list[SpeakMessage] = field(default_factory=list)
    flushes: list[FlushRecord] = field(default_factory=list)


# ------------------------------------------------------------------------------------- audio


def tone_speech(text: str, sample_rate: int, seconds_per_char: float) -> np.ndarray:
    """A deterministic speech-like signal for ``text``: one voiced, pitch-gliding burst per word.

    About ``seconds_per_char`` per character (spaces become short pauses), never silent for
    non-blank text, int16 mono.
    """
    words = text.split()
    if not words:
        return np.zeros(0, dtype=np.int16)
    pieces: list[np.ndarray] = []
    gap = np.zeros(round(seconds_per_char * sample_rate), dtype=np.float32)
    for i, word in enumerate(words):
        n = max(round(len(word) * seconds_per_char * sample_rate), 1)
        t = np.arange(n, dtype=np.float32) / sample_rate
        f0 = 115.0 + 25.0 * np.sin(2 * np.pi * (2.5 * t + 0.37 * i))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voiced = sum(np.sin(k * phase) / k for k in range(1, 6))
        envelope = np.sqrt(np.sin(np.pi * (np.arange(n) + 0.5) / n))
        pieces.append((0.25 * envelope * voiced).astype(np.float32))
        if i < len(words) - 1:
            pieces.append(gap)
    signal = np.concatenate(pieces)
    return np.clip(signal * 32767.0, -32768, 32767).astype(np.int16)


async def _espeak_speech(text: str, sample_rate: int) -> np.ndarray:
    from tests import speech

    if not text.strip():
        return np.zeros(0, dtype=np.int16)
    return await asyncio.to_thread(speech.speak, text, sample_rate)


# -------------------------------------------------------------------------------- recogniser


@dataclass
class _Segment:
    start: float
    last_voiced_end: float
    last_interim_at: float
    interims_sent: int = 0


class _Recognizer:
    """Per-connection energy "recogniser": turns PCM into SpeechStarted/Results messages."""

    def __init__(
        self,
        *,
        server: DeepgramLoopback,
        conn: ListenConnection,
        ws: web.WebSocketResponse,
    ) -> None:
        self._server = server
        self._conn = conn
        self._ws = ws
        self._sample_rate = int(conn.query.get("sample_rate", "16000"))
        self._channels = int(conn.query.get("channels", "1"))
        self._interim = conn.query.get("interim_results", "false") == "true"
        self._vad_events = conn.query.get("vad_events", "false") == "true"
        self._window = max(round(self._sample_rate * _WINDOW_SECONDS), 1)
        self._bytes = b""
        self._samples = np.zeros(0, dtype=np.float32)
        self._pos = 0  # samples (per channel) analysed so far
        self._current: _Segment | None = None
        self._pending: list[_Segment] = []

    @property
    def audio_time(self) -> float:
        return self._pos / self._sample_rate

    async def feed(self, data: bytes) -> None:
        frame_bytes = 2 * self._channels
        self._conn.audio_seconds += len(data) / (frame_bytes * self._sample_rate)
        buf = self._bytes + data
        usable = len(buf) - len(buf) % frame_bytes
        self._bytes = buf[usable:]
        pcm = np.frombuffer(buf[:usable], dtype=np.int16).astype(np.float32) / 32768.0
        if self._channels > 1:
            pcm = pcm.reshape(-1, self._channels).mean(axis=1)
        samples = np.concatenate([self._samples, pcm])
        n_windows = samples.size // self._window
        if n_windows:
            windows = samples[: n_windows * self._window].reshape(n_windows, self._window)
            rms = np.sqrt(np.mean(np.square(windows), axis=1))
            for value in rms:
                start = self.audio_time
                self._pos += self._window
                await self._on_window(bool(value >= self._server.listen.energy_threshold), start)
        self._samples = samples[n_windows * self._window :]

    async def _on_window(self, voiced: bool, start: float) -> None:
        opts = self._server.listen
        now = self.audio_time
        if voiced:
            if self._current is None:
                self._current = _Segment(start=start, last_voiced_end=now, last_interim_at=start)
                self._conn.speech_started.append(start)
                if self._vad_events:
                    await self._send({"type": "SpeechStarted", "channel": [0], "timestamp": start})
            self._current.last_voiced_end = now
        elif self._current is not None and now - self._current.last_voiced_end >= opts.min_gap:
            self._pending.append(self._current)
            self._current = None

        while self._pending and now - self._pending[0].last_voiced_end >= opts.final_delay:
            await self._send_final(self._pending.pop(0), from_finalize=False)

        seg = self._current
        if (
            seg is not None
            and self._interim
            and opts.interim_interval is not None
            and now - seg.last_interim_at >= opts.interim_interval
        ):
            seg.last_interim_at = now
            await self._send_interim(seg)

    async def finalize(self) -> None:
        """Answer Finalize/CloseStream: every segment still open or pending is finalised now."""
        segments = [*self._pending, *([self._current] if self._current else [])]
        self._pending, self._current = [], None
        if not segments:
            await self._send(self._results("", self.audio_time, self.audio_time, True, False, True))
        for seg in segments:
            await self._send_final(seg, from_finalize=True)

    async def _send_interim(self, seg: _Segment) -> None:
        queued = self._server.transcripts
        words = (queued[0] if queued else self._server.listen.default_transcript).split()
        count = min(seg.interims_sent + 1, len(words) - 1)
        if count <= 0:
            return
        seg.interims_sent += 1
        self._conn.interims += 1
        text = " ".join(words[:count])
        await self._send(self._results(text, seg.start, seg.last_voiced_end, False, False, False))

    async def _send_final(self, seg: _Segment, *, from_finalize: bool) -> None:
        queued = self._server.transcripts
        text = queued.popleft() if queued else self._server.listen.default_transcript
        await self._send(
            self._results(text, seg.start, seg.last_voiced_end, True, True, from_finalize)
        )
        record = FinalRecord(
            connection=self._conn.index,
            transcript=text,
            speech_start=seg.start,
            speech_end=seg.last_voiced_end,
            audio_time=self.audio_time,
            sent_at=time.monotonic(),
            from_finalize=from_finalize,
        )
        self._conn.finals.append(record)
        self._server._notify()
        logger.debug("final sent", extra={"connection": self._conn.index, "text": text})

    def _results(
        self,
        transcript: str,
        start: float,
        end: float,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> dict[str, Any]:
        confidence = self._server.listen.confidence
        tokens = transcript.split()
        span = max(end - start, 0.01)
        words = [
            {
                "word": token.strip(_PUNCTUATION).lower(),
                "start": round(start + span * i / len(tokens), 3),
                "end": round(start + span * (i + 1) / len(tokens), 3),
                "confidence": confidence,
                "punctuated_word": token,
            }
            for i, token in enumerate(tokens)
        ]
        return {
            "type": "Results",
            "channel_index": [0, 1],
            "duration": round(end - start, 3),
            "start": round(start, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "from_finalize": from_finalize,
            "channel": {
                "alternatives": [
                    {"transcript": transcript, "confidence": confidence, "words": words}
                ]
            },
            "metadata": {
                "request_id": self._conn.request_id,
                "model_uuid": "00000000-0000-0000-0000-000000000000",
                "model_info": {"name": "loopback", "version": "0", "arch": "loopback"},
            },
        }

    async def _send(self, message: dict[str, Any]) -> None:
        await self._ws.send_str(json.dumps(message))


# ------------------------------------------------------------------------------------ server


@dataclass
class _FlushJob:
    record: FlushRecord
    sequence_id: int


class DeepgramLoopback:
    """The loopback server. ``async with DeepgramLoopback() as server: ...``.

    Attributes tests drive: :attr:`transcripts` (the script of STT finals), :attr:`listen`,
    :attr:`speak` (options), :attr:`listen_faults`, :attr:`speak_faults`. Records:
    :attr:`listen_connections`, :attr:`speak_connections` and the flat views below.
    """

    def __init__(
        self,
        *,
        listen: ListenOptions | None = None,
        speak: SpeakOptions | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.listen = listen or ListenOptions()
        self.speak = speak or SpeakOptions()
        self.listen_faults = ListenFaults()
        self.speak_faults = SpeakFaults()
        self.transcripts: collections.deque[str] = collections.deque()
        self.listen_connections: list[ListenConnection] = []
        self.speak_connections: list[SpeakConnection] = []
        self.refused: list[tuple[float, str]] = []
        """``(monotonic time, path)`` of every connection refused by fault injection."""
        self._host = host
        self._port = 0
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()

    # -- lifecycle

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/listen", self._listen_ws)
        app.router.add_get("/v1/speak", self._speak_ws)
        app.router.add_post("/v1/speak", self._speak_post)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, 0, shutdown_timeout=1.0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        logger.debug("deepgram loopback listening", extra={"port": self._port})

    async def aclose(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DeepgramLoopback:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- addresses

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def stt_url(self) -> str:
        return f"{self.base_url}/v1/listen"

    @property
    def tts_url(self) -> str:
        return f"{self.base_url}/v1/speak"

    # -- flat views of the records

    @property
    def finals(self) -> list[FinalRecord]:
        return [f for c in self.listen_connections for f in c.finals]

    @property
    def received_audio_seconds(self) -> float:
        return sum(c.audio_seconds for c in self.listen_connections)

    @property
    def speak_messages(self) -> list[SpeakMessage]:
        return sorted((m for c in self.speak_connections for m in c.messages), key=lambda m: m.at)

    @property
    def flushes(self) -> list[FlushRecord]:
        return sorted(
            (f for c in self.speak_connections for f in c.flushes), key=lambda f: f.flush_at
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds; it is re-checked whenever something is recorded."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()

    # -- shared handshake checks

    def _refuse(self, request: web.Request, faults: ListenFaults | SpeakFaults) -> bool:
        if faults.refuse_connections <= 0:
            return False
        faults.refuse_connections -= 1
        self.refused.append((time.monotonic(), request.path))
        self._notify()
        return True

    @staticmethod
    def _unauthorized(request: web.Request) -> bool:
        return not request.headers.get("Authorization", "").startswith("Token ")

    # -- listen

    async def _listen_ws(self, request: web.Request) -> web.StreamResponse:
        if self._unauthorized(request):
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        if self._refuse(request, self.listen_faults):
            return web.json_response({"err_code": "INTERNAL", "err_msg": "injected"}, status=500)

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = ListenConnection(
            index=len(self.listen_connections),
            query=dict(request.query),
            request_id=str(uuid.uuid4()),
            opened_at=time.monotonic(),
        )
        self.listen_connections.append(conn)
        self._sockets.add(ws)
        self._notify()
        recognizer = _Recognizer(server=self, conn=conn, ws=ws)
        drop = self._take_listen_drop()
        try:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY:
                    await recognizer.feed(msg.data)
                    if drop is not None and conn.audio_seconds >= drop:
                        conn.dropped = True
                        await ws.close(code=1011, message=b"injected drop")
                        break
                elif msg.type == WSMsgType.TEXT:
                    kind = str(json.loads(msg.data).get("type", ""))
                    conn.control.append((time.monotonic(), kind))
                    if kind == "Finalize":
                        await recognizer.finalize()
                    elif kind == "CloseStream":
                        await recognizer.finalize()
                        await ws.send_str(json.dumps(self._listen_metadata(conn)))
                        await ws.close()
                        break
                self._notify()
        except ConnectionResetError:
            logger.debug("client connection reset", extra={"path": request.path})
        finally:
            conn.closed_at = time.monotonic()
            self._sockets.discard(ws)
            self._notify()
        return ws

    def _take_listen_drop(self) -> float | None:
        faults = self.listen_faults
        if faults.drop_after_audio is None or faults.drop_connections <= 0:
            return None
        faults.drop_connections -= 1
        return faults.drop_after_audio

    @staticmethod
    def _listen_metadata(conn: ListenConnection) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": conn.request_id,
            "sha256": "0" * 64,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "duration": round(conn.audio_seconds, 3),
            "channels": 1,
        }

    # -- speak

    async def _speak_ws(self, request: web.Request) -> web.StreamResponse:
        if self._unauthorized(request):
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        if self._refuse(request, self.speak_faults):
            return web.json_response({"err_code": "INTERNAL", "err_msg": "injected"}, status=500)

        ws = web.WebSocketResponse()
        await ws.prepare(request)
        conn = SpeakConnection(
            index=len(self.speak_connections),
            query=dict(request.query),
            request_id=str(uuid.uuid4()),
            opened_at=time.monotonic(),
        )
        self.speak_connections.append(conn)
        self._sockets.add(ws)
        self._notify()
        await ws.send_str(
            json.dumps(
                {
                    "type": "Metadata",
                    "request_id": conn.request_id,
                    "model_name": conn.query.get("model", ""),
                    "model_version": "loopback",
                    "model_uuid": "00000000-0000-0000-0000-000000000000",
                }
            )
        )
        jobs: asyncio.Queue[_FlushJob | None] = asyncio.Queue()
        worker = asyncio.create_task(self._speak_worker(ws, conn, jobs), name="dg-speak-worker")
        text: list[str] = []
        graceful = False
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                data = json.loads(msg.data)
                kind = str(data.get("type", ""))
                conn.messages.append(
                    SpeakMessage(conn.index, time.monotonic(), kind, str(data.get("text", "")))
                )
                self._notify()
                if kind == "Speak":
                    text.append(str(data.get("text", "")))
                elif kind == "Flush":
                    record = FlushRecord(conn.index, "".join(text), time.monotonic())
                    conn.flushes.append(record)
                    text.clear()
                    jobs.put_nowait(_FlushJob(record, len(conn.flushes)))
                elif kind == "Clear":
                    text.clear()
                    await ws.send_str(json.dumps({"type": "Cleared", "sequence_id": 0}))
                elif kind == "Close":
                    graceful = True
                    break
            if graceful:
                jobs.put_nowait(None)
                await worker
                await ws.close()
        except ConnectionResetError:
            logger.debug("client connection reset", extra={"path": request.path})
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            conn.closed_at = time.monotonic()
            self._sockets.discard(ws)
            self._notify()
        return ws

    async def _speak_worker(
        self,
        ws: web.WebSocketResponse,
        conn: SpeakConnection,
        jobs: asyncio.Queue[_FlushJob | None],
    ) -> None:
        sample_rate = int(conn.query.get("sample_rate", "24000"))
        while (job := await jobs.get()) is not None:
            await asyncio.sleep(self.speak.ttfb)
            pcm = (await self.synthesize(job.record.text, sample_rate)).tobytes()
            step = max(round(self.speak.chunk_seconds * sample_rate), 1) * 2
            chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)]
            cut = None
            if self.speak_faults.close_mid_audio > 0:
                self.speak_faults.close_mid_audio -= 1
                cut = max(len(chunks) // 2, 1)
            try:
                for i, chunk in enumerate(chunks):
                    if cut is not None and i >= cut:
                        break
                    await ws.send_bytes(chunk)
                    if job.record.first_audio_at is None:
                        job.record.first_audio_at = time.monotonic()
                    job.record.audio_seconds += len(chunk) / (2 * sample_rate)
                if cut is not None:
                    job.record.closed_mid_audio = True
                    await ws.close(code=1011, message=b"injected close")
                    return
                await ws.send_str(json.dumps({"type": "Flushed", "sequence_id": job.sequence_id}))
                job.record.flushed_at = time.monotonic()
            except ConnectionResetError:
                return
            finally:
                self._notify()

    async def synthesize(self, text: str, sample_rate: int) -> np.ndarray:
        """The audio this server speaks for ``text`` (int16 mono)."""
        if self.speak.voice == "espeak":
            return await _espeak_speech(text, sample_rate)
        return tone_speech(text, sample_rate, self.speak.seconds_per_char)

    async def _speak_post(self, request: web.Request) -> web.StreamResponse:
        if self._unauthorized(request):
            return web.json_response({"err_code": "INVALID_AUTH"}, status=401)
        if self._refuse(request, self.speak_faults):
            return web.json_response({"err_code": "INTERNAL", "err_msg": "injected"}, status=500)
        body = await request.json()
        text = str(body.get("text", ""))
        sample_rate = int(request.query.get("sample_rate", "24000"))
        await asyncio.sleep(self.speak.ttfb)
        pcm = await self.synthesize(text, sample_rate)
        return web.Response(body=pcm.tobytes(), content_type="application/octet-stream")
