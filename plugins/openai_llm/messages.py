"""ChatContext -> the `messages` of a chat completions request.

* Text is sent as it is. A message whose content is text only is one string (several strings
  joined by newlines); with media, each item becomes a part, in order.
* ChatImage (user messages): rtc.VideoFrame -> JPEG data URL (see `media.image_url`), URL
  strings passed through; detail = the image's `inference_detail`, or the options' default
  when that is "auto".
* ChatAudio (user messages): one `input_audio` part (16 kHz mono WAV) when the model takes
  audio input, else left out with a debug log (the transcript text carries the words).
* Media in system/assistant messages is left out (the API only takes it from the user).
* Assistant tool calls -> `tool_calls`, with `content` "" when there is no text (OpenAI
  takes it; llama.cpp's server rejects null and a missing key).
* Tool results -> `tool` messages whose content is the result string, other results
  JSON-encoded, an exception as "Error: ...".
* A user/system/assistant message left with nothing to send is skipped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from livekit.agents.llm import (
    ChatAudio,
    ChatContent,
    ChatContext,
    ChatImage,
    ChatMessage,
    FunctionCallInfo,
)

from .log import logger
from .media import audio_wav_base64, image_needs_encoding, image_url
from .models import takes_audio_input
from .options import _LLMOptions

Message = dict[str, Any]


def _contents(msg: ChatMessage) -> list[ChatContent]:
    if msg.content is None:
        return []
    return msg.content if isinstance(msg.content, list) else [msg.content]


def _image_part(image: ChatImage, opts: _LLMOptions) -> dict[str, Any]:
    detail = image.inference_detail if image.inference_detail != "auto" else opts.image_detail
    url = image_url(image, opts.image_max_size, opts.image_jpeg_quality)
    return {"type": "image_url", "image_url": {"url": url, "detail": detail}}


def _audio_part(audio: ChatAudio) -> dict[str, Any] | None:
    data = audio_wav_base64(audio)
    if data is None:
        return None
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def _user_content(msg: ChatMessage, opts: _LLMOptions, audio_input: bool) -> str | list[Any]:
    parts: list[dict[str, Any]] = []
    for item in _contents(msg):
        if isinstance(item, str):
            parts.append({"type": "text", "text": item})
        elif isinstance(item, ChatImage):
            if opts.image_input:
                parts.append(_image_part(item, opts))
            else:
                logger.debug(
                    "image left out of the request",
                    extra={"model": opts.model, "message_id": msg.id},
                )
        elif isinstance(item, ChatAudio):
            part = _audio_part(item) if audio_input else None
            if part is not None:
                parts.append(part)
            else:
                logger.debug(
                    "audio left out of the request",
                    extra={"model": opts.model, "message_id": msg.id},
                )
    if all(p["type"] == "text" for p in parts):
        return "\n".join(p["text"] for p in parts)
    return parts


def _text_only(msg: ChatMessage) -> str:
    texts = [c for c in _contents(msg) if isinstance(c, str)]
    if len(texts) != len(_contents(msg)):
        logger.debug("media left out of a %s message", msg.role, extra={"message_id": msg.id})
    return "\n".join(texts)


def _arguments_json(call: FunctionCallInfo) -> str:
    """The call's arguments as sent by the model, or re-encoded when they were not valid JSON
    (servers may reject a history with broken arguments; the tool result explains it)."""
    try:
        json.loads(call.raw_arguments)
        return call.raw_arguments
    except (ValueError, RecursionError):  # RecursionError: nested too deeply to parse
        return json.dumps(call.arguments)


def _tool_result(msg: ChatMessage) -> str:
    if isinstance(msg.content, str):
        return msg.content
    if msg.tool_exception is not None:
        return f"Error: {msg.tool_exception}"
    if msg.content is None:
        return ""
    return json.dumps(msg.content, ensure_ascii=False, default=str)


def _message(msg: ChatMessage, opts: _LLMOptions, audio_input: bool) -> Message | None:
    if msg.role == "tool":
        return {"role": "tool", "tool_call_id": msg.tool_call_id, "content": _tool_result(msg)}
    if msg.role == "user":
        content: str | list[Any] = _user_content(msg, opts, audio_input)
    else:
        content = _text_only(msg)
    out: Message = {"role": msg.role, "content": content}
    if msg.role == "assistant" and msg.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.tool_call_id,
                "type": "function",
                "function": {"name": call.function_info.name, "arguments": _arguments_json(call)},
            }
            for call in msg.tool_calls
        ]
    elif not content:
        logger.debug("empty %s message skipped", msg.role, extra={"message_id": msg.id})
        return None
    return out


def build_messages(messages: Sequence[ChatMessage], opts: _LLMOptions) -> list[Message]:
    """Blocking when frames must be encoded or audio is sent: see `to_request_messages`."""
    audio_input = takes_audio_input(opts.model, opts.audio_input)
    out = [_message(m, opts, audio_input) for m in messages]
    return [m for m in out if m is not None]


def _needs_blocking_work(messages: Sequence[ChatMessage], opts: _LLMOptions) -> bool:
    audio_input = takes_audio_input(opts.model, opts.audio_input)
    for msg in messages:
        if msg.role != "user":
            continue
        for item in _contents(msg):
            if isinstance(item, ChatAudio) and audio_input:
                return True
            if (
                isinstance(item, ChatImage)
                and opts.image_input
                and image_needs_encoding(item, opts.image_max_size, opts.image_jpeg_quality)
            ):
                return True
    return False


async def to_request_messages(chat_ctx: ChatContext, opts: _LLMOptions) -> list[Message]:
    """`build_messages`, run in a worker thread when it has media to encode (new frames,
    audio), inline otherwise (text and already-encoded images cost microseconds)."""
    messages = list(chat_ctx.messages)
    if _needs_blocking_work(messages, opts):
        return await asyncio.to_thread(build_messages, messages, opts)
    return build_messages(messages, opts)
