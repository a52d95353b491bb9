"""Speech scenes and a VAD driver shared by the VAD plugin tests (real espeak-ng speech + noise).

Audio is pushed into a real VADStream unpaced (push_frame does not pace), so a scene runs in
well under a second of model time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents import vad as agents_vad

from tests.speech import silence, speak

RATE = 16000
WINDOW = 512  # Silero window at 16 kHz (32 ms)
FRAME = 160  # 10 ms, as rtc.AudioStream delivers frames

FIRST = "I would like to book a table for two people tomorrow evening."
SECOND = "The weather today is quite nice, isn't it?"
LONG = "Can you tell me how far it is to the nearest train station from here, please?"


def _windows(x: np.ndarray) -> np.ndarray:
    n = x.size // WINDOW
    return x[: n * WINDOW].reshape(n, WINDOW).astype(np.float64)


def speech_truth(clean: np.ndarray) -> np.ndarray:
    """Per 32 ms window: speech if its RMS is within 35 dB of the loud speech windows."""
    rms = np.sqrt((_windows(clean) ** 2).mean(axis=1))
    return rms >= np.percentile(rms[rms > 0], 95) * 10 ** (-35 / 20)


def add_noise(clean: np.ndarray, snr_db: float, kind: str = "white", seed: int = 0) -> np.ndarray:
    """Mix white or pink noise at ``snr_db`` below the active speech power."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(clean.size)
    if kind == "pink":
        spectrum = np.fft.rfft(noise)
        spectrum *= np.maximum(np.fft.rfftfreq(clean.size, 1 / RATE), 20.0) ** -0.5
        spectrum[0] = 0.0
        noise = np.fft.irfft(spectrum, clean.size)
    noise /= np.sqrt((noise**2).mean())
    speech_power = (_windows(clean)[speech_truth(clean)] ** 2).mean()
    noisy = clean + noise * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return np.clip(np.round(noisy), -32768, 32767).astype(np.int16)


def two_sentences() -> tuple[np.ndarray, list[tuple[float, float]]]:
    """FIRST, 1 s gap, SECOND (espeak's own edge silence trimmed), with their true spans."""
    a, b = trim(speak(FIRST, RATE)), trim(speak(SECOND, RATE))
    lead = silence(0.8, RATE)
    audio = np.concatenate([lead, a, silence(1.0, RATE), b, silence(1.2, RATE)])
    t0 = lead.size / RATE
    t1 = t0 + a.size / RATE
    t2 = t1 + 1.0
    return audio, [(t0, t1), (t2, t2 + b.size / RATE)]


def trim(x: np.ndarray) -> np.ndarray:
    rms = np.sqrt((x[: x.size // FRAME * FRAME].reshape(-1, FRAME).astype(np.float64) ** 2).mean(1))
    active = np.flatnonzero(rms > rms.max() * 10 ** (-40 / 20))
    return x[active[0] * FRAME : (active[-1] + 1) * FRAME]


@dataclass
class Detection:
    probabilities: list[float] = field(default_factory=list)
    segments: list[tuple[float, float]] = field(default_factory=list)  # speech start, end
    end_audio_seconds: list[float] = field(default_factory=list)  # END_OF_SPEECH frames


async def detect(
    vad: agents_vad.VAD, audio: np.ndarray, on_open: Callable[[], None] | None = None
) -> Detection:
    """Run ``audio`` through ``vad.stream()`` as the pipeline does: 10 ms frames, iterate events.

    ``on_open`` runs once the stream exists, before any audio is pushed.
    """
    stream = vad.stream()
    if on_open is not None:
        on_open()
    out = Detection()
    try:
        for i in range(0, audio.size - FRAME + 1, FRAME):
            stream.push_frame(rtc.AudioFrame(audio[i : i + FRAME].tobytes(), RATE, 1, FRAME))
        stream.end_input()
        start: float | None = None
        async for ev in stream:
            if ev.type == agents_vad.VADEventType.INFERENCE_DONE:
                out.probabilities.append(ev.probability)
            elif ev.type == agents_vad.VADEventType.START_OF_SPEECH:
                start = ev.timestamp - ev.speech_duration
            elif ev.type == agents_vad.VADEventType.END_OF_SPEECH:
                assert start is not None, "END_OF_SPEECH without START_OF_SPEECH"
                out.segments.append((start, ev.timestamp - ev.silence_duration))
                out.end_audio_seconds.append(
                    sum(f.samples_per_channel for f in ev.frames) / ev.frames[0].sample_rate
                )
                start = None
        assert start is None, "speech still open after trailing silence"
    finally:
        await stream.aclose()
    return out
