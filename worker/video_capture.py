"""The participant's camera and screen share -> the newest frame, ready as a ChatImage.

Only the newest frame of each video track is kept (no queue growth). Encoding (resize + JPEG)
runs in a thread while the user is speaking, so at the end of their turn a ready image is
attached at no cost on the voice path.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass
from typing import Literal

from livekit import rtc
from livekit.agents import llm, utils
from livekit.agents.utils.images import EncodeOptions, ResizeOptions, encode

logger = logging.getLogger("worker.video_capture")

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
    source: rtc.TrackSource.ValueType
    stream: rtc.VideoStream
    task: asyncio.Task[None] | None = None
    newest: rtc.VideoFrame | None = None
    newest_at: float = 0.0
    ready: llm.ChatImage | None = None
    ready_from: float = -1.0  # newest_at of the frame `ready` was made from


class VideoCapture:
    """Keeps the newest frame of each video track and a ready-encoded image of it."""

    def __init__(self, options: ImageOptions | None = None) -> None:
        self._opts = options or ImageOptions()
        self._feeds: dict[str, _Feed] = {}
        self._encoding: asyncio.Task[None] | None = None
        self._last_refresh = 0.0

    def add_track(self, track: rtc.Track, source: rtc.TrackSource.ValueType) -> None:
        if track.sid in self._feeds or source not in VIDEO_SOURCES:
            return
        stream = rtc.VideoStream(track, capacity=1)
        feed = _Feed(source=source, stream=stream)
        feed.task = asyncio.create_task(self._read(feed), name=f"video_capture:{track.sid}")
        self._feeds[track.sid] = feed

    async def remove_track(self, sid: str) -> None:
        feed = self._feeds.pop(sid, None)
        if feed is not None:
            await self._close_feed(feed)

    async def _read(self, feed: _Feed) -> None:
        async for event in feed.stream:
            feed.newest, feed.newest_at = event.frame, time.perf_counter()

    def refresh(self) -> None:
        """Encode the newest frames in the background if they changed (rate-limited)."""
        now = time.perf_counter()
        if self._encoding is not None and not self._encoding.done():
            return
        if now - self._last_refresh < self._opts.refresh_seconds:
            return
        stale = [
            f for f in self._feeds.values() if f.newest is not None and f.ready_from != f.newest_at
        ]
        if not stale:
            return
        self._last_refresh = now
        self._encoding = asyncio.create_task(self._encode(stale), name="video_capture:encode")

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
        """Encode the newest frames now (for "look at the camera"), then return them."""
        if self._encoding is not None:
            await asyncio.shield(self._encoding)
        stale = [
            f for f in self._feeds.values() if f.newest is not None and f.ready_from != f.newest_at
        ]
        if stale:
            self._encoding = asyncio.create_task(self._encode(stale), name="video_capture:encode")
            await asyncio.shield(self._encoding)
        return self.images()

    async def _close_feed(self, feed: _Feed) -> None:
        if feed.task is not None:
            await utils.aio.gracefully_cancel(feed.task)
        await feed.stream.aclose()

    async def aclose(self) -> None:
        if self._encoding is not None:
            await utils.aio.gracefully_cancel(self._encoding)
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            await self._close_feed(feed)
