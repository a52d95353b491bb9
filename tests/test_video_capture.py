"""Camera frames are received only while wanted: while the user speaks and during a look (a live
camera in the in-process room, real JPEG encoding)."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from tests.conftest import camera_frame, eventually, open_ffi_subscriptions
from worker.local_room import LocalRoom, VideoFeed, as_rtc_room
from worker.room_io.video import ImageOptions, VideoCapture

pytestmark = pytest.mark.timeout(60)


class LiveCamera:
    """Sends a frame of the current shade every 40 ms."""

    def __init__(self, feed: VideoFeed) -> None:
        self.shade = 0
        self._feed = feed
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            self._feed.capture_frame(camera_frame(64, 48, self.shade))
            await asyncio.sleep(0.04)

    async def aclose(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def published_camera(
    room: LocalRoom, options: ImageOptions
) -> tuple[VideoFeed, VideoCapture]:
    """A participant's camera, and a capture of it as the agent sees it (subscribed)."""
    user = room.add_participant("user")
    feed = user.publish_camera(width=64, height=48)
    participant = as_rtc_room(room).remote_participants[user.identity]
    publication = participant.track_publications[feed.publication.sid]
    await eventually(lambda: publication.track is not None)
    assert publication.track is not None
    capture = VideoCapture(options)
    capture.add_track(publication.track, publication.source)
    return feed, capture


@pytest.fixture
async def camera() -> AsyncIterator[tuple[VideoCapture, LiveCamera]]:
    room = LocalRoom()
    feed, capture = await published_camera(room, ImageOptions(refresh_seconds=0.0))
    live = LiveCamera(feed)
    try:
        yield capture, live
    finally:
        await capture.aclose()
        await live.aclose()
        await room.aclose()


def blue_of(capture: VideoCapture) -> int:
    """The shade (blue channel) of the ready image's first pixel, from its JPEG."""
    (image,) = capture.images()
    url = str(image.image)
    jpeg = base64.b64decode(url.split(",", 1)[1])
    pixel = Image.open(io.BytesIO(jpeg)).convert("RGB").getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return int(pixel[2])


async def test_frames_are_received_only_while_the_user_speaks(
    camera: tuple[VideoCapture, LiveCamera],
) -> None:
    capture, _ = camera
    idle = open_ffi_subscriptions()
    await asyncio.sleep(0.3)  # the camera is live, nobody speaks
    assert not capture.receiving
    capture.refresh()
    assert capture.images() == []

    capture.user_speaking(True)
    assert capture.receiving
    assert open_ffi_subscriptions() == idle + 1
    async with asyncio.timeout(5):
        while not capture.images():
            capture.refresh()
            await asyncio.sleep(0.05)

    capture.user_speaking(False)
    assert not capture.receiving
    await eventually(lambda: open_ffi_subscriptions() == idle)  # closed in the background
    # the turn's image stays ready after the user stopped speaking
    assert len(capture.images()) == 1


async def test_a_look_receives_a_frame_sent_after_it_asked_then_stops(
    camera: tuple[VideoCapture, LiveCamera],
) -> None:
    capture, live = camera
    idle = open_ffi_subscriptions()
    live.shade = 40
    await asyncio.sleep(0.2)
    live.shade = 200  # what the camera shows from now on
    (image,) = await capture.fresh_images()
    assert image is capture.images()[0]
    assert abs(blue_of(capture) - 200) < 12  # JPEG is lossy
    assert not capture.receiving
    await eventually(lambda: open_ffi_subscriptions() == idle)
