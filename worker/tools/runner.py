"""Concurrent tool rounds inside one LLM stream, so the voice pipeline only ever sees text.

VoicePipelineAgent 0.12 runs tool calls one after another, and only after the pre-tool speech
finished playing. ``ToolRunningLLM`` wraps any 0.12 LLM instead: its stream starts every call the
moment its arguments are complete (while the model is still streaming the next ones), runs them
concurrently with a timeout each, feeds the results back in call order, and streams the answer
on, for up to ``max_rounds`` nested rounds. The pipeline never sees a function call, so its
sequential path never runs.

Barge-in: the pipeline closes the stream; running tools are cancelled, except those marked
``run_to_end`` (see :func:`tool_options`), which finish in the background, owned by the LLM.

The model's output is not trusted (prompt injection), so the runner bounds what one reply can
start: at most ``max_tool_calls`` calls per reply (the rest get an error result saying so), at
most ``max_concurrent_tools`` running at once in the session (the others wait for a slot,
their timeout already counting), every tool stopped at a time bound (run-to-end ones at
``run_to_end_limit``), and a failing tool's message is logged, never shown to the model: it
gets "tool NAME failed (ErrorClass)", so it cannot read out what the exception carried.

The tool-call and tool-result messages of a reply are kept on the stream (``tool_messages``)
so the conversation can persist them in its context next to the reply they belong to.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from livekit.agents import APIError, llm, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from worker.providers.errors import describe_failure
from worker.providers.wrapper import Wrapper

logger = logging.getLogger("worker.tools.runner")

TOOL_OPTIONS_ATTR = "__worker_tool_options__"
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class ToolOptions:
    timeout: float | None = None
    """Seconds from the call's start before the model gets an error result instead (None: the
    runner's default). The call is then cancelled, unless it is ``run_to_end``."""
    run_to_end: bool = False
    """Not cancelled by a barge-in nor by its timeout (e.g. a booking that must not be half
    done): it finishes in the background and ``ToolRunningLLM.aclose()`` awaits it, up to
    ``limit``."""
    limit: float | None = None
    """Seconds from the call's start after which a run-to-end tool is cancelled all the same
    (None: the runner's ``run_to_end_limit``), so no tool runs without an upper bound."""


def tool_options(
    *, timeout: float | None = None, run_to_end: bool = False, limit: float | None = None
) -> Callable[[F], F]:
    """Per-tool options, stacked with ``@llm.ai_callable()`` on a FunctionContext method."""

    def deco(f: F) -> F:
        options = ToolOptions(timeout=timeout, run_to_end=run_to_end, limit=limit)
        setattr(f, TOOL_OPTIONS_ATTR, options)
        return f

    return deco


@dataclass
class ToolResult:
    """A tool's answer; ``images`` are shown to the model with the next round (e.g. "look")."""

    text: str
    images: list[llm.ChatImage] = field(default_factory=list)


@dataclass(frozen=True)
class ToolCallTiming:
    """One finished tool call (its value or error went to the model): ``started``/``ended`` are
    ``time.perf_counter()`` moments; ``ended`` is the timeout for a call that timed out."""

    name: str
    started: float
    ended: float
    failed: bool = False


@dataclass(frozen=True)
class ToolRunningLLMOptions:
    default_timeout: float = 10.0
    max_rounds: int = 3
    """Tool rounds per reply; the last request is sent without tools so the model answers."""
    max_result_chars: int = 4000
    """Longer tool results are cut before they go back to the model."""
    apology: str = "Sorry, I couldn't come up with an answer just now. Could you say that again?"
    """Spoken when the LLM fails for good before saying anything, or answers with no text
    (empty: say nothing)."""
    llm_conn_options: APIConnectOptions | None = None
    """Timeout and retries of each LLM request (None: what the caller passes, the framework's
    default of 10 s and 3 retries). ``timeout`` also bounds a stream that stalls: the gap
    allowed between two chunks. Retries happen only before the first chunk."""
    max_tool_calls: int = 8
    """Tool calls run per reply (over all its rounds); later ones get an error result."""
    max_concurrent_tools: int = 8
    """Tools running at once in the session (background run-to-end ones included)."""
    run_to_end_limit: float = 60.0
    """Upper bound in seconds for run-to-end tools without a ``limit`` of their own."""


@dataclass
class _RunningCall:
    info: llm.FunctionCallInfo
    task: asyncio.Task[Any] | None
    """The tool itself (None: not run, over the reply's ``max_tool_calls``)."""
    options: ToolOptions
    started: float
    outcome: asyncio.Task[tuple[Any, Exception | None]] | None = None
    """Waits for the tool with its timeout (counted from the start) and says what the model
    gets: the value, or an error."""


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


