"""Reading the agent's published audio back as a participant hears it (:class:`AudioRecorder`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc

SILENCE_PEAK = 64
"""A received frame whose absolute peak (int16) is at most this is counted as silence."""


@dataclass(frozen=True)
class ReceivedFrame:
    frame: rtc.AudioFrame
    received_at: float
    """time.perf_counter() when the frame came out of the AudioStream."""
    peak: int
    """Largest absolute int16 sample value in the frame."""

    @property
    def audible(self) -> bool:
        return self.peak > SILENCE_PEAK


def _sub_frame(
    frame: rtc.AudioFrame, samples: np.ndarray, samples_per_channel: int
) -> rtc.AudioFrame:
    return rtc.AudioFrame(
        samples.tobytes(), frame.sample_rate, frame.num_channels, samples_per_channel
    )


class Waiters:
    """Wake-up futures for ``wait_for``-style helpers (no polling, no sleeps)."""

    def __init__(self) -> None:
        self._futures: list[asyncio.Future[None]] = []

    def notify(self) -> None:
        futures, self._futures = self._futures, []
        for fut in futures:
            if not fut.done():
                fut.set_result(None)

    # A timeout parameter rather than asyncio.timeout(): the TimeoutError then says what was seen.
    async def wait_until(
        self,
        predicate: Callable[[], bool],
        timeout: float,
        describe: Callable[[], str],
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s; {describe()}")
            fut = loop.create_future()
            self._futures.append(fut)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                continue


class AudioRecorder:
    """Reads one published audio track with a real ``rtc.AudioStream`` into a list of frames.

    The agent's ``AudioSource`` paces playout in real time and yields silence frames while idle,
    so the recording is continuous; :attr:`ReceivedFrame.audible` tells speech from silence.

    The list always holds 10 ms frames. ``frame_ms`` (a multiple of 10) is the size the stream
    delivers: each delivered frame costs an FFI event and a loop wake-up, so a load test
    reads 50 ms frames (bench/capacity.py prices the difference). Each is then split
    into 10 ms frames received when their last sample was: ``received_at`` minus the duration
    of the samples after it, which is what a 10 ms stream would have reported.
    """

    def __init__(
        self,
        track: rtc.Track,
        *,
        sample_rate: int = 48000,
        num_channels: int = 1,
        frame_ms: int = 10,
    ) -> None:
        if frame_ms <= 0 or frame_ms % 10:
            raise ValueError(f"frame_ms must be a positive multiple of 10, got {frame_ms}")
        self.track_sid = track.sid
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.frames: list[ReceivedFrame] = []
        self._audible_samples = 0
        self._waiters = Waiters()
        self._stream = rtc.AudioStream(
            track, sample_rate=sample_rate, num_channels=num_channels, frame_size_ms=frame_ms
        )
        self._task: asyncio.Task[None] | None = asyncio.create_task(
            self._read(), name=f"local_room.record:{track.sid}"
        )

    async def _read(self) -> None:
        step = self.sample_rate // 100  # samples per channel in 10 ms
        async for event in self._stream:
            received_at = time.perf_counter()
            frame = event.frame
            n = frame.samples_per_channel
            samples = np.frombuffer(frame.data, dtype=np.int16)
            for start in range(0, n, step):
                end = min(start + step, n)
                part = samples[start * frame.num_channels : end * frame.num_channels]
                sub = frame if end - start == n else _sub_frame(frame, part, end - start)
                self._append(
                    ReceivedFrame(
                        frame=sub,
                        received_at=received_at - (n - end) / frame.sample_rate,
                        peak=int(np.abs(part.astype(np.int32)).max(initial=0)),
                    )
                )
            self._waiters.notify()

    def _append(self, received: ReceivedFrame) -> None:
        self.frames.append(received)
        if received.audible:
            self._audible_samples += received.frame.samples_per_channel

    @property
    def audible_seconds(self) -> float:
        """Seconds of non-silent audio received so far."""
        return self._audible_samples / self.sample_rate

    @property
    def first_audible_at(self) -> float | None:
        """perf_counter time the first non-silent frame arrived (None if none yet)."""
        return next((f.received_at for f in self.frames if f.audible), None)

    async def wait_for_audio(
        self,
        seconds: float = 0.01,
        *,
        timeout: float = 30.0,
    ) -> None:
        """Return once at least ``seconds`` of non-silent audio arrived; TimeoutError otherwise."""
        await self._waiters.wait_until(
            lambda: self.audible_seconds >= seconds,
            timeout,
            lambda: f"{self.audible_seconds:.2f} s audible of {len(self.frames)} frames",
        )

    def samples(self, *, trim_silence: bool = False) -> np.ndarray:
        """The recording as int16 (interleaved if several channels); optionally without the
        silent frames before the first and after the last audible frame."""
        frames = self.frames
        if trim_silence:
            audible = [i for i, f in enumerate(frames) if f.audible]
            frames = frames[audible[0] : audible[-1] + 1] if audible else []
        if not frames:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate([np.frombuffer(f.frame.data, dtype=np.int16) for f in frames])

    def wav_bytes(self, *, trim_silence: bool = True) -> bytes:
        samples = self.samples(trim_silence=trim_silence)
        frame = rtc.AudioFrame(
            samples.tobytes(),
            self.sample_rate,
            self.num_channels,
            samples.size // self.num_channels,
        )
        return frame.to_wav_bytes()

    async def write_wav(self, path: str | Path, *, trim_silence: bool = True) -> None:
        data = self.wav_bytes(trim_silence=trim_silence)
        await asyncio.to_thread(Path(path).write_bytes, data)

    async def aclose(self) -> None:
        """Stop recording; the frames stay available."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self._stream.aclose()
