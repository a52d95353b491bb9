"""The Whisper STT plugin on real speech (espeak-ng), real Whisper tiny.en and real Silero VAD."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt as agents_stt
from livekit.agents.metrics import STTMetrics
from livekit.plugins import silero

from plugins.whisper_stt import STT, default_model_path, load_model, to_whisper_input
from tests.speech import silence, speak

SENTENCE = "Please turn on the kitchen lights and play some music."
KEYWORDS = ("kitchen", "lights", "music")
TIMEOUT = 60.0


def to_frames(samples: np.ndarray, sample_rate: int, frame_ms: int = 20) -> list[rtc.AudioFrame]:
    """int16 samples, shape (n,) mono or (n, channels) -> AudioFrames of ``frame_ms``."""
    channels = 1 if samples.ndim == 1 else samples.shape[1]
    step = sample_rate * frame_ms // 1000
    frames = []
    for i in range(0, samples.shape[0], step):
        chunk = np.ascontiguousarray(samples[i : i + step], dtype=np.int16)
        frames.append(rtc.AudioFrame(chunk.tobytes(), sample_rate, channels, chunk.shape[0]))
    return frames


def utterance(sample_rate: int) -> np.ndarray:
    return np.concatenate(
        [silence(0.5, sample_rate), speak(SENTENCE, sample_rate), silence(1.2, sample_rate)]
    )


def assert_keywords(text: str) -> None:
    lowered = text.lower()
    missing = [w for w in KEYWORDS if w not in lowered]
    assert not missing, f"{missing} not in transcript {text!r}"


@pytest.fixture(scope="module")
def model_loaded() -> None:
    STT().prewarm()  # once per module; every STT below shares the process-wide model


@pytest.fixture
def whisper(model_loaded: None) -> STT:
    return STT()


@pytest.fixture(scope="module")
def vad() -> silero.VAD:
    return silero.VAD.load()


async def run_adapter(
    whisper: STT, vad: silero.VAD, frames: list[rtc.AudioFrame]
) -> tuple[list[agents_stt.SpeechEvent], list[STTMetrics]]:
    adapter = agents_stt.StreamAdapter(stt=whisper, vad=vad)
    metrics: list[STTMetrics] = []
    adapter.on("metrics_collected", metrics.append)
    stream = adapter.stream()
    try:
        for frame in frames:
            stream.push_frame(frame)
        stream.end_input()

        async def collect() -> list[agents_stt.SpeechEvent]:
            return [ev async for ev in stream]

        events = await asyncio.wait_for(collect(), TIMEOUT)
    finally:
        await stream.aclose()
    return events, metrics


def test_declares_batch_recognition() -> None:
    caps = STT().capabilities
    assert caps.streaming is False
    assert caps.interim_results is False


async def test_stream_adapter_with_silero_gives_final_transcript(whisper: STT, vad) -> None:
    audio = utterance(16000)
    events, metrics = await run_adapter(whisper, vad, to_frames(audio, 16000))

    types = [ev.type for ev in events]
    assert types == [
        agents_stt.SpeechEventType.START_OF_SPEECH,
        agents_stt.SpeechEventType.END_OF_SPEECH,
        agents_stt.SpeechEventType.FINAL_TRANSCRIPT,
    ]
    final = events[-1].alternatives[0]
    assert_keywords(final.text)
    assert final.language == "en"
    assert 0.0 < final.confidence <= 1.0

    # the base class's metrics, forwarded by the adapter as the pipeline sees them
    assert len(metrics) == 1
    m = metrics[0]
    assert isinstance(m, STTMetrics)
    assert m.streamed is False
    assert m.error is None
    assert m.label == "plugins.whisper_stt.stt.STT"
    speech_s = speak(SENTENCE, 16000).size / 16000
    assert 0.8 * speech_s < m.audio_duration < audio.size / 16000
    assert m.duration > 0.0


async def test_stream_adapter_at_48khz(whisper: STT, vad) -> None:
    """Silero resamples for itself but hands over 48 kHz frames; the plugin resamples them."""
    events, _ = await run_adapter(whisper, vad, to_frames(utterance(48000), 48000))
    finals = [ev for ev in events if ev.type == agents_stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert len(finals) == 1
    assert_keywords(finals[0].alternatives[0].text)


@pytest.mark.parametrize(("sample_rate", "channels"), [(48000, 2), (44100, 1)])
async def test_recognize_any_rate_and_channels(whisper: STT, sample_rate, channels) -> None:
    mono = speak(SENTENCE, sample_rate)
    samples = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    metrics: list[STTMetrics] = []
    whisper.on("metrics_collected", metrics.append)

    event = await asyncio.wait_for(whisper.recognize(to_frames(samples, sample_rate)), TIMEOUT)

    assert event.type == agents_stt.SpeechEventType.FINAL_TRANSCRIPT
    assert_keywords(event.alternatives[0].text)
    assert len(metrics) == 1
    assert metrics[0].request_id == event.request_id
    assert metrics[0].audio_duration == pytest.approx(mono.size / sample_rate, rel=0.01)


async def test_silence_gives_empty_transcript(whisper: STT) -> None:
    event = await whisper.recognize(to_frames(silence(1.0, 16000), 16000))
    assert event.alternatives[0].text == ""


async def test_empty_buffer_gives_empty_transcript(whisper: STT) -> None:
    event = await whisper.recognize([])
    assert event.alternatives[0].text == ""


async def test_inference_runs_off_the_event_loop(whisper: STT) -> None:
    """While Whisper decodes (hundreds of ms), the event loop keeps running other tasks."""
    recognize = asyncio.create_task(whisper.recognize(to_frames(speak(SENTENCE, 16000), 16000)))
    started = last = time.perf_counter()
    longest_gap = 0.0
    while not recognize.done():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        longest_gap, last = max(longest_gap, now - last), now
    elapsed = last - started
    assert_keywords((await recognize).alternatives[0].text)
    # on the loop, the inference would be one stall as long as all of it; off it, the loop
    # only waits for its own turns
    assert longest_gap < elapsed / 2, (longest_gap, elapsed)


def test_to_whisper_input_is_16khz_mono_float32() -> None:
    rate = 48000
    t = np.arange(rate) / rate
    tone = (0.5 * 32767 * np.sin(2 * np.pi * 440.0 * t)).astype(np.int16)
    stereo = np.stack([tone, tone], axis=1)

    out = to_whisper_input(to_frames(stereo, rate))

    assert out.dtype == np.float32
    assert abs(out.size - 16000) <= 16
    assert np.max(np.abs(out[1000:-1000])) == pytest.approx(0.5, abs=0.03)


def test_to_whisper_input_rejects_mixed_rates() -> None:
    frames = to_frames(silence(0.1, 16000), 16000) + to_frames(silence(0.1, 48000), 48000)
    with pytest.raises(ValueError, match=r"(?i)sample rate"):
        to_whisper_input(frames)


def test_model_loads_once_per_process(model_loaded: None) -> None:
    assert load_model() is load_model()
    assert STT()._model() is STT(beam_size=1)._model()
    # the bundled model named by its directory (a str, as LiveKit plugins take `model`)
    assert STT(model=str(default_model_path()))._model() is STT()._model()


def test_model_path_must_be_a_local_model_directory(tmp_path: Path) -> None:
    """A name or an empty directory is refused: never a download from the model hub."""
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_model(Path("tiny.en"))
    with pytest.raises(FileNotFoundError, match=r"model\.bin"):
        STT(model="tiny.en").prewarm()  # a model name, as faster-whisper would download it
