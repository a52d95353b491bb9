"""``python -m worker talk``: one conversation with the agent from an audio file, no server needed.

The session is the one a room job builds (:func:`worker.session.build_session`), in the
in-process :class:`~worker.local_room.LocalRoom`: INPUT (any audio FFmpeg decodes) is the
participant's microphone, played in real time; an optional image is their camera; the agent's
audio track is recorded to a WAV; every metrics data message also goes to a JSONL file
(:class:`JsonlFileSink`).

Providers (:func:`talk_config`), decided per provider:

- STT/TTS: without ``DEEPGRAM_API_KEY``, Whisper (``STT_PROVIDER=whisper``) and Piper
  (``TTS_PROVIDER=piper``), unless STT_PROVIDER/TTS_PROVIDER explicitly say ``deepgram`` (a
  configuration error then). With the key, whatever is configured (Deepgram by default).
- LLM: without ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``, a :class:`LocalLLMServer`
  (llama.cpp serving SmolLM2-135M) started for the run, ``LLM_MODEL`` = its model name.
  Otherwise the configured OpenAI(-compatible) server. The local model has no vision, so
  with it an ``--image`` is not sent (a note says so).

When is the agent done answering? The room shows it: the agent sets ``lk.agent.state``
(thinking/speaking/listening) and publishes the user's final transcripts. After the input
has played, ``settle`` seconds are left for the pipeline to notice the end of speech and
transcribe it; then the run waits until the agent is not thinking or speaking, its last
state change came after the user's last final transcript, the conversation has no reply
requested or playing and no transcript of the user's last words still to come, and the
last reply's ``turn`` summary is out (or idle held ``grace`` seconds), at most
``reply_timeout`` seconds from the end of the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from worker.config import ConfigError, Need, Settings, load_settings, read_dotenv

if TYPE_CHECKING:
    from livekit import rtc
    from livekit.agents import vad as agents_vad
    from PIL.Image import Image as PILImage

    from worker.local_room import LocalRoom, Microphone, VideoFeed
    from worker.pipeline.conversation import Conversation

logger = logging.getLogger("worker.talk")

USER_IDENTITY = "user"
AGENT_STATE = "lk.agent.state"
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000
MAX_IMAGE_SIDE = 1280
"""Camera frames are scaled down to fit this (the LLM gets at most 768 px anyway)."""


T = TypeVar("T")


class Stopped(Exception):
    """The run was stopped by SIGTERM; everything it had started was closed first."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_stoppable(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGTERM cancels ``main`` as Ctrl-C does, so its cleanup
    runs (the local LLM server stops with it) instead of the process dying on the spot (its
    children would be left running). Raises :class:`Stopped` after a SIGTERM."""

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        received: list[int] = []

        def stop() -> None:
            received.append(signal.SIGTERM)
            task.cancel()

        loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            return await main
        except asyncio.CancelledError:
            if received:
                raise Stopped(received[0]) from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    return asyncio.run(guarded())


class TalkError(Exception):
    """Bad input for ``talk``: one line per problem (the CLI prints them, exit status 2)."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class TalkOptions:
    input: Path
    image: Path | None = None
    out: Path = Path("reply.wav")
    metrics: Path | None = None
    transcript: Path | None = None
    fast: bool = False
    """Drop the lead-in and the input's leading/trailing silence (see :func:`trim_silence`)."""
    reply_timeout: float = 60.0
    """Longest wait for the agent to finish answering, from the end of the input."""
    settle: float = 2.5
    """Seconds after the input's end for the pipeline to find its end of speech and transcribe
    it (VAD silence window 0.55 s + STT), before "the agent is idle" can mean "done"."""
    grace: float = 1.0
    """How long the agent must stay idle to count as done when no turn summary follows."""
    lead_in: float = 0.5
    """Silence before the input in real-time mode, as when someone unmutes and then speaks."""
    camera_fps: float = 2.0
    """Rate the image is sent as camera frames (the agent keeps only the newest)."""


# --------------------------------------------------------------------------------------------
# Providers


@dataclass(frozen=True)
class TalkConfig:
    settings: Settings
    local_llm: bool
    """Start a LocalLLMServer and point the LLM at it."""


