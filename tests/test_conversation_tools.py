"""Tools in a spoken conversation (real VAD, Deepgram plugin and LLM plugin on loopbacks): calls
run concurrently, their results reach the LLM in call order and persist in the context next to
the reply; a timeout or a raising tool becomes an error result and the conversation goes on.

The tools are loaded the way a deployment loads them: ``AGENT_TOOLS`` names the class below.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from livekit.agents import llm

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply, ToolCall
from worker.tools.runner import tool_options

pytestmark = pytest.mark.timeout(60)  # a hang fails fast (the default is 300 s)

TOOLS_ENV = {"AGENT_TOOLS": "tests.test_conversation_tools:ClockedTools"}


@dataclass
class ToolRun:
    name: str
    started: float
    ended: float | None = None
    outcome: str = "running"
    """done, raised, cancelled (or running)."""


RUNS: list[ToolRun] = []
"""Every tool run of the current test, in start order (ClockedTools is built by the session)."""
_STARTED: list[asyncio.Future[None]] = []


async def wait_for_run(name: str, timeout: float = 20.0) -> ToolRun:
    """The run of tool ``name``, once it has started."""
    async with asyncio.timeout(timeout):
        while not any(r.name == name for r in RUNS):
            fut = asyncio.get_running_loop().create_future()
            _STARTED.append(fut)
            await fut
    return run_of(name)


async def clocked(name: str, seconds: float, result: str) -> str:
    run = ToolRun(name, time.perf_counter())
    RUNS.append(run)
    for fut in _STARTED:
        if not fut.done():
            fut.set_result(None)
    _STARTED.clear()
    try:
        await asyncio.sleep(seconds)  # the tool's work (a slow API, say)
    except asyncio.CancelledError:
        run.outcome = "cancelled"
        raise
    finally:
        run.ended = time.perf_counter()
    run.outcome = "done"
    return result


class ClockedTools(llm.FunctionContext):
    @llm.ai_callable()
    async def weather(self, city: Annotated[str, llm.TypeInfo(description="city")]) -> str:
        """The weather in a city."""
        return await clocked("weather", 1.0, f"{city}: 21 degrees and sunny")

    @llm.ai_callable()
    async def traffic(self, city: Annotated[str, llm.TypeInfo(description="city")]) -> str:
        """The traffic in a city."""
        return await clocked("traffic", 1.0, f"{city}: light traffic")

    @llm.ai_callable()
    @tool_options(timeout=0.5)
    async def slow_lookup(self) -> str:
        """A lookup that takes far longer than its timeout."""
        return await clocked("slow_lookup", 30.0, "never")

    @llm.ai_callable()
    async def broken(self) -> str:
        """A tool whose backend fails."""
        RUNS.append(ToolRun("broken", time.perf_counter(), time.perf_counter(), "raised"))
        raise RuntimeError("database unavailable")

    @llm.ai_callable()
    @tool_options(timeout=20.0)
    async def long_search(self) -> str:
        """A long search (the user barges in while it runs)."""
        return await clocked("long_search", 30.0, "found it")


@pytest.fixture(autouse=True)
def _clear_runs() -> None:
    RUNS.clear()
    _STARTED.clear()


def run_of(name: str) -> ToolRun:
    (run,) = [r for r in RUNS if r.name == name]
    return run


def last_role(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["role"])


def user_text(body: dict[str, Any]) -> str:
    """The text of the request's last user message."""
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p.get("type") == "text")


