"""livekit.agents 0.12 LLM / LLMStream on the openai SDK (streaming chat completions).

Works with OpenAI and any OpenAI-compatible server (vLLM, Ollama, llama.cpp, Groq, ...) via
`base_url`. The client is built with `max_retries=0`: the framework's LLMStream owns retries
(`conn_options`), and `errors.to_api_error` says what may be retried.

What a stream sends, in server order:
  * a ChatChunk per text delta (`choices[0].delta.content`);
  * a ChatChunk per tool call, `choices[0].delta.tool_calls == [FunctionCallInfo]`, at the
    moment the call's arguments are complete (see `tool_calls` for exactly when); the same
    call is appended to `stream.function_calls`. Calls the model got wrong arrive as
    `InvalidFunctionCall`s whose execution yields the error text for the model;
  * a ChatChunk with `usage` (no choices) at the end, which the base class turns into
    LLMMetrics (`metrics_collected`).
Errors: see `errors`; a body that ends without a finish_reason raises APIConnectionError
(retryable while nothing reached the consumer).
With n > 1 each text chunk carries one choice (check `Choice.index`, as with the 0.12 openai
plugin); only choice 0 is searched for tool calls and decides when the stream finished.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping
from typing import Any, Literal, cast

import openai
from livekit.agents import DEFAULT_API_CONNECT_OPTIONS, APIConnectionError, APIConnectOptions
from livekit.agents import llm as agents_llm
from livekit.agents.llm import (
    ChatChunk,
    ChatContext,
    Choice,
    ChoiceDelta,
    CompletionUsage,
    FunctionCallInfo,
    FunctionContext,
    LLMCapabilities,
    ToolChoice,
)
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from .errors import to_api_error
from .log import logger
from .messages import Message, to_request_messages
from .models import AudioInputMode, ImageDetail, MaxTokensField
from .options import _LLMOptions
from .tool_calls import ToolCallAssembler
from .tool_schema import build_tools

_PLACEHOLDER_KEY = "no-key"  # local servers ignore it; the SDK wants something


class LLM(agents_llm.LLM):
    def __init__(
        self,
        *,
        model: str = "gpt-4o",
        api_key: str | None = None,
        base_url: str | None = None,
        user: str | None = None,
        client: openai.AsyncOpenAI | None = None,
        temperature: float | None = None,
        parallel_tool_calls: bool | None = None,
        tool_choice: ToolChoice | Literal["auto", "required", "none"] | None = "auto",
        store: bool | None = None,
        metadata: dict[str, str] | None = None,
        audio_input: AudioInputMode = "auto",
        image_input: bool = True,
        image_detail: ImageDetail = "auto",
        image_max_size: int = 768,
        image_jpeg_quality: int = 75,
        max_output_tokens: int | None = None,
        max_tokens_field: MaxTokensField = "max_completion_tokens",
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        """The arguments up to `metadata` are those of ``livekit.plugins.openai.LLM`` (0.12),
        with the same defaults and meaning; `user`, `store` and `metadata` go into the request
        as they are, `temperature`, `parallel_tool_calls` and `tool_choice` are the defaults
        of ``chat()``'s arguments of the same name (tool choice and parallel calls are only
        sent with tools; None: not sent, the server's default).

        `api_key=None` falls back to `OPENAI_API_KEY`; with a `base_url` (a local server) a
        missing key is allowed and a placeholder is sent. `client`: bring your own
        AsyncOpenAI (it is then yours to close, and its base_url/api_key win). Otherwise one
        is created and closed by `aclose()`.

        This plugin's own:
          * `audio_input`: whether ChatAudio is sent as an `input_audio` part (see
            `models.takes_audio_input`);
          * `image_input`: False for models that cannot see (e.g. a small local text model):
            images are left out;
          * `image_detail`: used for ChatImages whose own `inference_detail` is "auto";
          * `image_max_size`: longest side (px) of a camera frame sent as an image, unless
            the ChatImage sets inference_width/height; frames are never upscaled;
          * `image_jpeg_quality`: of those frames;
          * `max_output_tokens`, sent as `max_tokens_field` (see `models.MaxTokensField`);
          * `extra_headers`: added to every request.
        """
        super().__init__(capabilities=LLMCapabilities(supports_choices_on_int=True))
        self._opts = _LLMOptions(
            model=model,
            user=user,
            temperature=temperature,
            parallel_tool_calls=parallel_tool_calls,
            tool_choice=tool_choice,
            store=store,
            metadata=dict(metadata) if metadata is not None else None,
            audio_input=audio_input,
            image_input=image_input,
            image_detail=image_detail,
            image_max_size=image_max_size,
            image_jpeg_quality=image_jpeg_quality,
            max_output_tokens=max_output_tokens,
            max_tokens_field=max_tokens_field,
            extra_headers=dict(extra_headers or {}),
        )
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY")
        self._owns_client = client is None
        if client is None:
            if not self._api_key and base_url is None:
                raise ValueError("no OpenAI API key: pass api_key or set OPENAI_API_KEY")
            client = openai.AsyncOpenAI(
                api_key=self._api_key or _PLACEHOLDER_KEY, base_url=base_url, max_retries=0
            )
        self._client = client
        self._streams: weakref.WeakSet[LLMStream] = weakref.WeakSet()

    @property
    def model(self) -> str:
        return self._opts.model

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        fnc_ctx: FunctionContext | None = None,
        temperature: float | None = None,
        n: int | None = None,
        parallel_tool_calls: bool | None = None,
        tool_choice: ToolChoice | Literal["auto", "required", "none"] | None = None,
    ) -> LLMStream:
        params = self._request_params(fnc_ctx, temperature, n, parallel_tool_calls, tool_choice)
        params["timeout"] = conn_options.timeout
        stream = LLMStream(
            self, chat_ctx=chat_ctx, fnc_ctx=fnc_ctx, conn_options=conn_options, params=params
        )
        self._streams.add(stream)
        return stream

    def _request_params(
        self,
        fnc_ctx: FunctionContext | None,
        temperature: float | None,
        n: int | None,
        parallel_tool_calls: bool | None,
        tool_choice: ToolChoice | Literal["auto", "required", "none"] | None,
    ) -> dict[str, Any]:
        """Everything of the request but the messages."""
        opts = self._opts
        params: dict[str, Any] = {
            "model": opts.model,
            "stream_options": {"include_usage": True},
        }
        temperature = temperature if temperature is not None else opts.temperature
        if temperature is not None:
            params["temperature"] = temperature
        if n is not None:
            params["n"] = n
        if opts.user is not None:
            params["user"] = opts.user
        if opts.store is not None:
            params["store"] = opts.store
        if opts.metadata is not None:  # some compatible servers reject the field, even null
            params["metadata"] = dict(opts.metadata)
        if opts.max_output_tokens is not None:
            params[opts.max_tokens_field] = opts.max_output_tokens
        tools = build_tools(fnc_ctx)
        if tools:
            params["tools"] = tools
            tool_choice = tool_choice if tool_choice is not None else opts.tool_choice
            parallel_tool_calls = (
                parallel_tool_calls if parallel_tool_calls is not None else opts.parallel_tool_calls
            )
            if isinstance(tool_choice, ToolChoice):
                params["tool_choice"] = {"type": "function", "function": {"name": tool_choice.name}}
            elif tool_choice is not None:
                params["tool_choice"] = tool_choice
            if parallel_tool_calls is not None:
                params["parallel_tool_calls"] = parallel_tool_calls
        if opts.extra_headers:
            params["extra_headers"] = dict(opts.extra_headers)
        return params

    async def aclose(self) -> None:
        """Closes the streams still open and the client, if this LLM created it."""
        for stream in list(self._streams):
            await stream.aclose()
        if self._owns_client:
            await self._client.close()


class LLMStream(agents_llm.LLMStream):
    def __init__(
        self,
        llm: LLM,
        *,
        chat_ctx: ChatContext,
        fnc_ctx: FunctionContext | None,
        conn_options: APIConnectOptions,
        params: dict[str, Any],
    ) -> None:
        super().__init__(llm, chat_ctx=chat_ctx, fnc_ctx=fnc_ctx, conn_options=conn_options)
        self._owner = llm
        self._params = params
        self._messages: list[Message] | None = None  # built once, reused by retries
        self._request_id = ""
        self._finished = False  # choice 0 got its finish_reason

    async def _run(self) -> None:
        if self._messages is None:
            self._messages = await to_request_messages(self._chat_ctx, self._owner._opts)
        assembler = ToolCallAssembler(self._fnc_ctx)
        output_started = False
        self._finished = False
        try:
            # `**params` hides the overload that `stream=True` selects
            stream = cast(
                openai.AsyncStream[ChatCompletionChunk],
                await self._owner._client.chat.completions.create(
                    messages=cast(list[ChatCompletionMessageParam], self._messages),
                    stream=True,
                    **self._params,
                ),
            )
            async with stream:  # closes the HTTP response on any exit, cancellation included
                async for chunk in stream:
                    for out in self._chunks(chunk, assembler):
                        self._send(out)
                        output_started = True
        except openai.APIError as e:
            key = self._owner._api_key
            err = to_api_error(e, output_started=output_started, api_key=key)
            raise err from (None if key and key in str(e) else e)
        if not self._finished:
            # A body that ends without a finish_reason is a failure, not a short answer
            # (llama.cpp's server answers 200 and an empty body when its template fails).
            raise APIConnectionError(
                "the stream ended before the completion finished", retryable=not output_started
            )

    def _chunks(self, chunk: ChatCompletionChunk, assembler: ToolCallAssembler) -> list[ChatChunk]:
        self._request_id = chunk.id or self._request_id
        out: list[ChatChunk] = []
        for choice in chunk.choices:
            delta = choice.delta
            if delta is not None and delta.content:
                out.append(
                    ChatChunk(
                        request_id=self._request_id,
                        choices=[
                            Choice(
                                delta=ChoiceDelta(role="assistant", content=delta.content),
                                index=choice.index,
                            )
                        ],
                    )
                )
            if choice.index != 0:
                continue
            for tc in (delta.tool_calls if delta is not None else None) or []:
                fn = tc.function
                call = assembler.feed(
                    tc.index, tc.id, fn.name if fn else None, fn.arguments if fn else None
                )
                if call is not None:
                    out.append(self._call_chunk(call))
            if choice.finish_reason is not None:
                self._finished = True
                out.extend(self._call_chunk(call) for call in assembler.finish())
        if chunk.usage is not None:
            details = chunk.usage.prompt_tokens_details
            out.append(
                ChatChunk(
                    request_id=self._request_id,
                    usage=CompletionUsage(
                        completion_tokens=chunk.usage.completion_tokens,
                        prompt_tokens=chunk.usage.prompt_tokens,
                        total_tokens=chunk.usage.total_tokens,
                        cache_read_input_tokens=(details.cached_tokens or 0) if details else 0,
                    ),
                )
            )
        return out

    def _call_chunk(self, call: FunctionCallInfo) -> ChatChunk:
        self._function_calls_info.append(call)
        logger.debug(
            "tool call complete",
            extra={"tool": call.function_info.name, "tool_call_id": call.tool_call_id},
        )
        return ChatChunk(
            request_id=self._request_id,
            choices=[Choice(delta=ChoiceDelta(role="assistant", tool_calls=[call]))],
        )

    def _send(self, chunk: ChatChunk) -> None:
        self._event_ch.send_nowait(chunk)
