"""Concurrent tool rounds inside one LLM stream, so the voice pipeline only ever sees text.

VoicePipelineAgent 0.12 runs tool calls one after another, and only after the pre-tool speech
finished playing. ``ToolRunningLLM`` wraps any 0.12 LLM instead: its stream starts every call the
moment its arguments are complete (while the model is still streaming the next ones), runs them
concurrently with a timeout each, feeds the results back in call order, and streams the answer
on, for up to ``max_rounds`` nested rounds. The pipeline never sees a function call, so its
sequential path never runs.

Barge-in: the pipeline closes the stream; running tools are cancelled, except those marked
``run_to_end`` (see :func:`tool_options`), which finish in the background, owned by the LLM.

The tool-call and tool-result messages of a reply are kept on the stream (``tool_messages``)
so the conversation can persist them in its context next to the reply they belong to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from livekit.agents import llm, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

logger = logging.getLogger("worker.tool_runner")

TOOL_OPTIONS_ATTR = "__worker_tool_options__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolOptions:
    timeout: float | None = None
    """Seconds before the call is abandoned with an error result (None: the runner's default)."""
    run_to_end: bool = False
    """Keep running after a barge-in (e.g. a booking that must not be half done)."""


def tool_options(*, timeout: float | None = None, run_to_end: bool = False) -> Callable[[F], F]:
    """Per-tool options, stacked with ``@llm.ai_callable()`` on a FunctionContext method."""

    def deco(f: F) -> F:
        setattr(f, TOOL_OPTIONS_ATTR, ToolOptions(timeout=timeout, run_to_end=run_to_end))
        return f

    return deco


@dataclass
class ToolResult:
    """A tool's answer; ``images`` are shown to the model with the next round (e.g. "look")."""

    text: str
    images: list[llm.ChatImage] = field(default_factory=list)


@dataclass(frozen=True)
class ToolRunnerOptions:
    default_timeout: float = 10.0
    max_rounds: int = 3
    """Tool rounds per reply; the last request is sent without tools so the model answers."""
    max_result_chars: int = 4000
    """Longer tool results are cut before they go back to the model."""


@dataclass
class _RunningCall:
    info: llm.FunctionCallInfo
    task: asyncio.Task[Any]
    options: ToolOptions
    started: float


def _options_of(info: llm.FunctionCallInfo) -> ToolOptions:
    opts = getattr(info.function_info.callable, TOOL_OPTIONS_ATTR, None)
    return opts if isinstance(opts, ToolOptions) else ToolOptions()


def _as_text(value: Any, limit: int) -> str:
    if isinstance(value, ToolResult):
        value = value.text
    text = value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False)
    if len(text) > limit:
        text = text[:limit] + f"... [cut: {len(text) - limit} more characters]"
    return text