class ToolRunningLLM(Wrapper[llm.LLM], llm.LLM):
    """Wraps an LLM so that tool calls run concurrently inside the stream."""

    def __init__(self, inner: llm.LLM, options: ToolRunningLLMOptions | None = None) -> None:
        super().__init__(capabilities=inner.capabilities)
        self._own_inner(inner)
        self._opts = options or ToolRunningLLMOptions()
        self._background: set[asyncio.Task[Any]] = set()
        self._streams: weakref.WeakSet[ToolRoundsStream] = weakref.WeakSet()
        self.tool_slots = asyncio.Semaphore(self._opts.max_concurrent_tools)
        """Held by each running tool: the session's cap on concurrent tool calls."""

    @property
    def options(self) -> ToolRunningLLMOptions:
        return self._opts

    def keep_running(self, task: asyncio.Task[Any]) -> None:
        """Own a tool task that outlived its round (a run-to-end tool after a barge-in or its
        timeout, a cancelled tool not finished yet) until it finishes; ``aclose()`` awaits it."""
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
        stream = ToolRoundsStream(
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
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        """Closes the streams still open (cancelling their tools), waits for the tools that
        run to the end, then closes the inner LLM."""
        for stream in list(self._streams):
            await stream.aclose()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._close_inner()


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
        self._inner_conn_options = runner.options.llm_conn_options or conn_options
        self._request = request
        self._running: list[_RunningCall] = []
        self._calls = 0  # tool calls the model asked for in this reply
        self._last_char = ""  # of the text sent so far, to join the rounds' texts
        self._said = False  # some text that is not blank was sent
        self.tool_messages: list[llm.ChatMessage] = []
        """Assistant tool-call messages and tool results of this reply, in order."""
        self.tool_time = 0.0
        """Seconds spent waiting for tools (sum over rounds, each round as long as its slowest)."""
        self.tool_calls: list[ToolCallTiming] = []
        """Each call whose outcome went to the model, in the order they finished."""
        self.rounds = 0
        self.error: str | None = None
        """Why the LLM failed for good, or None."""
        self.apologised = False
        """The LLM failed before any text: the apology was sent instead."""

    @property
    def tools_started(self) -> bool:
        """A tool of this reply has started (it may have effects outside the conversation)."""
        return self.rounds > 0 or bool(self._running)

    async def _metrics_monitor_task(self, event_aiter: AsyncIterable[llm.ChatChunk]) -> None:
        # Each round's inner stream reports its own LLMMetrics (forwarded by the runner), so
        # this stream must not add a second, merged one per reply.
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        try:
            await self._rounds()
        except Exception as e:
            # The inner stream already retried what was retryable (an APIError); anything else
            # is a provider or plugin failure all the same. Before any word was spoken,
            # apologise so the user isn't left in silence; after, stop where we are
            # (repeating the start of the answer would be worse).
            self.error = type(e).__name__
            logger.warning(
                "%s; %s",
                describe_failure("LLM", e, label=self._runner.inner.label),
                "reply cut short" if self._said else "apologising",
                exc_info=not isinstance(e, APIError),
                extra={"error": str(e), "rounds": self.rounds},
            )
            self._apologise()
            return
        if not self._said:
            # An empty or blank answer (or tool calls only, none run to an answer) is a failed
            # reply: with nothing to say the pipeline would leave the user waiting in silence.
            self.error = "EmptyReply"
            logger.warning("LLM answered with no text; apologising", extra={"rounds": self.rounds})
            self._apologise()

    def _apologise(self) -> None:
        apology = self._runner.options.apology
        if not self._said and apology:
            self.apologised = True
            self._send_text(llm.ChatChunk(request_id="apology"), apology, first_of_round=False)

    async def _rounds(self) -> None:
        opts = self._runner.options
        chat_ctx = self._chat_ctx
        try:
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
        finally:
            # Cancelled (barge-in) or failed (the inner stream raised): no tool outlives the
            # round it belongs to, except the run-to-end ones, which the runner now owns.
            await self._stop_tools()

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
                if delta_calls and not use_tools:
                    # The request offered no tools (the last round): a model that calls one
                    # anyway gets its text streamed, and the calls are not run.
                    logger.warning(
                        "tool calls in a request without tools; ignored",
                        extra={"tools": [c.function_info.name for c in delta_calls]},
                    )
                    delta_calls = []
                for info in delta_calls:
                    self._calls += 1
                    if self._calls > self._runner.options.max_tool_calls:
                        calls.append(self._refuse(info))
                    else:
                        calls.append(self._start(info))
                content = "".join(ch.delta.content or "" for ch in chunk.choices)
                if content:
                    text.append(content)
                if content or chunk.usage is not None:
                    self._send_text(chunk, content, first_of_round=len(text) == 1 and bool(content))
        return calls, "".join(text)

    def _send_text(self, chunk: llm.ChatChunk, content: str, *, first_of_round: bool) -> None:
        joined = first_of_round and self._last_char and not self._last_char.isspace()
        if joined and not content[0].isspace():
            # "Let me check." + "It is 21 degrees." must not reach the TTS as "check.It".
            content = " " + content
        if content:
            self._last_char = content[-1]
            self._said = self._said or not content.isspace()
        self._event_ch.send_nowait(
            llm.ChatChunk(
                request_id=chunk.request_id,
                choices=[llm.Choice(delta=llm.ChoiceDelta(role="assistant", content=content))]
                if content
                else [],
                usage=chunk.usage,
            )
        )

    def _start(self, info: llm.FunctionCallInfo) -> _RunningCall:
        name = info.function_info.name
        logger.debug("starting tool", extra={"tool": name, "call_id": info.tool_call_id})
        options = _options_of(info)
        running = _RunningCall(
            info=info,
            task=asyncio.create_task(self._execute(info, options), name=f"tool:{name}"),
            options=options,
            started=time.perf_counter(),
        )
        running.outcome = asyncio.create_task(
            self._outcome(running), name=f"tool_outcome:{info.function_info.name}"
        )
        self._running.append(running)
        return running

    async def _execute(self, info: llm.FunctionCallInfo, options: ToolOptions) -> Any:
        """The tool, once it holds one of the session's slots; a run-to-end tool is stopped at
        its limit (never before its timeout), counted from the call's start."""
        opts = self._runner.options
        timeout = options.timeout or opts.default_timeout
        limit = max(options.limit or opts.run_to_end_limit, timeout) if options.run_to_end else None
        try:
            async with asyncio.timeout(limit) as bound:
                async with self._runner.tool_slots:
                    return await info.execute().task
        except TimeoutError:
            if bound.expired():
                logger.warning(
                    "run-to-end tool stopped at its time limit",
                    extra={"tool": info.function_info.name, "limit": limit},
                )
            raise

    def _refuse(self, info: llm.FunctionCallInfo) -> _RunningCall:
        """A call past the reply's ``max_tool_calls``: not run, the model is told why."""
        limit = self._runner.options.max_tool_calls
        if self._calls == limit + 1:
            logger.warning("too many tool calls in one reply", extra={"max_tool_calls": limit})
        error = RuntimeError(
            f"error: {info.function_info.name} was not run: at most {limit} tool calls per "
            "reply. Call fewer tools at once."
        )
        running = _RunningCall(info=info, task=None, options=ToolOptions(), started=0.0)
        running.outcome = asyncio.create_task(_refused(error), name="tool_refused")
        return running

    async def _finish_round(
        self, calls: list[_RunningCall], text: str
    ) -> tuple[list[llm.ChatMessage], list[llm.ChatImage]]:
        results = await asyncio.gather(*(c.outcome for c in calls if c.outcome is not None))
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
        value, error = await self._wait_outcome(call)
        self.tool_calls.append(
            ToolCallTiming(
                name=call.info.function_info.name,
                started=call.started,
                ended=time.perf_counter(),
                failed=error is not None,
            )
        )
        return value, error

    async def _wait_outcome(self, call: _RunningCall) -> tuple[Any, Exception | None]:
        """The call's value, or the error the model gets instead. Runs from the call's start, so
        a tool is stopped at its timeout even while the model is still streaming."""
        timeout = call.options.timeout or self._runner.options.default_timeout
        name = call.info.function_info.name
        assert call.task is not None
        try:
            return await asyncio.wait_for(asyncio.shield(call.task), timeout), None
        except TimeoutError:
            if not call.options.run_to_end:
                call.task.cancel()
            # Owned until it finishes (cancellation may take a while, run-to-end tools go on).
            self._runner.keep_running(call.task)
            logger.warning("tool timed out", extra={"tool": name, "timeout": timeout})
            return None, TimeoutError(f"error: {name} did not answer within {timeout:g} s")
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not call.task.cancelled() or (current is not None and current.cancelling()):
                raise  # the round is being cancelled, not the tool
            logger.warning("tool cancelled itself", extra={"tool": name})
            return None, RuntimeError(f"error: {name} was cancelled")
        except Exception as e:
            # The message may carry anything (a connection string, a key, personal data): it
            # goes to the log (redacted), the model gets only the class.
            logger.warning("tool failed", exc_info=e, extra={"tool": name})
            return None, RuntimeError(f"error: tool {name} failed ({type(e).__name__})")

    async def _stop_tools(self) -> None:
        running, self._running = self._running, []
        stopped: list[asyncio.Task[Any]] = []
        for call in running:
            if call.outcome is not None and not call.outcome.done():
                stopped.append(call.outcome)  # shields the tool: cancelling it stops no tool
            if call.task is None or call.task.done():
                continue
            if call.options.run_to_end:
                self._runner.keep_running(call.task)
            else:
                stopped.append(call.task)
        if stopped:
            logger.debug("cancelling tools", extra={"tools": len(stopped)})
            await utils.aio.gracefully_cancel(*stopped)

    async def aclose(self) -> None:
        # Cancelling the main task stops the tools (see _run); a stream closed before its
        # task ever ran stops them here.
        await super().aclose()
        await self._stop_tools()


async def _refused(error: Exception) -> tuple[Any, Exception | None]:
    return None, error
