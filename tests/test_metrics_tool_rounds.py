"""A reply that runs several tool rounds reports every round in its ``turn`` payload (real VAD,
Deepgram plugin and LLM plugin on loopbacks)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import pytest
from livekit.agents import llm

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply, ToolCall

pytestmark = pytest.mark.timeout(60)

TOOLS_ENV = {"AGENT_TOOLS": "tests.test_metrics_tool_rounds:StepTools"}


class StepTools(llm.FunctionContext):
    @llm.ai_callable()
    async def next_step(self, n: Annotated[int, llm.TypeInfo(description="step number")]) -> str:
        """Look up one step of a recipe."""
        return f"step {n}: stir"


async def test_a_reply_with_three_tool_rounds_reports_three_rounds(
    make_session: SessionFactory,
) -> None:
    answer = "Stir three times."

    def respond(body: dict[str, Any]) -> Reply:
        rounds_done = sum(1 for m in body["messages"] if m["role"] == "tool")
        if rounds_done < 3:  # one call per round: three rounds, then the answer
            n = rounds_done + 1
            return Reply(
                tool_calls=[ToolCall("next_step", json.dumps({"n": n}), id=f"call_{n}")],
                ttft=0.05,
            )
        return Reply(text=answer, ttft=0.05)

    h = await make_session(respond, env=TOOLS_ENV)
    await h.utter("how do I make the sauce")
    await h.wait_for_replies(1, timeout=30)
    assert len(h.oai.requests) == 4  # three tool rounds and the answer

    await h.room.outbox.wait_for(
        lambda: any(d.json()["type"] == "turn" for d in h.room.outbox.data_on("agent.metrics"))
    )
    (turn,) = [
        d.json() for d in h.room.outbox.data_on("agent.metrics") if d.json()["type"] == "turn"
    ]
    assert turn["tool_rounds"] == 3
    assert turn["e2e_latency"] is not None
