"""Plain types of the OpenAI-compatible LLM plugin (like LiveKit plugins' ``models.py``).

Nothing here imports the openai SDK or livekit-agents, so the worker's settings can validate
``LLM_AUDIO_INPUT`` against :data:`AudioInputMode` without paying for them.
"""

from __future__ import annotations

from typing import Literal

AudioInputMode = Literal["auto", "on", "off"]
"""Whether ChatAudio is sent as an ``input_audio`` part: see :func:`takes_audio_input`."""

ImageDetail = Literal["auto", "low", "high"]

MaxTokensField = Literal["max_completion_tokens", "max_tokens"]
"""OpenAI's current name is ``max_completion_tokens``; some compatible servers only know the
older ``max_tokens``."""


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
