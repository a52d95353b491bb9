"""Audio frames of any rate and channel count -> what Whisper expects (16 kHz mono float32)."""

from __future__ import annotations

import numpy as np
from livekit import rtc
from livekit.agents.utils import AudioBuffer

WHISPER_SAMPLE_RATE = 16000


def to_whisper_input(buffer: AudioBuffer) -> np.ndarray:
    """Merge ``buffer`` into one 16 kHz mono float32 array in [-1, 1].

    Channels are averaged; other rates go through the SoX resampler of livekit.rtc. Blocking
    (CPU work): call it off the event loop.
    """
    frames = buffer if isinstance(buffer, list) else [buffer]
    frames = [f for f in frames if f.samples_per_channel > 0]
    if not frames:
        return np.zeros(0, dtype=np.float32)

    merged = rtc.combine_audio_frames(frames)  # raises ValueError on mixed rates/channels
    pcm = np.frombuffer(merged.data, dtype=np.int16)
    if merged.num_channels > 1:
        pcm = pcm.reshape(-1, merged.num_channels).mean(axis=1).round().astype(np.int16)

    if merged.sample_rate != WHISPER_SAMPLE_RATE:
        pcm = _resample(pcm, merged.sample_rate, WHISPER_SAMPLE_RATE)

    return pcm.astype(np.float32) / 32768.0


def _resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    resampler = rtc.AudioResampler(
        from_rate, to_rate, num_channels=1, quality=rtc.AudioResamplerQuality.HIGH
    )
    frame = rtc.AudioFrame(
        data=pcm.tobytes(), sample_rate=from_rate, num_channels=1, samples_per_channel=pcm.size
    )
    out = [*resampler.push(frame), *resampler.flush()]
    if not out:
        return np.zeros(0, dtype=np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in out])