class ToolRunningLLM(llm.LLM):
    """Wraps an LLM so that tool calls run concurrently inside the stream."""

    def __init__(self, inner: llm.LLM, options: ToolRunnerOptions | None = None) -> None:
        super().__init__(capabilities=inner.capabilities)
        self._inner = inner
        self._opts = options or ToolRunnerOptions()
        self._background: set[asyncio.Task[Any]] = set()
        inner.on("metrics_collected", self._forward_metrics)

    @property
    def inner(self) -> llm.LLM:
        return self._inner

    @property
    def options(self) -> ToolRunnerOptions:
        return self._opts

    def _forward_metrics(self, metrics: Any) -> None:
        self.emit("metrics_collected", metrics)

    def keep_running(self, task: asyncio.Task[Any]) -> None:
        """Own a run-to-end tool that outlived its stream until it finishes or we close."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        fnc_ctx: llm.FunctionContext | None = None,
        temperature: float | None = None,
        n: int | None = None,
        parallel_tool_calls: bool | None = None,
        tool_choice: llm.ToolChoice | Literal["auto", "required", "none"] | None = None,
    ) -> ToolRoundsStream:
        return ToolRoundsStream(
            self,
            chat_ctx=chat_ctx,
            fnc_ctx=fnc_ctx,
            conn_options=conn_options,
            request=dict(
                temperature=temperature,
                n=n,
                parallel_tool_calls=parallel_tool_calls,
                tool_choice=tool_choice,
            ),
        )

    async def aclose(self) -> None:
        await asyncio.gather(*self._background, return_exceptions=True)
        self._inner.off("metrics_collected", self._forward_metrics)
        await self._inner.aclose()


class ToolRoundsStream(llm.LLMStream):
    def __init__(
        self,
        runner: ToolRunningLLM,
        *,
        chat_ctx: llm.ChatContext,
        fnc_ctx: llm.FunctionContext | None,
        conn_options: APIConnectOptions,
        request: dict[str, Any],
    ) -> None:
        # Retries belong to the inner stream (before its first chunk); never retry whole rounds.
        super().__init__(
            runner,
            chat_ctx=chat_ctx,
            fnc_ctx=fnc_ctx,
            conn_options=APIConnectOptions(max_retry=0, timeout=conn_options.timeout),
        )
        self._runner = runner
        self._inner_conn_options = conn_options
        self._request = request
        self._running: list[_RunningCall] = []
        self.tool_messages: list[llm.ChatMessage] = []
        """Assistant tool-call messages and tool results of this reply, in order."""
        self.tool_time = 0.0
        """Seconds spent waiting for tools (sum over rounds, each round as long as its slowest)."""
        self.rounds = 0

    async def _metrics_monitor_task(self, event_aiter: AsyncIterable[llm.ChatChunk]) -> None:
        # Each round's inner stream reports its own LLMMetrics (forwarded by the runner), so
        # this stream must not add a second, merged one per reply.
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        opts = self._runner.options
        chat_ctx = self._chat_ctx
        for round_index in range(opts.max_rounds + 1):
            use_tools = self._fnc_ctx is not None and round_index < opts.max_rounds
            calls, text = await self._stream_round(chat_ctx, use_tools)
            if not calls:
                return
            self.rounds += 1
            started = time.perf_counter()
            messages, images = await self._finish_round(calls, text)
            self.tool_time += time.perf_counter() - started
            self.tool_messages.extend(messages)
            chat_ctx = chat_ctx.copy()
            chat_ctx.messages.extend(messages)
            if images:
                chat_ctx.messages.append(
                    llm.ChatMessage(role="user", content=["(what the tools showed)", *images])
                )

    async def _stream_round(
        self, chat_ctx: llm.ChatContext, use_tools: bool
    ) -> tuple[list[_RunningCall], str]:
        calls: list[_RunningCall] = []
        text: list[str] = []
        stream = self._runner.inner.chat(
            chat_ctx=chat_ctx,
            fnc_ctx=self._fnc_ctx if use_tools else None,
            conn_options=self._inner_conn_options,
            **self._request,
        )
        async with stream:
            async for chunk in stream:
                delta_calls = [c for ch in chunk.choices for c in ch.delta.tool_calls or []]
                for info in delta_calls:
                    calls.append(self._start(info))
                content = "".join(ch.delta.content or "" for ch in chunk.choices)
                if content or chunk.usage is not None:
                    text.append(content)
                    self._event_ch.send_nowait(
                        llm.ChatChunk(
                            request_id=chunk.request_id,
                            choices=[
                                llm.Choice(delta=llm.ChoiceDelta(role="assistant", content=content))
                            ]
                            if content
                            else [],
                            usage=chunk.usage,
                        )
                    )
        return calls, "".join(text)

    def _start(self, info: llm.FunctionCallInfo) -> _RunningCall:
        logger.debug(
            "starting tool", extra={"tool": info.function_info.name, "call_id": info.tool_call_id}
        )
        running = _RunningCall(
            info=info,
            task=info.execute().task,
            options=_options_of(info),
            started=time.perf_counter(),
        )
        self._running.append(running)
        return running

    async def _finish_round(
        self, calls: list[_RunningCall], text: str
    ) -> tuple[list[llm.ChatMessage], list[llm.ChatImage]]:
        results = await asyncio.gather(*(self._outcome(c) for c in calls))
        self._running = [c for c in self._running if c not in calls]
        limit = self._runner.options.max_result_chars
        messages = [
            llm.ChatMessage(
                role="assistant", content=text or None, tool_calls=[c.info for c in calls]
            )
        ]
        images: list[llm.ChatImage] = []
        for call, (value, error) in zip(calls, results, strict=True):
            if isinstance(value, ToolResult):
                images.extend(value.images)
            messages.append(
                llm.ChatMessage(
                    role="tool",
                    name=call.info.function_info.name,
                    tool_call_id=call.info.tool_call_id,
                    content=_as_text(str(error) if error else value, limit),
                    tool_exception=error,
                )
            )
        return messages, images

    async def _outcome(self, call: _RunningCall) -> tuple[Any, Exception | None]:
        timeout = call.options.timeout or self._runner.options.default_timeout
        name = call.info.function_info.name
        try:
            return await asyncio.wait_for(asyncio.shield(call.task), timeout), None
        except TimeoutError:
            call.task.cancel()
            logger.warning("tool timed out", extra={"tool": name, "timeout": timeout})
            return None, TimeoutError(f"error: {name} did not answer within {timeout:g} s")
        except Exception as e:
            logger.warning("tool failed", extra={"tool": name, "error": repr(e)})
            return None, RuntimeError(f"error: {name} failed: {e}")

    async def aclose(self) -> None:
        running, self._running = self._running, []
        for call in running:
            if call.options.run_to_end and not call.task.done():
                self._runner.keep_running(call.task)
            else:
                call.task.cancel()
        await super().aclose()
        await utils.aio.gracefully_cancel(*(c.task for c in running if not c.options.run_to_end))