def talk_config(
    environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")
) -> TalkConfig:
    """Settings for ``talk``: local providers where no cloud key is set (module docstring).

    Raises :class:`ConfigError` with every problem (the settings' own and the provider choice).
    """
    from worker.providers.local_llm_server import LOCAL_MODEL_NAME

    env: dict[str, str] = {}
    if dotenv is not None and dotenv.is_file():
        env.update(read_dotenv(dotenv))
    env.update(os.environ if environ is None else environ)

    def value(name: str) -> str:
        return (env.get(name) or "").strip()

    problems: list[str] = []
    overrides: dict[str, str] = {}
    if not value("DEEPGRAM_API_KEY"):
        for var, local in (("STT_PROVIDER", "whisper"), ("TTS_PROVIDER", "piper")):
            chosen = value(var).lower()
            if not chosen:
                overrides[var] = local
            elif chosen == "deepgram":
                problems.append(
                    f"{var}: is deepgram but DEEPGRAM_API_KEY is not set "
                    f"(set the key, or unset {var} to use {local} offline)"
                )
    local_llm = not value("OPENAI_API_KEY") and not value("OPENAI_BASE_URL")
    if local_llm:
        overrides["LLM_MODEL"] = LOCAL_MODEL_NAME
    try:
        settings = load_settings({**env, **overrides}, dotenv=None, needs=(Need.PROVIDER_PACKAGES,))
    except ConfigError as e:
        raise ConfigError([*problems, *e.problems]) from None
    if problems:
        raise ConfigError(problems)
    return TalkConfig(settings=settings, local_llm=local_llm)


def describe_providers(config: TalkConfig) -> str:
    s = config.settings
    llm = f"{s.llm_model} (local llama.cpp server)" if config.local_llm else s.llm_model
    return f"stt {s.stt_provider}, tts {s.tts_provider}, llm {llm}"


# --------------------------------------------------------------------------------------------
# Input: an audio file and an image


@dataclass(frozen=True)
class InputAudio:
    samples: np.ndarray
    """Mono int16 (channels averaged)."""
    sample_rate: int
    channels: int
    codec: str
    """What the file held, as FFmpeg names it: ``pcm_s16le``, ``pcm_f32le``, ``mp3``, ``opus``."""

    @property
    def duration(self) -> float:
        return self.samples.size / self.sample_rate


