"""The project's LLM plugin: livekit-agents 0.12 LLM/LLMStream on the openai SDK.

For OpenAI and any OpenAI-compatible server (vLLM, Ollama, llama.cpp server, Groq, ...).
Sends ChatImage (JPEG data URLs, encoded once per frame) and ChatAudio (`input_audio`, for
audio-input models), streams text and tool calls (each call as soon as it is complete), and
turns tool-call mistakes into tool results the model can read.
"""

from .llm import LLM, LLMStream
from .messages import build_messages, to_request_messages
from .options import AudioInputMode, ImageDetail, LLMOptions, takes_audio_input
from .tool_calls import InvalidFunctionCall, ToolCallAssembler, build_call
from .tool_schema import build_tools

__all__ = [
    "LLM",
    "AudioInputMode",
    "ImageDetail",
    "InvalidFunctionCall",
    "LLMOptions",
    "LLMStream",
    "ToolCallAssembler",
    "build_call",
    "build_messages",
    "build_tools",
    "takes_audio_input",
    "to_request_messages",
]
