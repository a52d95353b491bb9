"""Real speech for tests, synthesised at test time with espeak-ng (Debian package)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import wave
from io import BytesIO

import numpy as np


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise RuntimeError(f"{tool} is not installed (apt-get install espeak-ng sox)")
    return path


@functools.lru_cache(maxsize=64)
def _espeak_wav(text: str, words_per_minute: int) -> bytes:
    return subprocess.run(
        [_require("espeak-ng"), "-v", "en-us", "-s", str(words_per_minute), "--stdout", text],
        check=True,
        capture_output=True,
    ).stdout


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Linear-interpolation resampling of int16 mono audio (good enough for VAD/STT tests)."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.int16)
    duration = samples.size / from_rate
    n_out = round(duration * to_rate)
    x_old = np.linspace(0.0, duration, samples.size, endpoint=False)
    x_new = np.linspace(0.0, duration, n_out, endpoint=False)
    return np.interp(x_new, x_old, samples.astype(np.float32)).astype(np.int16)


def speak(text: str, sample_rate: int = 16000, words_per_minute: int = 175) -> np.ndarray:
    """Return ``text`` spoken by espeak-ng as int16 mono samples at ``sample_rate``."""
    with wave.open(BytesIO(_espeak_wav(text, words_per_minute))) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return resample(pcm, rate, sample_rate)


def silence(seconds: float, sample_rate: int = 16000) -> np.ndarray:
    return np.zeros(round(seconds * sample_rate), dtype=np.int16)


def write_wav(path: str, samples: np.ndarray, sample_rate: int, channels: int = 1) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(samples.astype(np.int16).tobytes())
