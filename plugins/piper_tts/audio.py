"""Float audio at the voice's rate -> fixed-size int16 frames at the output rate."""

from __future__ import annotations

import numpy as np
from livekit import rtc
from livekit.agents.utils.audio import AudioByteStream


class PcmFramer:
    """Resamples (SoX, via livekit.rtc) and cuts mono audio into ``frame_ms`` frames.

    One framer per segment: ``flush()`` drains the resampler and emits the last, shorter frame.
    Not thread-safe; use it from one thread at a time.
    """

    def __init__(self, *, input_rate: int, output_rate: int, frame_ms: int) -> None:
        if frame_ms <= 0:
            raise ValueError("frame_ms must be positive")
        self._input_rate = input_rate
        self._resampler = (
            rtc.AudioResampler(
                input_rate, output_rate, num_channels=1, quality=rtc.AudioResamplerQuality.HIGH
            )
            if input_rate != output_rate
            else None
        )
        self._bytes = AudioByteStream(
            sample_rate=output_rate,
            num_channels=1,
            samples_per_channel=max(1, output_rate * frame_ms // 1000),
        )

    def push(self, samples: np.ndarray) -> list[rtc.AudioFrame]:
        """``samples``: mono float in [-1, 1] at the input rate."""
        if samples.size == 0:
            return []
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)
        return self._frames(self._resample(pcm))

    def flush(self) -> list[rtc.AudioFrame]:
        frames: list[rtc.AudioFrame] = []
        if self._resampler is not None:
            for f in self._resampler.flush():
                frames.extend(self._bytes.push(bytes(f.data.cast("B"))))
        frames.extend(self._bytes.flush())
        return frames

    def _resample(self, pcm: np.ndarray) -> bytes:
        if self._resampler is None:
            return pcm.tobytes()
        frame = rtc.AudioFrame(
            data=pcm.tobytes(),
            sample_rate=self._input_rate,
            num_channels=1,
            samples_per_channel=pcm.size,
        )
        return b"".join(bytes(f.data.cast("B")) for f in self._resampler.push(frame))

    def _frames(self, data: bytes) -> list[rtc.AudioFrame]:
        return self._bytes.push(data) if data else []
