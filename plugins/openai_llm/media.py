"""ChatImage and ChatAudio -> what the chat completions API takes.

Both encoders are blocking (Pillow, the rtc FFI resampler): call them off the event loop.
`image_needs_encoding` tells, cheaply, whether `image_url` would have to encode.
"""

from __future__ import annotations

import base64

import numpy as np
from livekit import rtc
from livekit.agents.llm import ChatAudio, ChatImage
from livekit.agents.utils.images import EncodeOptions, ResizeOptions, encode

AUDIO_SAMPLE_RATE = 16000
_CACHE_TAG = "plugins.openai_llm"


def _fit(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int] | None:
    """Size that fits (width, height) into the box keeping the aspect; None if it fits already."""
    scale = min(box_w / width, box_h / height)
    if scale >= 1.0:
        return None
    return max(1, round(width * scale)), max(1, round(height * scale))


def _box(image: ChatImage, max_size: int) -> tuple[int, int]:
    return image.inference_width or max_size, image.inference_height or max_size


def _cache_key(image: ChatImage, max_size: int, quality: int) -> tuple[str, int, int, int]:
    return (_CACHE_TAG, *_box(image, max_size), quality)


def image_needs_encoding(image: ChatImage, max_size: int, quality: int) -> bool:
    return isinstance(image.image, rtc.VideoFrame) and (
        _cache_key(image, max_size, quality) not in image._cache
    )


def image_url(image: ChatImage, max_size: int, quality: int) -> str:
    """The URL to send for `image`: URL strings as they are, frames as a JPEG data URL.

    A frame is scaled down (never up) to fit `inference_width` x `inference_height` if set,
    else a `max_size` square, and encoded once: the data URL is kept in `image._cache`, so a
    rolling context that re-sends the image costs nothing. (``ChatImage._cache`` is private by
    name but documented by 0.12 as the cache "used internally by LLM implementations": the
    plugin contract, as LiveKit's own OpenAI plugin uses it.)
    """
    if isinstance(image.image, str):
        return image.image
    key = _cache_key(image, max_size, quality)
    cached = image._cache.get(key)
    if cached is None:
        frame = image.image
        size = _fit(frame.width, frame.height, *_box(image, max_size))
        resize = ResizeOptions(size[0], size[1], "skew") if size else None
        jpeg = encode(frame, EncodeOptions(format="JPEG", quality=quality, resize_options=resize))
        cached = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
        image._cache[key] = cached
    return str(cached)


def audio_wav_base64(audio: ChatAudio) -> str | None:
    """All frames of `audio` as one 16 kHz mono WAV, base64; None when there are no frames."""
    frames = audio.frame if isinstance(audio.frame, list) else [audio.frame]
    if not frames:
        return None
    combined = rtc.combine_audio_frames(frames)
    if combined.num_channels > 1:
        pcm = np.frombuffer(combined.data, dtype=np.int16).reshape(-1, combined.num_channels)
        mono = pcm.mean(axis=1).astype(np.int16)
        combined = rtc.AudioFrame(
            data=mono.tobytes(),
            sample_rate=combined.sample_rate,
            num_channels=1,
            samples_per_channel=mono.size,
        )
    if combined.sample_rate != AUDIO_SAMPLE_RATE:
        resampler = rtc.AudioResampler(combined.sample_rate, AUDIO_SAMPLE_RATE, num_channels=1)
        out = resampler.push(combined) + resampler.flush()
        if not out:
            return None
        combined = rtc.combine_audio_frames(out)
    return base64.b64encode(combined.to_wav_bytes()).decode("ascii")
