"""LLM faults in a whole session: the loopback OpenAI server fails in front of the real client
(the project's plugin on the openai SDK), inside the in-process room with real VAD and the real
Deepgram plugin. What must hold: faults before the first token are retried and the turn is
answered; after the first token nothing is repeated; when every attempt fails the agent says
its apology and the next turn works; a configured fallback LLM takes over. Every turn is
accounted for in the metrics, and no fake key appears in any output.
"""

from __future__ import annotations

import asyncio
from typing import Any

from livekit.agents import APIConnectOptions

from tests.conftest import Harness, SessionFactory
from tests.loopback.openai_server import Fault, OpenAIServer, Reply, scripted
from worker.pipeline.adapter import fallback_recovery_tasks as recovery_tasks
from worker.pipeline.conversation import ConversationOptions
from worker.providers.fallback_llm import FallbackLLM
from worker.tools.runner import ToolRunningLLMOptions

APOLOGY = "Sorry, I lost my train of thought. Please say that again."
FAST_RETRIES = ToolRunningLLMOptions(
    apology=APOLOGY,
    # a stalled stream is given up after 5 s: long enough that a loopback answer on a loaded
    # machine is never mistaken for a stall (the request counts below are exact), short pauses
    llm_conn_options=APIConnectOptions(max_retry=3, retry_interval=0.3, timeout=5.0),
)
OPTIONS = ConversationOptions(instructions="Be brief.", tools=FAST_RETRIES)


def turns(h: Harness) -> list[dict[str, Any]]:
    messages = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
    return [m for m in messages if m["type"] == "turn"]


async def wait_for_turns(h: Harness, n: int) -> list[dict[str, Any]]:
    await h.room.outbox.wait_for(lambda: len(turns(h)) >= n, timeout=20)
    return turns(h)


def spoken_words(h: Harness) -> list[str]:
    """Every word the TTS was asked to speak, in order."""
    return " ".join(f.text for f in h.dg.flushes).split()


def last_user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


async def take_turn(h: Harness, question: str, replies: int) -> str:
    """Ask ``question``; return the agent's committed reply text (reply number ``replies``)."""
    await h.utter(question)
    reply = await h.wait_for_replies(replies, timeout=30)
    text: str = reply.args[0].content
    return text


