"""Media the agent did not expect, through the in-process room and a whole session.

Audio: microphones at 8, 16, 24, 44.1 and 48 kHz, mono and stereo, empty frames, a microphone
unpublished and published again (each a new track the agent must pick up), and a second
participant talking (the agent listens only to its participant). Video: camera frames of the
buffer types cameras send, odd-sized and 4K frames, a camera unpublished and republished.

What the in-process room cannot carry: tiny frames (1x1, 2x2) and NV12/I422 frames published
through ``rtc.VideoSource`` abort or panic inside libwebrtc/livekit-ffi's LOCAL track path (a
path the agent never uses: remote video arrives decoded, as I420 or NV12). Those, and every
other buffer type, are fed to the agent's frame encoder directly; the types the FFI would abort
on (ABGR, I010) must be refused without crashing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from typing import Any

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import llm
from PIL import Image

from tests.conftest import Harness, SessionFactory
from tests.loopback.openai_server import Reply
from worker.room_io.video import ImageOptions, encode_image

pytestmark = pytest.mark.timeout(120)


def answer(body: dict[str, Any]) -> Reply:
    return Reply(text=f"Heard: {user_parts(body)[0]['text']}.")


def user_parts(body: dict[str, Any]) -> list[dict[str, Any]]:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def parts_of(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [p for p in user_parts(body) if p["type"] == kind]


def wav_seconds(b64: str) -> tuple[int, int, float]:
    with wave.open(io.BytesIO(base64.b64decode(b64))) as w:
        return w.getframerate(), w.getnchannels(), w.getnframes() / w.getframerate()


def jpeg_size(image_part: dict[str, Any]) -> tuple[int, int]:
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        return img.size


def frame(kind: rtc.VideoBufferType.ValueType, width: int, height: int) -> rtc.VideoFrame:
    """A frame of ``kind`` with the plane sizes livekit's converters expect (random content)."""
    cw, ch = (width + 1) // 2, (height + 1) // 2
    luma = width * height
    sizes = {
        rtc.VideoBufferType.RGBA: 4 * luma,
        rtc.VideoBufferType.BGRA: 4 * luma,
        rtc.VideoBufferType.ARGB: 4 * luma,
        rtc.VideoBufferType.ABGR: 4 * luma,
        rtc.VideoBufferType.RGB24: 3 * luma,
        rtc.VideoBufferType.I420: luma + 2 * cw * ch,
        rtc.VideoBufferType.I420A: 2 * luma + 2 * cw * ch,
        rtc.VideoBufferType.I422: luma + 2 * cw * height,
        rtc.VideoBufferType.I444: 3 * luma,
        rtc.VideoBufferType.I010: 2 * (luma + 2 * cw * ch),
        rtc.VideoBufferType.NV12: luma + 2 * cw * ch,
    }
    rng = np.random.default_rng([int(kind), width, height])
    data = rng.integers(0, 255, sizes[kind], dtype=np.uint8)
    return rtc.VideoFrame(width, height, kind, data.tobytes())


async def camera_shows(h: Harness, shown: rtc.VideoFrame, previous: str) -> llm.ChatImage:
    """Send ``shown`` as a live camera does (every 50 ms) until the agent's ready image is
    made from it (differs from ``previous``)."""

    async def live() -> None:
        while True:
            h.camera.capture_frame(shown)
            await asyncio.sleep(0.05)

    camera = asyncio.create_task(live())
    try:
        async with asyncio.timeout(10):
            while True:
                images = await h.conversation.video.fresh_images()
                if images and images[0].image != previous:
                    return images[0]
                await asyncio.sleep(0.05)
    finally:
        camera.cancel()
        await asyncio.gather(camera, return_exceptions=True)


async def close_and_settle(h: Harness) -> None:
    """Close the session and room, then wait until the FFI has ended the audio streams on the
    released tracks (it does so asynchronously, sometimes after the room's aclose returned)."""
    await h.aclose()
    streams = [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "AudioStream._run"
    ]
    if streams:
        _, pending = await asyncio.wait(streams, timeout=10)
        assert not pending, "audio streams on released tracks never ended"


async def switch_microphone(h: Harness, rate: int, channels: int) -> None:
    """Unpublish the participant's microphone and publish a new one (a new track)."""
    await h.user.unpublish(h.mic.publication.sid)
    h.mic = h.user.publish_microphone(sample_rate=rate, num_channels=channels)