def decode_audio(path: Path) -> InputAudio:
    """Any audio FFmpeg (PyAV) decodes -> mono int16: WAV of any sample format, MP3, Ogg/Opus,
    FLAC, M4A, the sound of a video file. Blocking: run it in a thread.

    Rates outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE are resampled into it (to 16 or 48 kHz).
    Raises ValueError saying why the file cannot be used (empty, not audio, which format)."""
    import av

    if path.stat().st_size == 0:
        raise ValueError("the file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except OSError:
        raise  # cannot read it at all (permissions, ...): the caller says so
    except av.error.FFmpegError as e:
        raise ValueError(f"not an audio file FFmpeg can read ({_ffmpeg_reason(e)})") from e
    with container:
        if not container.streams.audio:
            found = ", ".join(s.codec_context.name for s in container.streams) or "no streams"
            raise ValueError(f"no audio in it (FFmpeg found {container.format.long_name}: {found})")
        stream = container.streams.audio[0]
        codec = stream.codec_context.name
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        if not rate or not channels:
            raise ValueError(f"broken audio stream ({codec}: no sample rate or channels)")
        target = rate
        if rate < MIN_SAMPLE_RATE:
            target = 16000
        elif rate > MAX_SAMPLE_RATE:
            target = 48000
        resampler = av.AudioResampler(format="flt", layout=stream.layout.name, rate=target)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
        except av.error.FFmpegError as e:
            raise ValueError(f"broken {codec} audio ({_ffmpeg_reason(e)})") from e
    interleaved = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    interleaved = interleaved[: interleaved.size - interleaved.size % channels]
    if interleaved.size == 0:
        raise ValueError(f"it contains no audio (an empty {codec} stream)")
    mono = np.nan_to_num(interleaved.reshape(-1, channels).mean(axis=1))
    int16 = np.clip(np.round(mono * 32768.0), -32768, 32767).astype(np.int16)
    return InputAudio(int16, target, channels, codec)


def _ffmpeg_reason(e: Exception) -> str:
    """FFmpeg's own words, without the file name PyAV appends."""
    return str(getattr(e, "strerror", None) or e).strip().rstrip(".")


def _loud_samples(audio: InputAudio) -> np.ndarray:
    """Indexes of the samples above the silence threshold."""
    magnitude = np.abs(audio.samples.astype(np.int32))
    peak = int(magnitude.max(initial=0))
    threshold = max(300, peak // 20)  # -26 dB under the peak, and above a hiss floor
    return np.flatnonzero(magnitude > threshold)


def has_sound(audio: InputAudio) -> bool:
    """The input is not silence: the agent should hear something in it."""
    return bool(_loud_samples(audio).size)


def trim_silence(audio: InputAudio, *, keep: float = 0.3) -> InputAudio:
    """``--fast``: drop silence at both ends beyond ``keep`` seconds (the microphone goes on
    with silence after the input anyway). Pauses inside the speech are kept: shortening them
    would change where the agent sees a turn end. Returns ``audio`` unchanged if all silent."""
    samples = audio.samples
    loud = _loud_samples(audio)
    if loud.size == 0:
        return audio
    margin = round(keep * audio.sample_rate)
    start, end = max(0, int(loud[0]) - margin), min(samples.size, int(loud[-1]) + 1 + margin)
    return replace(audio, samples=samples[start:end])


def _decode_image(path: Path) -> rtc.VideoFrame:
    """PNG/JPEG (anything Pillow opens), or the first frame of a video file (anything FFmpeg
    decodes) -> an RGBA frame at most MAX_IMAGE_SIDE (blocking)."""
    from livekit import rtc
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            rgba = img.convert("RGBA")
    except Image.UnidentifiedImageError:
        rgba = _first_video_frame(path)
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise ValueError(f"cannot read it ({e.strerror})") from e
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"broken or unsupported image ({e})") from e
    rgba.thumbnail((MAX_IMAGE_SIDE, MAX_IMAGE_SIDE))
    if rgba.width < 2 or rgba.height < 2:
        raise ValueError(f"image is too small ({rgba.width}x{rgba.height})")
    width, height = rgba.width - rgba.width % 2, rgba.height - rgba.height % 2  # I420 needs even
    rgba = rgba.crop((0, 0, width, height))
    return rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())


def _first_video_frame(path: Path) -> PILImage:
    """The first frame of a video file, decoded alone (nothing after it is read)."""
    import av

    expected = "not an image or a video (PNG, JPEG or a video file FFmpeg decodes expected)"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(expected)
            for frame in container.decode(container.streams.video[0]):
                return frame.to_image().convert("RGBA")
    except av.error.FFmpegError as e:
        raise ValueError(f"{expected}: {_ffmpeg_reason(e)}") from e
    raise ValueError("the video has no frame")


@dataclass
class TalkInputs:
    audio: InputAudio
    image: rtc.VideoFrame | None = None


def check_outputs(options: TalkOptions) -> list[str]:
    """Cheap checks before anything starts: every output can be written, none is an input."""
    problems: list[str] = []
    seen: dict[Path, str] = {options.input.resolve(): "INPUT"}
    if options.image is not None:
        seen[options.image.resolve()] = "--image"
    outputs = (
        ("--out", options.out),
        ("--metrics", options.metrics),
        ("--transcript", options.transcript),
    )
    for flag, out in outputs:
        if out is None:
            continue
        target = out.resolve()
        if target in seen:
            problems.append(f"{flag}: {out} is also {seen[target]}")
            continue
        seen[target] = flag
        if out.is_dir():
            problems.append(f"{flag}: {out} is a directory")
        elif not target.parent.is_dir():
            problems.append(f"{flag}: directory {target.parent} does not exist")
        elif not os.access(target.parent, os.W_OK | os.X_OK) or (
            out.exists() and not os.access(out, os.W_OK)
        ):
            problems.append(f"{flag}: cannot write {out} (permission denied)")
    return problems


def _check_readable(flag: str, path: Path) -> str | None:
    if not path.exists():
        return f"{flag}: {path} does not exist"
    if not path.is_file():
        return f"{flag}: {path} is not a file"
    return None


