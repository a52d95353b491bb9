"""The participant's camera and screen share -> the newest frame, ready as a ChatImage.

Frames are received only while someone needs them: while the user speaks (the image that goes
with their turn) and while the ``look_at_camera`` tool waits for a fresh one. Every received
frame costs the session a copy of the whole picture and a trip through the event loop, 15 to 30
times a second, whether or not it is ever shown to the LLM. Only the newest frame of each track
is kept (no queue growth). Encoding (resize + JPEG) runs in a thread while the user is speaking,
so at the end of their turn a ready image is attached at no cost on the voice path.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Literal

from livekit import rtc
from livekit.agents import llm, utils
from livekit.agents.utils.images import EncodeOptions, ResizeOptions, encode

logger = logging.getLogger("worker.room_io.video")

VIDEO_SOURCES = (rtc.TrackSource.SOURCE_CAMERA, rtc.TrackSource.SOURCE_SCREENSHARE)
ENCODABLE = frozenset(
    {
        rtc.VideoBufferType.RGBA,
        rtc.VideoBufferType.BGRA,
        rtc.VideoBufferType.I420,
        rtc.VideoBufferType.I444,
        rtc.VideoBufferType.NV12,
    }
)
"""Buffer types the FFI converts to RGBA (what the JPEG encoder needs). Decoded remote video is
I420 or NV12. Of the others, ARGB, RGB24 and I420A are refused by the FFI, ABGR and I010 abort
the whole process (a Rust panic in livekit-ffi 1.1.10) and a 4K I422 frame crashes it
(segmentation fault), so they are never handed to it."""


@dataclass(frozen=True)
class ImageOptions:
    max_size: int = 768
    """Longest side of the image sent to the LLM, in pixels."""
    detail: Literal["auto", "high", "low"] = "low"
    """OpenAI image detail: "low" costs 85 tokens and keeps replies fast."""
    jpeg_quality: int = 75
    refresh_seconds: float = 1.0
    """While the user speaks, the ready image is refreshed at most this often."""
    look_wait_seconds: float = 1.0
    """How long a look waits for the first frame of a track not being received."""


def encode_image(frame: rtc.VideoFrame, options: ImageOptions) -> llm.ChatImage:
    """Resize to fit ``max_size`` and encode as a JPEG data URL (blocking: run it in a thread).
    Raises ValueError for a frame that cannot be encoded safely (see ``ENCODABLE``)."""
    if frame.type not in ENCODABLE or frame.width < 1 or frame.height < 1:
        raise ValueError(f"cannot encode a {frame.width}x{frame.height} frame of type {frame.type}")
    scale = min(1.0, options.max_size / max(frame.width, frame.height, 1))
    width, height = max(1, round(frame.width * scale)), max(1, round(frame.height * scale))
    jpeg = encode(
        frame,
        EncodeOptions(
            format="JPEG",
            quality=options.jpeg_quality,
            resize_options=ResizeOptions(width, height, "scale_aspect_fit"),
        ),
    )
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return llm.ChatImage(
        image=url, inference_width=width, inference_height=height, inference_detail=options.detail
    )


@dataclass
class _Feed:
    track: rtc.Track
    source: rtc.TrackSource.ValueType
    stream: rtc.VideoStream | None = None  # open only while frames are wanted
    task: asyncio.Task[None] | None = None
    opened_at: float = 0.0
    newest: rtc.VideoFrame | None = None
    newest_at: float = 0.0
    ready: llm.ChatImage | None = None
    ready_from: float = -1.0  # newest_at of the frame `ready` was made from

    @property
    def waiting_for_first_frame(self) -> bool:
        return self.stream is not None and self.newest_at < self.opened_at


class VideoCapture:
    """Keeps the newest frame of each video track and a ready-encoded image of it."""

    def __init__(self, options: ImageOptions | None = None) -> None:
        self._opts = options or ImageOptions()
        self._feeds: dict[str, _Feed] = {}
        self._encoding: asyncio.Task[None] | None = None
        self._last_refresh = 0.0
        self._user_speaking = False
        self._looks = 0  # fresh_images() calls in progress
        self._frame_arrived = asyncio.Event()
        self._closing: set[asyncio.Task[None]] = set()

    def add_track(self, track: rtc.Track, source: rtc.TrackSource.ValueType) -> None:
        if track.sid in self._feeds or source not in VIDEO_SOURCES:
            return
        self._feeds[track.sid] = _Feed(track=track, source=source)
        self._receive_while_wanted()

    async def remove_track(self, sid: str) -> None:
        feed = self._feeds.pop(sid, None)
        if feed is not None and feed.stream is not None:
            await self._close_stream(feed.stream, feed.task)

    def user_speaking(self, speaking: bool) -> None:
        """Receive frames while the user speaks: their turn's image is made from them."""
        self._user_speaking = speaking
        self._receive_while_wanted()

    @property
    def receiving(self) -> bool:
        return any(feed.stream is not None for feed in self._feeds.values())

    def _receive_while_wanted(self) -> None:
        wanted = self._user_speaking or self._looks > 0
        for feed in self._feeds.values():
            if wanted and feed.stream is None:
                feed.stream = rtc.VideoStream(feed.track, capacity=1)
                feed.opened_at = time.perf_counter()
                feed.task = asyncio.create_task(
                    self._read(feed, feed.stream), name=f"video_capture:{feed.track.sid}"
                )
            elif not wanted and feed.stream is not None:
                closing = asyncio.create_task(self._close_stream(feed.stream, feed.task))
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
                feed.stream = feed.task = None

    async def _read(self, feed: _Feed, stream: rtc.VideoStream) -> None:
        async for event in stream:
            feed.newest, feed.newest_at = event.frame, time.perf_counter()
            self._frame_arrived.set()

    def refresh(self) -> None:
        """Encode the newest frames in the background if they changed (rate-limited)."""
        now = time.perf_counter()
        if self._encoding is not None and not self._encoding.done():
            return
        if now - self._last_refresh < self._opts.refresh_seconds:
            return
        stale = self._stale()
        if not stale:
            return
        self._last_refresh = now
        self._encoding = asyncio.create_task(self._encode(stale), name="video_capture:encode")

    def _stale(self) -> list[_Feed]:
        return [
            f for f in self._feeds.values() if f.newest is not None and f.ready_from != f.newest_at
        ]

    async def _encode(self, feeds: list[_Feed]) -> None:
        for feed in feeds:
            frame, at = feed.newest, feed.newest_at
            if frame is None:
                continue
            try:
                feed.ready = await asyncio.to_thread(encode_image, frame, self._opts)
                feed.ready_from = at
            except Exception:
                logger.warning(
                    "could not encode a video frame",
                    exc_info=True,
                    extra={"width": frame.width, "height": frame.height},
                )

    def images(self) -> list[llm.ChatImage]:
        """The ready images (camera first, then screen share); never encodes."""
        feeds = sorted(self._feeds.values(), key=lambda f: VIDEO_SOURCES.index(f.source))
        return [f.ready for f in feeds if f.ready is not None]

    async def fresh_images(self) -> list[llm.ChatImage]:
        """Encode the newest frames now (for "look at the camera"), then return them. Tracks
        not being received are received until their next frame (at most ``look_wait_seconds``;
        a still screen share may send none)."""
        self._looks += 1
        try:
            self._receive_while_wanted()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._opts.look_wait_seconds):
                    while any(f.waiting_for_first_frame for f in self._feeds.values()):
                        self._frame_arrived.clear()
                        await self._frame_arrived.wait()
            if self._encoding is not None:
                await asyncio.shield(self._encoding)
            stale = self._stale()
            if stale:
                self._encoding = asyncio.create_task(
                    self._encode(stale), name="video_capture:encode"
                )
                await asyncio.shield(self._encoding)
        finally:
            self._looks -= 1
            self._receive_while_wanted()
        return self.images()

    @staticmethod
    async def _close_stream(stream: rtc.VideoStream, task: asyncio.Task[None] | None) -> None:
        if task is not None:
            await utils.aio.gracefully_cancel(task)
        await stream.aclose()

    async def aclose(self) -> None:
        if self._encoding is not None:
            await utils.aio.gracefully_cancel(self._encoding)
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            if feed.stream is not None:
                await self._close_stream(feed.stream, feed.task)
        await asyncio.gather(*self._closing, return_exceptions=True)
