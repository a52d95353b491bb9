"""An LLM answer with nothing to say (empty, blank, or tool calls only that never lead to text) is
a failed reply: the agent says its short apology, reports the turn, and listens again (real
Silero VAD on espeak-ng speech in the in-process room, Deepgram and LLM plugins on loopbacks).
Left alone, 0.12 would wait on the silent reply and stay "thinking" for good.
"""

from __future__ import annotations

from typing import Any

import pytest
from livekit.agents import llm

from plugins.openai_llm import LLM
from tests.conftest import SessionFactory
from tests.loopback.openai_server import OpenAIServer, Reply, ToolCall
from worker.tools.runner import ToolRunningLLM, ToolRunningLLMOptions

pytestmark = pytest.mark.timeout(60)

QUESTION = "What is the capital of France?"
NEXT = "Paris it is. Anything else?"
APOLOGY = ToolRunningLLMOptions().apology
EMPTY_ANSWERS = {
    "empty": Reply(text=""),
    "blank": Reply(text="  \n "),
    "unknown-tools-only": Reply(tool_calls=[ToolCall("no_such_tool")]),
}


@pytest.mark.parametrize("answer", EMPTY_ANSWERS.values(), ids=EMPTY_ANSWERS.keys())
async def test_a_reply_with_no_text_becomes_the_apology(answer: Reply) -> None:
    async with OpenAIServer(lambda body: answer) as server:
        runner = ToolRunningLLM(LLM(base_url=server.base_url, api_key="sk-test"))
        ctx = llm.ChatContext().append(role="user", text=QUESTION)
        stream = runner.chat(chat_ctx=ctx)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        await stream.aclose()
        await runner.aclose()
    assert text.strip() == APOLOGY
    assert stream.apologised
    assert stream.error == "EmptyReply"


@pytest.mark.parametrize("answer", EMPTY_ANSWERS.values(), ids=EMPTY_ANSWERS.keys())
async def test_the_agent_apologises_reports_and_listens_again(
    make_session: SessionFactory, answer: Reply
) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        asked = [m for m in body["messages"] if m["role"] == "user"]
        return answer if len(asked) == 1 else Reply(text=NEXT)

    h = await make_session(respond)
    await h.utter(QUESTION)
    said = await h.wait_for_replies(1)
    assert said.args[0].content == APOLOGY
    await h.room.outbox.wait_for(
        lambda: h.room.outbox.attribute_values("lk.agent.state")[-1] == "listening", timeout=10
    )

    def turns() -> list[dict[str, Any]]:
        sent = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
        return [t for t in sent if t["type"] == "turn"]

    await h.room.outbox.wait_for(lambda: bool(turns()), timeout=10)
    assert [(t["outcome"], t["error"]) for t in turns()] == [("apologised", "llm")]
    assert isinstance(turns()[0]["e2e_latency"], float)

    # not stuck: the next question is answered
    await h.utter("Is it a big city?")
    answered = await h.wait_for_replies(2)
    assert answered.args[0].content == NEXT
