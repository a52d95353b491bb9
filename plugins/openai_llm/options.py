"""The LLM's settings as one private value, shared by the request builders."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from livekit.agents.llm import ToolChoice

from .models import AudioInputMode, ImageDetail, MaxTokensField


@dataclass(frozen=True)
class _LLMOptions:
    """Everything of a request but the messages, the tools and the client; the defaults are
    the constructor's (`LLM.__init__` documents each field)."""

    model: str
    user: str | None
    temperature: float | None
    parallel_tool_calls: bool | None
    tool_choice: ToolChoice | Literal["auto", "required", "none"] | None
    store: bool | None
    metadata: dict[str, str] | None
    audio_input: AudioInputMode
    image_input: bool
    image_detail: ImageDetail
    image_max_size: int
    image_jpeg_quality: int
    max_output_tokens: int | None
    max_tokens_field: MaxTokensField
    extra_headers: dict[str, str]
