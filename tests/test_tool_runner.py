"""worker.tools.runner through the real LLM plugin against the loopback OpenAI server.

Every test drives ``ToolRunningLLM(plugins.openai_llm.LLM(...))`` over HTTP/SSE: the tools are
real FunctionContext methods that record perf_counter stamps, and the assertions are on those
stamps (overlap, ordering) and on the request bodies the server received.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from livekit.agents import APIConnectOptions, llm
from livekit.agents.llm import ChatContext, FunctionContext, TypeInfo, ai_callable
from livekit.agents.metrics import LLMMetrics

from plugins.openai_llm import LLM
from tests.loopback.openai_server import Fault, OpenAIServer, Reply, ToolCall, scripted
from worker.tools.runner import (
    ToolRoundsStream,
    ToolRunningLLM,
    ToolRunningLLMOptions,
    tool_options,
)

CONN = APIConnectOptions(max_retry=0, retry_interval=0.0, timeout=10.0)
BASE_MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Go."}]

pytestmark = pytest.mark.timeout(30)


class Unit(enum.Enum):
    CELSIUS = "c"
    FAHRENHEIT = "f"


@dataclass
class Stamp:
    start: float
    end: float | None = None
    cancelled: bool = False
    cancelled_at: float | None = None


class Tools(FunctionContext):
    """Tools that record when they ran; `sleep` is how long `lookup` takes."""

    def __init__(self, sleep: float = 1.0, book_sleep: float = 0.5) -> None:
        self.sleep = sleep
        self.book_sleep = book_sleep
        self.stamps: dict[str, Stamp] = {}
        self._changed = asyncio.Condition()
        super().__init__()

    async def wait_started(self, *keys: str) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: set(keys) <= set(self.stamps))

    async def _run(self, key: str, seconds: float) -> None:
        stamp = self.stamps[key] = Stamp(time.perf_counter())
        async with self._changed:
            self._changed.notify_all()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            stamp.cancelled = True
            stamp.cancelled_at = time.perf_counter()
            raise
        stamp.end = time.perf_counter()

    @ai_callable()
    async def lookup(self, key: Annotated[str, TypeInfo(description="What to look up")]) -> str:
        """Look a key up (takes a while)."""
        await self._run(key, self.sleep)
        return f"value of {key}"

    @ai_callable()
    @tool_options(timeout=0.2)
    async def slow(self) -> str:
        """Answers after a second, past its 0.2 s timeout."""
        await self._run("slow", 1.0)
        return "too late"

    @ai_callable()
    async def broken(self) -> str:
        """Always raises."""
        self.stamps["broken"] = Stamp(time.perf_counter())
        raise RuntimeError("database is down")

    @ai_callable()
    async def huge(self) -> str:
        """Returns far too much text."""
        return "x" * 10_000

    @ai_callable()
    async def set_unit(self, unit: Annotated[Unit, TypeInfo(description="The unit")]) -> str:
        """Set the temperature unit."""
        self.stamps["set_unit"] = Stamp(time.perf_counter())
        return "ok"

    @ai_callable()
    @tool_options(run_to_end=True)
    async def book(self, what: Annotated[str, TypeInfo(description="What to book")]) -> str:
        """Book something; must never be left half done."""
        await self._run(f"book:{what}", self.book_sleep)
        return f"booked {what}"


@dataclass
class Received:
    text: str
    at: float


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    async with OpenAIServer() as s:
        yield s


def make_runner(server: OpenAIServer, **options: Any) -> ToolRunningLLM:
    inner = LLM(model="loopback", base_url=server.base_url, api_key="sk-test")
    return ToolRunningLLM(inner, ToolRunningLLMOptions(**options))


def start_chat(runner: ToolRunningLLM, tools: FunctionContext | None) -> ToolRoundsStream:
    ctx = ChatContext().append(role="system", text="Be brief.").append(role="user", text="Go.")
    return runner.chat(chat_ctx=ctx, fnc_ctx=tools, conn_options=CONN)


async def consume(stream: ToolRoundsStream) -> list[Received]:
    out: list[Received] = []
    async with stream:
        async for chunk in stream:
            for choice in chunk.choices:
                assert not choice.delta.tool_calls, "the consumer must only ever see text"
                if choice.delta.content:
                    out.append(Received(choice.delta.content, time.perf_counter()))
    return out


def joined(received: list[Received]) -> str:
    return "".join(r.text for r in received)


def call(name: str, call_id: str, **arguments: Any) -> ToolCall:
    return ToolCall(name, json.dumps(arguments), id=call_id)


def tool_call_json(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }


async def assert_no_tasks_left() -> None:
    await asyncio.sleep(0)  # let callbacks of just-finished tasks run
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    assert not left, f"tasks left behind: {left}"


# --- concurrency ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4, 8])
async def test_tools_of_one_response_run_concurrently_and_answer_in_call_order(n: int) -> None:
    keys = [f"k{i}" for i in range(n)]
    async with OpenAIServer(
        scripted(
            Reply(tool_calls=[call("lookup", f"call_{k}", key=k) for k in keys]),
            Reply(text="All found."),
        )
    ) as server:
        runner = make_runner(server)
        tools = Tools(sleep=1.0)
        stream = start_chat(runner, tools)
        received = await consume(stream)
        await runner.aclose()
    await assert_no_tasks_left()

    assert joined(received) == "All found."
    stamps = [tools.stamps[k] for k in keys]
    assert all(s.end is not None for s in stamps)
    # every tool started before any of them ended: they all ran at the same time
    assert max(s.start for s in stamps) < min(s.end for s in stamps if s.end is not None)
    # started in call order
    assert [s.start for s in stamps] == sorted(s.start for s in stamps)

    assert len(server.requests) == 2
    first, second = (r.body for r in server.requests)
    assert first["messages"] == BASE_MESSAGES
    assert [t["function"]["name"] for t in first["tools"]] == list(tools.ai_functions)
    assert second["messages"] == [
        *BASE_MESSAGES,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [tool_call_json(f"call_{k}", "lookup", {"key": k}) for k in keys],
        },
        *({"role": "tool", "tool_call_id": f"call_{k}", "content": f"value of {k}"} for k in keys),
    ]
    assert stream.rounds == 1
    assert [m.role for m in stream.tool_messages] == ["assistant", *["tool"] * n]
    assert stream.tool_time > 0


async def test_first_tool_starts_while_the_model_still_streams_the_later_calls() -> None:
    calls = [
        ToolCall("lookup", json.dumps({"key": f"k{i}"}), id=f"call_{i}", parts=3) for i in range(4)
    ]
    rate = 20.0
    async with OpenAIServer(
        scripted(Reply(tool_calls=calls, tokens_per_second=rate), Reply(text="Done."))
    ) as server:
        runner = make_runner(server)
        tools = Tools(sleep=0.2)
        assert joined(await consume(start_chat(runner, tools))) == "Done."
        await runner.aclose()

    # Server-side schedule: delta i goes out at received_at + i/rate at the earliest; the
    # last call's first argument delta is delta 9 (3 deltas per call).
    request = server.requests[0]
    last_call_first_delta = request.received_at + 9 / rate
    assert tools.stamps["k0"].start < last_call_first_delta
    starts = [tools.stamps[f"k{i}"].start for i in range(4)]
    assert starts == sorted(starts)
    # the last call started once its arguments were complete (delta 11), not before
    assert starts[-1] >= request.received_at + 11 / rate


async def test_text_before_the_tool_calls_reaches_the_consumer_before_the_tools_finish(
    server: OpenAIServer,
) -> None:
    server.responder = scripted(
        Reply(text="Let me check.", tool_calls=[call("lookup", "call_a", key="weather")]),
        Reply(text="It is sunny."),
    )
    runner = make_runner(server)
    tools = Tools(sleep=0.5)
    stream = start_chat(runner, tools)
    received = await consume(stream)
    await runner.aclose()

    end = tools.stamps["weather"].end
    assert end is not None
    pre_tool = [r for r in received if r.at < end]
    assert joined(pre_tool) == "Let me check."
    # the rounds' texts are joined with a space (no "check.It" for the TTS)
    assert joined(received) == "Let me check. It is sunny."
    second = server.requests[1].body["messages"]
    assert second[2] == {
        "role": "assistant",
        "content": "Let me check.",
        "tool_calls": [tool_call_json("call_a", "lookup", {"key": "weather"})],
    }
    assert second[3] == {"role": "tool", "tool_call_id": "call_a", "content": "value of weather"}


# --- errors ----------------------------------------------------------------------------------


async def test_timeout_exception_and_huge_result_become_tool_results_and_the_answer_streams(
    server: OpenAIServer,
) -> None:
    server.responder = scripted(
        Reply(
            tool_calls=[
                call("slow", "call_slow"),
                call("broken", "call_broken"),
                call("huge", "call_huge"),
                call("lookup", "call_ok", key="a"),
            ]
        ),
        Reply(text="Some tools failed."),
    )
    runner = make_runner(server, max_result_chars=100)
    tools = Tools(sleep=0.05)
    stream = start_chat(runner, tools)
    assert joined(await consume(stream)) == "Some tools failed."
    await runner.aclose()

    results = {m["tool_call_id"]: m["content"] for m in server.requests[1].body["messages"][3:]}
    assert results == {
        "call_slow": "error: slow did not answer within 0.2 s",
        "call_broken": "error: tool broken failed (RuntimeError)",
        "call_huge": "x" * 100 + "... [cut: 9900 more characters]",
        "call_ok": "value of a",
    }
    assert tools.stamps["slow"].cancelled  # the timed-out tool was cancelled, not left running
    assert tools.stamps["slow"].end is None
    errors = [m for m in stream.tool_messages if m.tool_exception is not None]
    assert [m.tool_call_id for m in errors] == ["call_slow", "call_broken"]
    assert isinstance(errors[0].tool_exception, TimeoutError)


async def test_a_tool_timeout_counts_from_its_start_even_while_the_model_streams(
    server: OpenAIServer,
) -> None:
    rate = 10.0
    server.responder = scripted(
        Reply(
            tool_calls=[
                ToolCall("slow", "{}", id="call_slow"),  # complete with delta 0
                ToolCall("lookup", json.dumps({"key": "a"}), id="call_ok", parts=8),  # delta 8
            ],
            tokens_per_second=rate,
        ),
        Reply(text="Done."),
    )
    runner = make_runner(server)
    tools = Tools(sleep=0.01)
    assert joined(await consume(start_chat(runner, tools))) == "Done."
    await runner.aclose()

    slow = tools.stamps["slow"]
    assert slow.cancelled_at is not None
    # cancelled at its 0.2 s timeout, while the model still streamed the second call
    assert slow.cancelled_at < server.requests[0].received_at + 8 / rate
    assert slow.cancelled_at < tools.stamps["a"].start
    results = {m["tool_call_id"]: m["content"] for m in server.requests[1].body["messages"][3:]}
    assert results == {
        "call_slow": "error: slow did not answer within 0.2 s",
        "call_ok": "value of a",
    }


async def test_invalid_calls_reach_the_model_as_error_results_without_running(
    server: OpenAIServer,
) -> None:
    server.responder = scripted(
        Reply(
            tool_calls=[
                ToolCall("lookup", "{}", id="missing"),
                ToolCall("set_unit", '{"unit": "kelvin"}', id="enum"),
                ToolCall("teleport", '{"to": "mars"}', id="unknown"),
                ToolCall("lookup", '{"key": "a"', id="bad_json"),  # never closes
            ]
        ),
        Reply(text="Let me try again."),
    )
    runner = make_runner(server)
    tools = Tools()
    assert joined(await consume(start_chat(runner, tools))) == "Let me try again."
    await runner.aclose()

    assert tools.stamps == {}  # nothing ran
    messages = server.requests[1].body["messages"]
    assert [c["id"] for c in messages[2]["tool_calls"]] == [
        "missing",
        "enum",
        "unknown",
        "bad_json",
    ]
    results = {m["tool_call_id"]: m["content"] for m in messages[3:]}
    assert list(results) == ["missing", "enum", "unknown", "bad_json"]
    for content in results.values():
        assert content.startswith("Error: the call was not run: ")
    assert "key" in results["missing"]
    assert "kelvin" in results["enum"]
    assert "no function named 'teleport'" in results["unknown"]
    assert "lookup" in results["unknown"]  # tells the model what exists
    assert '{"key": "a"' in results["bad_json"]


# --- rounds ----------------------------------------------------------------------------------


async def test_nested_rounds_up_to_max_rounds_then_a_request_without_tools(
    server: OpenAIServer,
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        n = len(server.requests) - 1
        # the model keeps calling tools, even when it is offered none (must then be ignored)
        return Reply(
            text="Final answer." if "tools" not in body else "",
            tool_calls=[call("lookup", f"round{n}", key=f"r{n}")],
        )

    server.responder = respond
    runner = make_runner(server, max_rounds=2)
    tools = Tools(sleep=0.01)
    stream = start_chat(runner, tools)
    assert joined(await consume(stream)) == "Final answer."
    await runner.aclose()

    assert len(server.requests) == 3
    bodies = [r.body for r in server.requests]
    assert ["tools" in b for b in bodies] == [True, True, False]
    assert set(tools.stamps) == {"r0", "r1"}  # the call in the request without tools never ran
    assert bodies[2]["messages"] == [
        *BASE_MESSAGES,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [tool_call_json("round0", "lookup", {"key": "r0"})],
        },
        {"role": "tool", "tool_call_id": "round0", "content": "value of r0"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [tool_call_json("round1", "lookup", {"key": "r1"})],
        },
        {"role": "tool", "tool_call_id": "round1", "content": "value of r1"},
    ]
    assert stream.rounds == 2
    assert [(m.role, m.tool_call_id) for m in stream.tool_messages] == [
        ("assistant", None),
        ("tool", "round0"),
        ("assistant", None),
        ("tool", "round1"),
    ]


async def test_without_a_function_context_the_model_is_asked_once_without_tools(
    server: OpenAIServer,
) -> None:
    server.responder = scripted(Reply(text="Hello there."))
    runner = make_runner(server)
    stream = start_chat(runner, None)
    assert joined(await consume(stream)) == "Hello there."
    await runner.aclose()
    assert len(server.requests) == 1
    assert "tools" not in server.requests[0].body
    assert stream.rounds == 0
    assert stream.tool_messages == []
    assert stream.tool_time == 0.0


# --- barge-in --------------------------------------------------------------------------------


async def test_aclose_mid_tool_cancels_tools_but_run_to_end_ones_finish() -> None:
    async with OpenAIServer(
        scripted(
            Reply(
                text="One moment.",
                tool_calls=[
                    call("lookup", "call_a", key="a"),
                    call("book", "call_b", what="table"),
                ],
            ),
            Reply(text="never requested"),
        )
    ) as server:
        runner = make_runner(server)
        tools = Tools(sleep=1.0, book_sleep=0.5)
        stream = start_chat(runner, tools)
        first = await asyncio.wait_for(stream.__anext__(), 10)
        assert first.choices[0].delta.content == "One"
        async with asyncio.timeout(10):
            await tools.wait_started("a", "book:table")

        await stream.aclose()  # barge-in
        lookup, book = tools.stamps["a"], tools.stamps["book:table"]
        assert lookup.cancelled  # observed CancelledError, and aclose() waited for that
        assert lookup.end is None
        assert not book.cancelled  # still running, owned by the runner
        assert book.end is None

        await runner.aclose()
        assert book.end is not None  # awaited by ToolRunningLLM.aclose
        assert not book.cancelled
    assert len(server.requests) == 1  # no answer round after a barge-in
    await assert_no_tasks_left()


async def test_closing_the_runner_closes_open_streams_and_their_tools() -> None:
    async with OpenAIServer(
        scripted(Reply(tool_calls=[call("lookup", "call_a", key="a")]), Reply(text="late"))
    ) as server:
        runner = make_runner(server)
        tools = Tools(sleep=1.0)
        start_chat(runner, tools)  # nobody consumes or closes it
        async with asyncio.timeout(10):
            await tools.wait_started("a")
        await runner.aclose()
        assert tools.stamps["a"].cancelled
    await assert_no_tasks_left()


async def test_a_stream_failing_mid_round_cancels_the_tools_it_started() -> None:
    async with OpenAIServer(
        scripted(
            Reply(
                tool_calls=[
                    call("lookup", "call_a", key="a"),
                    ToolCall("lookup", json.dumps({"key": "b"}), id="call_b", parts=3),
                ],
                tokens_per_second=20,
                drop_after=2,  # the connection breaks inside the second call
            )
        )
    ) as server:
        runner = make_runner(server)
        tools = Tools(sleep=1.0)
        stream = start_chat(runner, tools)
        # no `async with`: the stream is not closed by the consumer
        said = [c.choices[0].delta.content async for c in stream if c.choices]
        assert stream.error == "APIConnectionError"
        assert said == [runner.options.apology]  # nothing was said yet: apologise
        assert tools.stamps["a"].cancelled  # stopped with its failed round, not left running
        assert "b" not in tools.stamps
        await stream.aclose()
        await runner.aclose()
    assert len(server.requests) == 1
    await assert_no_tasks_left()


# --- metrics ---------------------------------------------------------------------------------


async def test_one_llm_metrics_per_round_is_forwarded_and_none_merged(
    server: OpenAIServer,
) -> None:
    server.responder = scripted(
        Reply(text="Checking.", tool_calls=[call("lookup", "call_a", key="a")]),
        Reply(text="Found it."),
    )
    runner = make_runner(server)
    inner_metrics: list[LLMMetrics] = []
    outer_metrics: list[Any] = []
    runner.inner.on("metrics_collected", inner_metrics.append)
    runner.on("metrics_collected", outer_metrics.append)

    stream = start_chat(runner, Tools(sleep=0.01))
    assert joined(await consume(stream)) == "Checking. Found it."
    await runner.aclose()

    assert len(outer_metrics) == 2  # one per round: no merged per-reply metrics of its own
    assert outer_metrics == inner_metrics
    assert all(isinstance(m, LLMMetrics) for m in outer_metrics)
    assert [m.request_id for m in outer_metrics] == ["chatcmpl-loopback-0", "chatcmpl-loopback-1"]
    assert {m.label for m in outer_metrics} == {runner.inner.label}
    assert all(m.prompt_tokens > 0 and m.completion_tokens > 0 for m in outer_metrics)
    # the second round's prompt carries the tool messages: larger than the first's
    assert outer_metrics[1].prompt_tokens > outer_metrics[0].prompt_tokens


# --- the LLM failing for good ------------------------------------------------------------------


async def test_llm_failing_before_any_text_speaks_the_apology() -> None:
    async with OpenAIServer(lambda body: Fault(status=400, message="bad request")) as server:
        inner = LLM(base_url=server.base_url, api_key="sk-test")
        runner = ToolRunningLLM(inner, ToolRunningLLMOptions(apology="Sorry, say again?"))
        ctx = llm.ChatContext().append(role="user", text="hi")
        stream = runner.chat(chat_ctx=ctx)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await stream.aclose()
        await runner.aclose()
    assert text == "Sorry, say again?"
    assert stream.error == "APIStatusError"


async def test_llm_failing_after_some_text_does_not_repeat_or_apologise() -> None:
    reply = Reply(text="The answer is forty two and more words follow.", drop_after=3)
    async with OpenAIServer(lambda body: reply) as server:
        inner = LLM(base_url=server.base_url, api_key="sk-test")
        runner = ToolRunningLLM(inner, ToolRunningLLMOptions(apology="Sorry, say again?"))
        ctx = llm.ChatContext().append(role="user", text="hi")
        stream = runner.chat(chat_ctx=ctx)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await stream.aclose()
        await runner.aclose()
    assert text.strip() == "The answer is"  # the three tokens sent before the drop
    assert server.requests[0].deltas_sent == 3
    assert "Sorry" not in text
    assert len(server.requests) == 1  # not retried once words were out
    assert stream.error is not None


# --- bounds on what one reply can start (docs/security.md) ------------------------------------


def overlap(stamps: list[Stamp]) -> int:
    """The most tools that ran at the same moment."""
    events = sorted(
        [(s.start, 1) for s in stamps] + [(s.end or s.cancelled_at or 0.0, -1) for s in stamps],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    running = most = 0
    for _, step in events:
        running += step
        most = max(most, running)
    return most


async def test_a_reply_with_50_tool_calls_runs_8_and_tells_the_model_about_the_rest(
    server: OpenAIServer,
) -> None:
    server.responder = scripted(
        Reply(tool_calls=[call("lookup", f"call_{i}", key=f"k{i}") for i in range(50)]),
        Reply(tool_calls=[call("lookup", "call_more", key="more")]),  # a second round: over too
        Reply(text="Done."),
    )
    runner = make_runner(server)  # max_tool_calls: 8 by default
    tools = Tools(sleep=0.01)
    stream = start_chat(runner, tools)
    assert joined(await consume(stream)) == "Done."
    await runner.aclose()

    assert sorted(tools.stamps) == sorted(f"k{i}" for i in range(8))
    second = {m["tool_call_id"]: m["content"] for m in server.requests[1].body["messages"][3:]}
    assert len(second) == 50  # every call gets its result, as the API requires
    for i in range(50):
        if i < 8:
            assert second[f"call_{i}"] == f"value of k{i}"
        else:
            assert second[f"call_{i}"] == (
                "error: lookup was not run: at most 8 tool calls per reply. "
                "Call fewer tools at once."
            )
    third = server.requests[2].body["messages"]
    assert third[-1]["tool_call_id"] == "call_more"
    assert "was not run: at most 8 tool calls per reply" in third[-1]["content"]


async def test_concurrent_tools_are_capped_per_session(server: OpenAIServer) -> None:
    server.responder = lambda body: (
        Reply(text="Done.")
        if body["messages"][-1]["role"] == "tool"
        else Reply(
            tool_calls=[
                call("lookup", f"{body['messages'][-1]['content']}{i}", key=f"{i}")
                for i in range(3)
            ]
        )
    )
    runner = make_runner(server, max_concurrent_tools=2)
    tools_a, tools_b = Tools(sleep=0.3), Tools(sleep=0.3)

    def chat(tools: Tools, name: str) -> ToolRoundsStream:
        ctx = ChatContext().append(role="user", text=name)
        return runner.chat(chat_ctx=ctx, fnc_ctx=tools, conn_options=CONN)

    # two replies of the same session at once (a new turn while the last one's tools run)
    answers = await asyncio.gather(consume(chat(tools_a, "a")), consume(chat(tools_b, "b")))
    await runner.aclose()

    assert [joined(a) for a in answers] == ["Done.", "Done."]
    stamps = [*tools_a.stamps.values(), *tools_b.stamps.values()]
    assert len(stamps) == 6
    assert all(s.end is not None for s in stamps)  # waited for a slot, none timed out
    assert overlap(stamps) == 2


class Endless(FunctionContext):
    def __init__(self) -> None:
        self.stamp: Stamp | None = None
        super().__init__()

    @ai_callable()
    @tool_options(run_to_end=True, timeout=0.1, limit=0.5)
    async def commit(self) -> str:
        """Must not be half done; never answers."""
        self.stamp = Stamp(time.perf_counter())
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.stamp.cancelled = True
            self.stamp.cancelled_at = time.perf_counter()
            raise
        return "done"


async def test_a_run_to_end_tool_still_stops_at_its_upper_bound(
    server: OpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.responder = scripted(Reply(tool_calls=[call("commit", "call_c")]), Reply(text="Ok."))
    runner = make_runner(server)
    tools = Endless()
    stream = start_chat(runner, tools)
    assert joined(await consume(stream)) == "Ok."
    # the model got its answer at the timeout; the tool went on, owned by the runner...
    assert tools.stamp is not None
    (timing,) = stream.tool_calls
    results = server.requests[1].body["messages"][3:]
    assert results[0]["content"] == "error: commit did not answer within 0.1 s"
    async with asyncio.timeout(20):  # the limit is 0.5 s; without one this waits an hour
        await runner.aclose()
    # ...until its limit, not its timeout, cancelled it: 0.5 s from the call's start (the
    # tool's own code may start later on a loaded machine)
    assert tools.stamp.cancelled
    assert tools.stamp.cancelled_at is not None
    assert timing.started <= tools.stamp.start
    assert tools.stamp.cancelled_at - timing.started >= 0.5
    assert "run-to-end tool stopped at its time limit" in caplog.text