async def test_two_tools_overlap_and_both_results_reach_the_answer(
    make_session: SessionFactory,
) -> None:
    answer = "It is 21 degrees and sunny, with light traffic."

    def respond(body: dict[str, Any]) -> Reply:
        if last_role(body) == "user":
            return Reply(
                tool_calls=[
                    ToolCall("weather", json.dumps({"city": "Paris"}), id="call_w"),
                    ToolCall("traffic", json.dumps({"city": "Paris"}), id="call_t"),
                ],
                ttft=0.1,
            )
        return Reply(text=answer, ttft=0.1)

    h = await make_session(respond, env=TOOLS_ENV)
    await h.utter("how is Paris doing today")
    reply = await h.wait_for_replies(1, timeout=30)

    # both 1 s tools ran at the same time
    weather, traffic = run_of("weather"), run_of("traffic")
    assert weather.outcome == traffic.outcome == "done"
    assert weather.ended is not None
    assert traffic.ended is not None
    overlap = min(weather.ended, traffic.ended) - max(weather.started, traffic.started)
    assert overlap > 0.5, f"tools overlapped only {overlap:.3f} s"

    # the second request carries the calls and both results, in call order
    assert len(h.oai.requests) == 2
    messages = h.oai.requests[1].body["messages"]
    assert [m["role"] for m in messages[-3:]] == ["assistant", "tool", "tool"]
    calls = messages[-3]["tool_calls"]
    assert [(c["id"], c["function"]["name"]) for c in calls] == [
        ("call_w", "weather"),
        ("call_t", "traffic"),
    ]
    assert [(m["tool_call_id"], m["content"]) for m in messages[-2:]] == [
        ("call_w", "Paris: 21 degrees and sunny"),
        ("call_t", "Paris: light traffic"),
    ]

    # the answer is spoken
    assert reply.name == "agent_speech_committed"
    assert reply.args[0].content == answer
    assert " ".join(f.text for f in h.dg.flushes).split() == answer.split()
    await h.room.outbox.audio[0].wait_for_audio(1.0, timeout=10)

    # the context: user, assistant tool calls, results in call order, assistant text
    ctx = h.conversation.chat_ctx.messages
    assert [m.role for m in ctx] == ["system", "user", "assistant", "tool", "tool", "assistant"]
    assert [c.tool_call_id for c in ctx[2].tool_calls or []] == ["call_w", "call_t"]
    assert [(m.tool_call_id, m.content) for m in ctx[3:5]] == [
        ("call_w", "Paris: 21 degrees and sunny"),
        ("call_t", "Paris: light traffic"),
    ]
    assert ctx[5].content == answer

    # the turn summary counts the tool round
    await h.room.outbox.wait_for(
        lambda: any(d.json()["type"] == "turn" for d in h.room.outbox.data_on("agent.metrics"))
    )
    turn = next(
        d.json() for d in h.room.outbox.data_on("agent.metrics") if d.json()["type"] == "turn"
    )
    assert turn["tool_rounds"] == 1
    assert turn["tool_time"] > 0.9


async def test_timeout_and_raising_tool_become_errors_and_the_conversation_goes_on(
    make_session: SessionFactory,
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if last_role(body) == "user" and len(body["messages"]) == 2:  # system + first question
            return Reply(
                tool_calls=[ToolCall("slow_lookup", id="call_s"), ToolCall("broken", id="call_b")],
                ttft=0.1,
            )
        if last_role(body) == "tool":
            return Reply(text="Sorry, both lookups failed.", ttft=0.1)
        return Reply(text="I am still here.", ttft=0.1)

    h = await make_session(respond, env=TOOLS_ENV)
    await h.utter("look up my order please")
    first = await h.wait_for_replies(1, timeout=30)
    assert first.args[0].content == "Sorry, both lookups failed."

    # the slow tool was stopped at its timeout, the broken one raised: both answered as errors
    slow = run_of("slow_lookup")
    assert slow.outcome == "cancelled"
    assert slow.ended is not None
    assert slow.ended - slow.started < 5.0  # far before its 30 s of work
    assert run_of("broken").outcome == "raised"
    results = {
        m["tool_call_id"]: m["content"]
        for m in h.oai.requests[1].body["messages"]
        if m["role"] == "tool"
    }
    assert set(results) == {"call_s", "call_b"}
    assert results["call_s"].startswith("error:")
    assert "slow_lookup" in results["call_s"]
    assert "0.5" in results["call_s"]
    # the model learns which tool failed and how, not the message (it could carry secrets)
    assert results["call_b"] == "error: tool broken failed (RuntimeError)"

    # the conversation goes on: the next turn is answered, with the failed round in its history
    await h.utter("are you still there")
    second = await h.wait_for_replies(2, timeout=30)
    assert second.args[0].content == "I am still here."
    history = h.oai.requests[2].body["messages"]
    assert [m["role"] for m in history] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "user",
    ]


async def test_barge_in_during_tool_execution_cancels_the_running_tool(
    make_session: SessionFactory,
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        if last_role(body) == "tool":
            return Reply(text="I found it.", ttft=0.1)
        if "time" in user_text(body):
            return Reply(text="It is noon.", ttft=0.1)
        return Reply(tool_calls=[ToolCall("long_search", id="call_l")], ttft=0.1)

    h = await make_session(respond, env=TOOLS_ENV)
    await h.utter("search all my documents")
    search = await wait_for_run("long_search")
    await h.wait_for_event("user_stopped_speaking")  # the turn is over; the tool is working

    await h.utter("never mind what time is it")
    reply = await h.wait_for_replies(1, timeout=30)

    # the running tool was cancelled by the barge-in, long before its 20 s timeout
    assert search.outcome == "cancelled"
    assert search.ended is not None
    assert search.ended < h.named("user_started_speaking")[1].at + 5.0
    # its result never reached the LLM; the new question was answered and spoken
    assert all(m["role"] != "tool" for r in h.oai.requests for m in r.body["messages"])
    assert reply.args[0].content == "It is noon."
    assert "It is noon." in " ".join(f.text for f in h.dg.flushes)
    assert "I found it." not in " ".join(f.text for f in h.dg.flushes)
    # nothing of the cancelled round was kept: no call without its result
    roles = [m.role for m in h.conversation.chat_ctx.messages]
    assert roles == ["system", "user", "assistant"]