async def load_inputs(options: TalkOptions) -> TalkInputs:
    """Read and decode the audio and the image (in threads); TalkError lists every problem."""
    problems: list[str] = []
    audio: InputAudio | None = None
    image: rtc.VideoFrame | None = None
    problem = _check_readable("INPUT", options.input)
    if problem is not None:
        problems.append(problem)
    else:
        try:
            audio = await asyncio.to_thread(decode_audio, options.input)
        except OSError as e:
            problems.append(f"INPUT: cannot read {options.input}: {e.strerror or e}")
        except ValueError as e:
            problems.append(f"INPUT: {options.input}: {e}")
    if audio is not None and options.fast:
        audio = trim_silence(audio)
    if options.image is not None:
        problem = _check_readable("--image", options.image)
        if problem is not None:
            problems.append(problem)
        else:
            try:
                image = await asyncio.to_thread(_decode_image, options.image)
            except ValueError as e:
                problems.append(f"--image: {options.image}: {e}")
    if problems or audio is None:
        raise TalkError(problems)
    return TalkInputs(audio=audio, image=image)


# --------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Line:
    speaker: str
    """``user`` or ``agent``."""
    text: str


@dataclass
class TalkResult:
    transcript: list[Line]
    turns: list[dict[str, Any]]
    """The ``turn`` metrics payloads, in order."""
    reply_seconds: float
    """Seconds of audible agent audio in the output WAV."""
    answered: bool
    """The agent finished answering (False: the wait hit ``reply_timeout``)."""
    end_reason: str = ""
    notes: list[str] = field(default_factory=list)
    failed_providers: list[str] = field(default_factory=list)
    """``stt``, ``tts``, ``llm``: the providers that reported a failure (metrics ``error``)."""

    def transcript_text(self) -> str:
        return "".join(f"{line.speaker}: {line.text}\n" for line in self.transcript)


def transcript_lines(room: LocalRoom, user_identity: str = USER_IDENTITY) -> list[Line]:
    """The conversation from the transcriptions the agent published, in the order each segment
    started, with its final text (or the last text seen, if it never became final): one line
    per user final, one per agent reply (its consecutive segments joined)."""
    first_at: dict[tuple[str, str], float] = {}
    text: dict[tuple[str, str], str] = {}
    final: set[tuple[str, str]] = set()
    for sent in room.outbox.transcriptions:
        speaker = "user" if sent.participant_identity == user_identity else "agent"
        for segment in sent.segments:
            key = (speaker, segment.id)
            first_at.setdefault(key, sent.at)
            if key not in final:
                text[key] = segment.text
            if segment.final:
                final.add(key)
    ordered = sorted(first_at, key=first_at.__getitem__)
    lines: list[Line] = []
    for speaker, text_of in ((key[0], text[key].strip()) for key in ordered):
        if not text_of:
            continue
        if lines and speaker == "agent" and lines[-1].speaker == "agent":
            # one reply is several segments (a sentence each): one line, as it was written
            joiner = "" if text_of[0] in _CLOSING else " "
            lines[-1] = Line("agent", lines[-1].text + joiner + text_of)
        else:
            lines.append(Line(speaker, text_of))
    return lines


_CLOSING = frozenset(")]}\"'.,;:!?\u2026\u201d\u2019")


def _secs(value: object) -> str:
    if isinstance(value, int | float) and math.isfinite(value):
        return f"{value:.2f} s"
    return "n/a"


def latency_line(index: int, turn: Mapping[str, Any]) -> str:
    """One turn's summary: e2e, end-of-utterance delay, LLM TTFT, TTS TTFB, tool time."""
    line = (
        f"turn {index}: e2e {_secs(turn.get('e2e_latency'))}"
        f" | eou delay {_secs(turn.get('end_of_utterance_delay'))}"
        f" | llm ttft {_secs(turn.get('llm_ttft'))}"
        f" | tts ttfb {_secs(turn.get('tts_ttfb'))}"
        f" | tool time {_secs(turn.get('tool_time'))}"
    )
    return line + (" (interrupted)" if turn.get("interrupted") else "")