async def test_faults_before_the_first_token_are_retried_and_the_turn_is_answered(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(
        scripted(
            Fault(503, "overloaded"),  # turn 1: 5xx, then 429, then an answer
            Fault(429, "slow down"),
            Reply(text="Paris is sunny."),
            Fault(status=None),  # turn 2: the connection is reset
            Reply(text="London is rainy."),
            Reply(text="never sent", stall_after=0),  # turn 3: headers, then silence
            Fault(500, stall=30),  # ... no headers at all
            Reply(text="Tokyo is warm."),
        ),
        options=OPTIONS,
    )
    assert await take_turn(h, "weather in Paris", 1) == "Paris is sunny."
    assert len(h.oai.requests) == 3
    assert await take_turn(h, "weather in London", 2) == "London is rainy."
    assert len(h.oai.requests) == 5
    assert await take_turn(h, "weather in Tokyo", 3) == "Tokyo is warm."
    assert len(h.oai.requests) == 8

    # a retry sends the same request again
    bodies = [r.body for r in h.oai.requests]
    assert bodies[0] == bodies[1] == bodies[2]
    assert bodies[3] == bodies[4]
    assert bodies[5] == bodies[6] == bodies[7]
    assert last_user_text(bodies[0]) == "weather in Paris"
    assert last_user_text(bodies[3]) == "weather in London"
    assert last_user_text(bodies[5]) == "weather in Tokyo"
    # the stalled requests were given up by the client (timeout), not left hanging
    assert h.oai.requests[5].client_disconnected
    assert h.oai.requests[6].client_disconnected

    # each answer was spoken once, no apology
    said = ["Paris is sunny.", "London is rainy.", "Tokyo is warm."]
    assert spoken_words(h) == " ".join(said).split()
    reported = await wait_for_turns(h, 3)
    assert [(t["outcome"], t["error"]) for t in reported] == [("answered", None)] * 3


async def test_a_failure_after_the_first_token_is_not_repeated_and_a_total_failure_apologises(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(
        scripted(
            # turn 1: three tokens arrive, then the connection drops: never retried
            Reply(text="The answer starts here and then breaks off.", drop_after=3),
            # turn 2: every attempt fails (1 + 3 retries)
            *[Fault(500, "down")] * 4,
            # turn 3: the provider is back
            Reply(text="All good now."),
        ),
        options=OPTIONS,
    )
    cut = await take_turn(h, "tell me something", 1)
    assert cut == "The answer starts"
    assert len(h.oai.requests) == 1
    assert h.oai.requests[0].deltas_sent == 3

    apology = await take_turn(h, "are you there", 2)
    assert apology == APOLOGY
    assert len(h.oai.requests) == 5

    assert await take_turn(h, "and now", 3) == "All good now."
    assert len(h.oai.requests) == 6

    # nothing was spoken twice, and the apology only for the turn that got no answer at all
    assert spoken_words(h) == [*cut.split(), *APOLOGY.split(), "All", "good", "now."]
    reported = await wait_for_turns(h, 3)
    assert [(t["outcome"], t["error"]) for t in reported] == [
        ("cut_short", "llm"),
        ("apologised", "llm"),
        ("answered", None),
    ]
    # the context holds what was said, apology included, and the next request saw it
    history = [m["content"] for m in h.oai.requests[5].body["messages"] if m["role"] == "assistant"]
    assert history == [cut, APOLOGY]

    await h.parts.aclose()
    session = [d.json() for d in h.room.outbox.data_on("agent.metrics")][-1]
    assert session["type"] == "session"
    assert (session["turns"], session["apologised_turns"], session["error_turns"]) == (3, 1, 2)


async def test_a_fallback_llm_takes_over_probes_the_primary_and_hands_back_when_it_recovers(
    make_faulty_session: SessionFactory,
) -> None:
    primary_up = False

    def primary(body: dict[str, Any]) -> Reply | Fault:
        return Reply(text="Primary back.") if primary_up else Fault(500, "primary down")

    async with OpenAIServer(lambda body: Reply(text="Fallback here.")) as fallback:
        h = await make_faulty_session(
            primary,
            options=OPTIONS,
            env={"LLM_FALLBACK_BASE_URL": fallback.base_url, "LLM_FALLBACK_MODEL": "backup"},
        )
        adapter = h.parts.llm.inner
        assert isinstance(adapter, FallbackLLM)

        assert await take_turn(h, "first question", 1) == "Fallback here."
        # the primary was tried and retried once (max_retry_per_llm=1) before the fallback
        # was asked (the background probe's first request may race the fallback's)
        assert len(fallback.requests) == 1
        first_fallback = fallback.requests[0]
        assert len(h.oai.requests) >= 2
        assert all(r.received_at < first_fallback.received_at for r in h.oai.requests[:2])
        assert first_fallback.body["model"] == "backup"
        assert last_user_text(first_fallback.body) == "first question"
        # the fallback runs on another server: it never gets the OpenAI key
        assert first_fallback.headers["Authorization"] == "Bearer no-key"

        # the failed primary is probed in the background with the same request (one probe,
        # retried once): two more requests reach it, and the probe task ends (still down)
        await h.wait_for_requests(4)
        probes = h.oai.requests[2:]
        assert [last_user_text(r.body) for r in probes] == ["first question"] * 2
        async with asyncio.timeout(10):
            await asyncio.gather(*recovery_tasks(adapter), return_exceptions=True)
        assert recovery_tasks(adapter) == []
        assert len(h.oai.requests) == 4

        # the primary is back, but it is still marked down: the next turn goes straight to the
        # fallback (had the primary been asked, it would have answered "Primary back.") and
        # probes the primary alongside; the probe's answer is not spoken
        primary_up = True
        assert await take_turn(h, "second question", 2) == "Fallback here."
        assert last_user_text(fallback.requests[-1].body) == "second question"
        assert len(fallback.requests) == 2
        await h.wait_for_requests(5)
        assert last_user_text(h.oai.requests[4].body) == "second question"
        assert len(h.oai.requests) == 5  # the probe, no turn request

        # the probe succeeded: the third turn is the primary's again, the fallback is not asked
        assert await take_turn(h, "third question", 3) == "Primary back."
        assert len(fallback.requests) == 2
        assert last_user_text(h.oai.requests[-1].body) == "third question"
        assert " ".join(f.text for f in h.dg.flushes).split().count("Primary") == 1
        reported = await wait_for_turns(h, 3)
        assert [t["outcome"] for t in reported] == ["answered"] * 3

        await h.aclose()  # closes the adapter: probes stopped, both clients closed
        assert recovery_tasks(adapter) == []
