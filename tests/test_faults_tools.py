"""Hostile tool calls through a whole session: the LLM's output is untrusted input to the tools.

One response of the (loopback) model carries a valid call next to calls with deeply nested JSON,
a 100 000-character string, wrong types (a number for a string, ``true`` for a number, a string
for a number, an object for a string), a value outside the declared choices, broken JSON, a
null, and an unknown tool name; another tool returns a megabyte. Only the valid calls run; every
other call becomes an error result the model reads; the huge result is cut; nothing hostile is
carried into the next request in full; the answer is spoken and the next turn works.
(Timeouts, raising tools and barge-in during tools: tests/test_conversation_tools.py.)
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from livekit.agents import llm

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply, ToolCall, scripted
from worker.tools.runner import ToolRunningLLMOptions

pytestmark = pytest.mark.timeout(90)

# 12 calls in one reply: more than the default AGENT_MAX_TOOL_CALLS (8), so raised here
TOOLS_ENV = {"AGENT_TOOLS": "tests.test_faults_tools:Targets", "AGENT_MAX_TOOL_CALLS": "16"}
CALLS: list[tuple[str, dict[str, Any]]] = []
"""Every tool that actually ran, with its arguments."""
HUGE_RESULT = "x" * 1_000_000
MAX_RESULT = ToolRunningLLMOptions().max_result_chars


class Targets(llm.FunctionContext):
    @llm.ai_callable()
    async def weather(
        self,
        city: Annotated[str, llm.TypeInfo(description="city")],
        days: Annotated[int, llm.TypeInfo(description="days ahead", choices=[1, 2, 3])] = 1,
    ) -> str:
        """The weather forecast for a city."""
        CALLS.append(("weather", {"city": city, "days": days}))
        return f"{city}: sunny for {days} days"

    @llm.ai_callable()
    async def dump(self) -> str:
        """Dumps a whole database."""
        CALLS.append(("dump", {}))
        return HUGE_RESULT


DEEP = "[" * 5000 + "]" * 5000
HOSTILE: list[tuple[str, str, str]] = [
    # (tool, raw arguments, what is wrong)
    ("weather", '{"city": "Paris", "days": 2}', ""),
    ("weather", '{"city": ' + DEEP + "}", "nested 5000 levels deep"),
    ("weather", json.dumps({"city": "A" * 100_000}), "a 100 000-character string"),
    ("weather", '{"city": 5}', "a number for a string"),
    ("weather", '{"city": {"$gt": ""}}', "an object for a string"),
    ("weather", '{"city": "Rome", "days": true}', "true for a number"),
    ("weather", '{"city": "Rome", "days": "2"}', "a string for a number"),
    ("weather", '{"city": "Rome", "days": 7}', "not one of the choices"),
    ("weather", "null", "null instead of an object"),
    ("rm_rf", '{"path": "/"}', "an unknown tool"),
    ("dump", "{}", ""),
    ("weather", '{"city": "Par', "broken JSON"),
]


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


def tool_results(body: dict[str, Any]) -> dict[str, str]:
    return {m["tool_call_id"]: m["content"] for m in body["messages"] if m["role"] == "tool"}


def sent_arguments(body: dict[str, Any]) -> dict[str, str]:
    calls = [
        c for m in body["messages"] if m["role"] == "assistant" for c in m.get("tool_calls") or []
    ]
    return {c["id"]: c["function"]["arguments"] for c in calls}


async def test_hostile_tool_calls_are_refused_before_running_and_the_turn_goes_on(
    make_faulty_session: SessionFactory,
) -> None:
    calls = [ToolCall(name, raw, id=f"call_{i}") for i, (name, raw, _) in enumerate(HOSTILE)]
    h = await make_faulty_session(
        scripted(
            Reply(tool_calls=calls),
            Reply(text="Paris will be sunny."),
            Reply(text="You are welcome."),
        ),
        env=TOOLS_ENV,
    )
    await h.utter("what is the weather in Paris")
    reply = await h.wait_for_replies(1, timeout=30)
    assert reply.args[0].content == "Paris will be sunny."

    # only the two valid calls ran, with exactly their declared arguments
    assert sorted(CALLS, key=lambda c: c[0]) == [
        ("dump", {}),
        ("weather", {"city": "Paris", "days": 2}),
    ]

    # the tools offered are the built-in ones and AGENT_TOOLS', nothing else
    offered = {t["function"]["name"] for t in h.oai.requests[0].body["tools"]}
    assert offered == {"look_at_camera", "current_time", "end_call", "weather", "dump"}

    # every call got a result the model can read; the hostile ones say why they did not run
    second = h.oai.requests[1].body
    results = tool_results(second)
    assert sorted(results) == sorted(c.id for c in calls if c.id)
    for i, (_, _, wrong) in enumerate(HOSTILE):
        result = results[f"call_{i}"]
        assert len(result) <= MAX_RESULT + 100, (wrong, len(result))
        if wrong:
            assert result.startswith("Error: the call was not run"), (wrong, result[:200])
    assert results["call_0"] == "Paris: sunny for 2 days"
    assert results["call_10"].startswith("x" * 100)  # the megabyte, cut
    assert "cut" in results["call_10"][-60:]
    assert "no function named 'rm_rf': it does not exist" in results["call_9"]
    assert "again with valid arguments" not in results["call_9"]  # no retry of what isn't there
    assert results["call_3"].endswith("Call weather again with valid arguments.")  # it exists

    # nothing hostile goes back to the model in full: arguments are bounded and parseable
    for call_id, arguments in sent_arguments(second).items():
        assert len(arguments) <= 200 or call_id == "call_0", (call_id, len(arguments))
    assert len(json.dumps(second["messages"][-len(HOSTILE) - 1 :])) < 80_000

    # the conversation goes on
    await h.utter("thank you")
    assert (await h.wait_for_replies(2)).args[0].content == "You are welcome."
    turns = [
        m for m in (d.json() for d in h.room.outbox.data_on("agent.metrics")) if m["type"] == "turn"
    ]
    await h.room.outbox.wait_for(
        lambda: sum(d.json()["type"] == "turn" for d in h.room.outbox.data_on("agent.metrics")) >= 2
    )
    turns = [
        m for m in (d.json() for d in h.room.outbox.data_on("agent.metrics")) if m["type"] == "turn"
    ]
    assert [(t["outcome"], t["tool_rounds"]) for t in turns] == [("answered", 1), ("answered", 0)]
