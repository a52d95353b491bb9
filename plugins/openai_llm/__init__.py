"""OpenAI-compatible LLM for livekit-agents 0.12, on the openai SDK.

For OpenAI and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, Groq, ...).
Constructed like ``livekit.plugins.openai.LLM`` (0.12): the same keyword arguments with the
same defaults, so a port changes the import line only. On top of it: ChatImage (JPEG data
URLs, encoded once per frame) and ChatAudio (``input_audio``, for audio-input models) are
sent, tool calls stream out each as soon as it is complete, and tool-call mistakes become
tool results the model can read.

Install: part of the base install (``pip install -e .``; the openai SDK is a dependency).

Usage::

    from plugins.openai_llm import LLM

    llm = LLM(model="gpt-4o-audio-preview", temperature=0.7, audio_input="auto")
    agent = VoicePipelineAgent(vad=vad, stt=stt, llm=llm, tts=tts)

The plain types (``AudioInputMode``, ...) come from ``models``, which needs neither the
openai SDK nor livekit-agents; the names that do are imported on first use, so the worker's
settings can validate against ``AudioInputMode`` without loading the SDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .models import AudioInputMode, ImageDetail, MaxTokensField, takes_audio_input

if TYPE_CHECKING:
    from .llm import LLM, LLMStream
    from .tool_calls import InvalidFunctionCall, ToolCallAssembler, build_call
    from .tool_schema import build_tools

_LAZY = {
    "LLM": "llm",
    "LLMStream": "llm",
    "InvalidFunctionCall": "tool_calls",
    "ToolCallAssembler": "tool_calls",
    "build_call": "tool_calls",
    "build_tools": "tool_schema",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "LLM",
    "AudioInputMode",
    "ImageDetail",
    "InvalidFunctionCall",
    "LLMStream",
    "MaxTokensField",
    "ToolCallAssembler",
    "build_call",
    "build_tools",
    "takes_audio_input",
]