def report(result: TalkResult) -> str:
    """What ``talk`` prints: the transcript, then one latency line per turn."""
    lines = [f"{line.speaker}: {line.text}" for line in result.transcript]
    if not result.transcript:
        lines.append("(nothing was said)")
    lines.append("")
    lines += [latency_line(i, turn) for i, turn in enumerate(result.turns, 1)]
    return "\n".join(lines)


def failure(result: TalkResult) -> str | None:
    """Why the run failed (talk exits with status 1), or None: the agent did not answer at
    all, or every reply it gave failed (an apology, or cut short by a provider failure)."""
    failed = [t for t in result.turns if t.get("outcome") != "answered" and _failed_turn(t)]
    providers = ", ".join(p.upper() for p in result.failed_providers)
    cause = f": the {providers} failed (see the lines above)" if providers else ""
    if result.turns and len(failed) == len(result.turns):
        return f"every reply failed{cause}"
    if result.reply_seconds == 0:
        return f"the agent did not answer{cause or ' (was there speech in INPUT?)'}"
    return None


def _failed_turn(turn: Mapping[str, Any]) -> bool:
    return turn.get("outcome") in ("apologised", "cut_short") or bool(turn.get("error"))


def summary(options: TalkOptions, result: TalkResult) -> list[str]:
    """Where the outputs went, and anything unusual about the run (for stderr)."""
    lines = [f"reply: {options.out} ({result.reply_seconds:.1f} s of speech)"]
    if options.metrics is not None:
        lines.append(f"metrics: {options.metrics}")
    if options.transcript is not None:
        lines.append(f"transcript: {options.transcript}")
    if result.end_reason:
        lines.append(f"note: the conversation ended ({result.end_reason})")
    lines += [f"note: {note}" for note in result.notes]
    if not result.answered:
        lines.append(
            f"note: the agent was still answering after {options.reply_timeout:g} s; stopped"
        )
    return lines


# --------------------------------------------------------------------------------------------
# The run


async def run_talk(
    options: TalkOptions, inputs: TalkInputs, config: TalkConfig, *, quiet: bool = False
) -> TalkResult:
    """Hold the conversation and write the outputs; returns what happened.

    Everything started here is closed before it returns (or raises): camera feed, session,
    room, local LLM server.
    """
    from worker.providers.local_llm_server import LocalLLMServer

    async with contextlib.AsyncExitStack() as stack:
        base_url: str | None = None
        if config.local_llm:
            server = LocalLLMServer()
            stack.push_async_callback(server.aclose)
            _say(quiet, "starting the local LLM server and loading models ...")
            vad, base_url = await asyncio.gather(_load_models(config.settings), server.start())
        else:
            _say(quiet, "loading models ...")
            vad = await _load_models(config.settings)
        notes: list[str] = []
        if inputs.image is not None and config.local_llm:
            # SmolLM2 has no vision: llama.cpp would read the base64 image as text (thousands
            # of tokens, minutes of prefill). Say so instead of sending it.
            notes.append("--image: the local LLM cannot see images; the camera was left off")
            inputs = replace(inputs, image=None)
        result = await _converse(options, inputs, config.settings, vad, base_url, stack, quiet)
        result.notes[:0] = notes
        return result
    raise AssertionError("unreachable")  # pragma: no cover - AsyncExitStack never swallows