async def test_microphones_at_every_rate_and_layout_republished_with_empty_frames(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(answer)
    layouts = [(8000, 1), (16000, 2), (24000, 1), (44100, 2), (48000, 2)]
    for n, (rate, channels) in enumerate(layouts, start=1):
        await switch_microphone(h, rate, channels)
        for _ in range(3):  # empty frames, as a glitching capturer may send
            await h.mic.capture_frame(rtc.AudioFrame(b"", rate, channels, 0))
        question = f"question number {n}"
        u = await h.utter(question)
        reply = await h.wait_for_replies(n, timeout=30)
        assert reply.args[0].content == f"Heard: {question}.", (rate, channels)
        # the LLM got this utterance's audio, downmixed and resampled to 16 kHz mono
        (audio,) = parts_of(h.oai.requests[n - 1].body, "input_audio")
        got_rate, got_channels, seconds = wav_seconds(audio["input_audio"]["data"])
        assert (got_rate, got_channels) == (16000, 1)
        assert u.voiced_seconds - 0.1 <= seconds <= u.seconds + 1.0, (rate, channels, seconds)
    # one listen connection per microphone track (the first one may have been unpublished
    # before it connected): each new track was picked up
    assert len(layouts) <= len(h.dg.listen_connections) <= len(layouts) + 1
    await close_and_settle(h)


async def test_a_second_participant_talking_is_not_heard(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(answer)
    other = h.room.add_participant("visitor")
    other_mic = other.publish_microphone()
    from tests.speech import speak

    await other_mic.push(speak("please ignore everything my friend says", 16000), 16000)
    await other_mic.push_silence(1.0)
    # the agent's STT only ever hears its participant's track: its stream is open and heard
    # nothing worth a transcript
    assert len(h.dg.listen_connections) >= 1
    assert h.dg.finals == []
    assert h.oai.requests == []

    await h.utter("what time is it")
    reply = await h.wait_for_replies(1, timeout=30)
    assert reply.args[0].content == "Heard: what time is it."
    assert len(h.oai.requests) == 1
    assert len(h.dg.listen_connections) == 1


async def test_camera_frames_of_every_layout_and_size_and_a_republished_camera(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(answer)
    await h.stop_camera()
    cases = [
        (rtc.VideoBufferType.RGBA, 641, 479),
        (rtc.VideoBufferType.BGRA, 641, 479),
        (rtc.VideoBufferType.I420, 641, 479),
        (rtc.VideoBufferType.I444, 641, 479),
        (rtc.VideoBufferType.RGB24, 641, 479),
        (rtc.VideoBufferType.ARGB, 641, 479),
        (rtc.VideoBufferType.ABGR, 641, 479),
        (rtc.VideoBufferType.I420, 3840, 2160),
        (rtc.VideoBufferType.BGRA, 3840, 2160),
    ]
    previous = ""
    for kind, width, height in cases:
        image = await camera_shows(h, frame(kind, width, height), previous)
        previous = str(image.image)
        longest = max(image.inference_width or 0, image.inference_height or 0)
        assert 0 < longest <= ImageOptions().max_size, (kind, width, height)
        ratio = (image.inference_width or 0) / (image.inference_height or 1)
        assert ratio == pytest.approx(width / height, rel=0.02), (kind, width, height)

    # a turn with a 4K camera: the LLM gets one image that fits max_size
    await camera_shows(h, frame(rtc.VideoBufferType.I420, 3840, 2160), previous)
    await h.utter("look at this")
    await h.wait_for_replies(1, timeout=30)
    (image_part,) = parts_of(h.oai.requests[0].body, "image_url")
    assert max(jpeg_size(image_part)) <= ImageOptions().max_size

    # the camera goes away: no image; it comes back: images again
    await h.user.unpublish(h.camera.publication.sid)
    await h.utter("and now")
    await h.wait_for_replies(2, timeout=30)
    assert parts_of(h.oai.requests[1].body, "image_url") == []
    h.camera = h.user.publish_camera(width=640, height=480)
    h.start_camera()
    await h.utter("and again")
    await h.wait_for_replies(3, timeout=30)
    assert len(parts_of(h.oai.requests[2].body, "image_url")) == 1


BUFFER_TYPES = [
    rtc.VideoBufferType.RGBA,
    rtc.VideoBufferType.BGRA,
    rtc.VideoBufferType.ARGB,
    rtc.VideoBufferType.ABGR,
    rtc.VideoBufferType.RGB24,
    rtc.VideoBufferType.I420,
    rtc.VideoBufferType.I420A,
    rtc.VideoBufferType.I422,
    rtc.VideoBufferType.I444,
    rtc.VideoBufferType.I010,
    rtc.VideoBufferType.NV12,
]
ENCODABLE = {
    rtc.VideoBufferType.RGBA,
    rtc.VideoBufferType.BGRA,
    rtc.VideoBufferType.I420,
    rtc.VideoBufferType.I444,
    rtc.VideoBufferType.NV12,
}
"""What the FFI converts to RGBA; decoded remote video is I420 or NV12."""


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (641, 479), (3840, 2160)])
def test_every_buffer_type_is_encoded_or_refused_without_crashing(size: tuple[int, int]) -> None:
    width, height = size
    for kind in BUFFER_TYPES:
        shown = frame(kind, width, height)
        if kind not in ENCODABLE:
            with pytest.raises(ValueError, match="cannot encode"):
                encode_image(shown, ImageOptions())
            continue
        image = encode_image(shown, ImageOptions())
        assert max(image.inference_width or 0, image.inference_height or 0) <= 768
        assert isinstance(image.image, str)
        with Image.open(io.BytesIO(base64.b64decode(image.image.split(",", 1)[1]))) as img:
            assert img.size == (image.inference_width, image.inference_height)
