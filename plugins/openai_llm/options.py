"""Options of the OpenAI-compatible LLM plugin."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

AudioInputMode = Literal["auto", "on", "off"]
ImageDetail = Literal["auto", "low", "high"]
MaxTokensField = Literal["max_completion_tokens", "max_tokens"]


@dataclass(frozen=True)
class LLMOptions:
    """What to ask for and how to build requests.

    `api_key=None` falls back to `OPENAI_API_KEY`; with a custom `base_url` (a local server)
    a missing key is allowed and a placeholder is sent.
    """

    model: str = "gpt-4o-mini"
    base_url: str | None = None
    api_key: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    # OpenAI's current name is `max_completion_tokens`; some compatible servers only know the
    # older `max_tokens`.
    max_tokens_field: MaxTokensField = "max_completion_tokens"
    # Whether ChatAudio is sent as an `input_audio` part (see `takes_audio_input`).
    audio_input: AudioInputMode = "auto"
    # False for models that cannot see (e.g. a small local text model): images are left out.
    image_input: bool = True
    # Used for ChatImages whose own `inference_detail` is "auto".
    image_detail: ImageDetail = "auto"
    # Longest side (px) of a camera frame sent as an image, unless the ChatImage sets
    # inference_width/height. Frames are never upscaled.
    image_max_size: int = 768
    image_jpeg_quality: int = 75
    extra_headers: dict[str, str] = field(default_factory=dict)


def takes_audio_input(model: str, mode: AudioInputMode) -> bool:
    """Whether requests for `model` carry ChatAudio.

    `on`/`off` force it. `auto` decides from the model name: chat-completions models that
    accept `input_audio` carry "audio" in their name (gpt-4o-audio-preview,
    gpt-4o-mini-audio-preview, gpt-audio, gpt-audio-mini, ...). Everything else gets the
    transcript text only.
    """
    if mode == "on":
        return True
    if mode == "off":
        return False
    return "audio" in model.lower()