class ConsoleFormatter(logging.Formatter):
    """``talk``'s log lines on stderr: the message, and of an exception only its last line
    (type and message). A provider failure is one line that says what failed; a traceback
    would bury it (the framework's plugins log one with every failure they re-raise)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        trace = record.exc_text or ""  # the redaction turns exc_info into masked exc_text
        if not trace and record.exc_info:
            trace = self.formatException(record.exc_info)
        last = trace.strip().splitlines()[-1] if trace.strip() else ""
        return f"{message}: {last}" if last else message


def console_logging(level: int = logging.WARNING) -> None:
    """Warnings and errors to stderr, one line each (:class:`ConsoleFormatter`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(ConsoleFormatter())
    handler.setLevel(level)
    logging.getLogger().addHandler(handler)


def _say(quiet: bool, message: str) -> None:
    """Progress goes to stderr: stdout is the transcript and the latency lines."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


async def _load_models(settings: Settings) -> agents_vad.VAD:
    """The VAD and the local STT/TTS models (blocking loads, in a thread)."""
    from worker.providers.selection import load_vad, prewarm_providers

    def load() -> agents_vad.VAD:
        vad = load_vad(settings.vad_provider, settings.turn_detector)
        prewarm_providers(settings)
        return vad

    return await asyncio.to_thread(load)


async def _converse(
    options: TalkOptions,
    inputs: TalkInputs,
    settings: Settings,
    vad: agents_vad.VAD,
    llm_base_url: str | None,
    stack: contextlib.AsyncExitStack,
    quiet: bool,
) -> TalkResult:
    import aiohttp

    from worker.local_room import LocalRoom, as_rtc_room
    from worker.metrics.collector import JsonlFileSink, MetricsSink
    from worker.session import build_session

    room = LocalRoom("talk", agent_identity=settings.agent_identity or "agent")
    stack.push_async_callback(room.aclose)
    user = room.add_participant(USER_IDENTITY)
    mic = user.publish_microphone()
    if inputs.image is not None:
        camera = user.publish_camera(width=inputs.image.width, height=inputs.image.height)
        feeding = asyncio.create_task(
            _feed_camera(camera, inputs.image, options.camera_fps), name="talk.camera"
        )
        stack.push_async_callback(_cancel, feeding)
    sinks: list[MetricsSink] = []
    if options.metrics is not None:
        sinks.append(JsonlFileSink(options.metrics))
    http_session = (
        aiohttp.ClientSession()
    )  # the session closes it; this is in case it is never built
    stack.push_async_callback(http_session.close)
    parts = build_session(
        as_rtc_room(room),
        USER_IDENTITY,
        settings,
        vad=vad,
        http_session=http_session,
        llm_base_url=llm_base_url,
        extra_sinks=sinks,
    )
    stack.push_async_callback(parts.aclose)  # before room.aclose: the session message goes out
    await parts.start()
    await room.outbox.wait_for(lambda: bool(room.outbox.audio), timeout=30)
    if settings.greeting:  # a person hears the greeting out before speaking
        with contextlib.suppress(TimeoutError):
            await room.outbox.wait_for(
                lambda: "listening" in room.outbox.attribute_values(AGENT_STATE), timeout=30
            )

    audio = inputs.audio
    _say(quiet, f"playing {options.input.name} ({audio.duration:.1f} s) to the agent ...")
    ended = asyncio.create_task(parts.conversation.wait_done(), name="talk.wait_done")
    stack.push_async_callback(_cancel, ended)
    playing = asyncio.create_task(_play(mic, audio, options), name="talk.microphone")
    stack.push_async_callback(_cancel, playing)
    await asyncio.wait({playing, ended}, return_when=asyncio.FIRST_COMPLETED)
    if playing.done():
        playing.result()  # a failure to feed the microphone is the run's failure
    input_end = time.perf_counter()
    answered = True
    if not ended.done():
        waiting = asyncio.create_task(
            _wait_answered(
                room,
                settings.metrics_topic,
                answering=parts.conversation.awaiting_reply,
                settle=options.settle,
                grace=options.grace,
                timeout=options.reply_timeout,
                expect_speech=has_sound(audio),
            ),
            name="talk.answered",
        )
        stack.push_async_callback(_cancel, waiting)
        await asyncio.wait({waiting, ended}, return_when=asyncio.FIRST_COMPLETED)
        answered = ended.done() or waiting.result()
        if not answered:
            await _cut_reply(room, parts.conversation, settings.metrics_topic)
    logger.debug("talk input done", extra={"waited_s": round(time.perf_counter() - input_end, 3)})

    end_reason = ended.result() if ended.done() else ""
    await parts.aclose()  # flushes the metrics (the session payload) while the room is up
    await room.aclose()
    recorder = room.outbox.audio[0]
    await recorder.write_wav(options.out)
    payloads = [d.json() for d in room.outbox.data_on(settings.metrics_topic)]
    result = TalkResult(
        transcript=transcript_lines(room),
        turns=[p for p in payloads if p["type"] == "turn"],
        failed_providers=[
            kind
            for kind in ("stt", "llm", "tts")
            if any(p["type"] == kind and p.get("error") for p in payloads)
            or any(
                kind in (p.get("error") or "").split(",") for p in payloads if p["type"] == "turn"
            )
        ],
        reply_seconds=recorder.audible_seconds,
        answered=answered,
        end_reason=end_reason,
    )
    if options.transcript is not None:
        await asyncio.to_thread(options.transcript.write_text, result.transcript_text(), "utf-8")
    return result


async def _cut_reply(
    room: LocalRoom, conversation: Conversation, topic: str, *, timeout: float = 5.0
) -> None:
    """``--reply-timeout`` hit: interrupt the reply as a user would, so its synthesis stops
    (the rest of its text never reaches the TTS) and its ``turn`` (interrupted) is published
    before the session closes; waits for that ``turn`` at most ``timeout`` seconds."""

    def turns() -> int:
        return sum(1 for d in room.outbox.data_on(topic) if d.json().get("type") == "turn")

    before = turns()
    conversation.interrupt()
    with contextlib.suppress(TimeoutError):
        await room.outbox.wait_for(lambda: turns() > before, timeout=timeout)


async def _play(mic: Microphone, audio: InputAudio, options: TalkOptions) -> None:
    """The input as a live microphone: in real time (the audio source paces it)."""
    if not options.fast and options.lead_in > 0:
        await mic.push_silence(options.lead_in)
    await mic.push(audio.samples, audio.sample_rate)
    await mic.wait_for_playout()


async def _feed_camera(camera: VideoFeed, frame: rtc.VideoFrame, fps: float) -> None:
    while True:
        camera.capture_frame(frame)
        await asyncio.sleep(1.0 / fps)


async def _wait_answered(
    room: LocalRoom,
    topic: str,
    *,
    settle: float,
    grace: float,
    timeout: float,
    expect_speech: bool = False,
    answering: Callable[[], bool] | None = None,
) -> bool:
    """True once the agent is done answering (module docstring), False after ``timeout``.

    Done = idle (not thinking or speaking, no user transcript waiting for a reply, and
    ``answering()``, if given, false: nothing requested or playing, no transcript of the user's
    last words still to come) and either the ``turn`` summary of the last reply is out, or idle
    has held for ``grace`` seconds (a reply without summary, e.g. a greeting: the pipeline
    commits a reply up to 0.2 s after its playout ends, and the summary follows the commit).
    With ``expect_speech`` (the input was not silence), not idle before the user's first final
    transcript: a cold or busy Whisper can take longer than ``settle`` to transcribe.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    outbox = room.outbox
    await asyncio.sleep(min(settle, timeout))

    def states() -> list[tuple[float, str]]:
        key = AGENT_STATE
        return [(u.at, u.changed[key]) for u in outbox.attribute_updates if key in u.changed]

    def idle() -> bool:
        if answering is not None and answering():
            return False
        state_at, state = (states() or [(-math.inf, "initializing")])[-1]
        if state in ("thinking", "speaking"):
            return False
        user_finals = [
            t.at for t in outbox.transcriptions_of(USER_IDENTITY) if t.final and t.text.strip()
        ]
        if not user_finals:
            return not expect_speech
        return state_at > user_finals[-1]

    def reported() -> bool:
        spoke = [at for at, state in states() if state == "speaking"]
        if not spoke:
            return False
        return any(
            d.at > spoke[-1] and d.json().get("type") == "turn" for d in outbox.data_on(topic)
        )

    while (remaining := deadline - loop.time()) > 0:
        if not idle():
            # ``answering()`` may turn false with no change in the room (a transcript that never
            # comes): look again now and then
            with contextlib.suppress(TimeoutError):
                await outbox.wait_for(idle, timeout=min(remaining, grace))
            continue
        if reported():
            return True
        try:
            await outbox.wait_for(
                lambda: not idle() or reported(), timeout=min(grace, deadline - loop.time())
            )
        except TimeoutError:
            if idle() and loop.time() < deadline:
                return True  # idle held for the grace period
            continue
        if idle() and reported():
            return True
    return False


async def _cancel(task: asyncio.Task[Any]) -> None:
    if not task.done():
        task.cancel()
    await asyncio.gather(task, return_exceptions=True)
