"""Process-level faults with the real worker (``python -m worker start``, job processes spawned by
the framework) against the loopback LiveKit server, and a job that ends mid-turn in-process.

- One job failing (its room connection refused) leaves the worker and the other job running:
  the worker stays registered and healthy, keeps the other job, and takes new ones.
- SIGTERM during a call: the worker drains, the call goes on until it ends by itself, then the
  worker exits 0; a call that outlives ``--drain-timeout`` is ended and the worker exits.
- A session closed mid-turn (LLM streaming, a tool running, TTS speaking) closes everything it
  opened: no task left, every provider connection closed.
No fake key appears in any output.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from livekit.agents import llm
from livekit.protocol import agent

from tests.conftest import SessionFactory
from tests.loopback.livekit_server import LoopbackLiveKitServer, make_job
from tests.loopback.openai_server import Reply, ToolCall
from tests.test_worker_protocol import (
    AGENT_NAME,
    Keys,
    assert_no_secrets,
    free_port,
    health,
    is_job_started,
    run_worker,
    worker_env,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def keys() -> Keys:
    return Keys(
        livekit_key=f"APIfault{secrets.token_hex(6)}",
        livekit_secret=secrets.token_urlsafe(36),
        deepgram=f"dgfault{secrets.token_hex(16)}",
        openai=f"sk-fault{secrets.token_hex(16)}",
    )


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[LoopbackLiveKitServer]:
    async with LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret) as srv:
        yield srv


def status_of(conn: Any, job_id: str) -> list[int]:
    return [u.status for u in conn.of_kind("update_job") if u.job_id == job_id]


async def end_call(server: LoopbackLiveKitServer, room: str) -> None:
    """The call's room goes away: the held connection closes and reconnecting is refused."""
    server.held_rooms.discard(room)
    for attempt in server.rtc_attempts:
        if attempt.room == room:
            await attempt.close()


async def assign(conn: Any, server: LoopbackLiveKitServer, job_id: str, room: str) -> agent.Job:
    job = make_job(job_id, room, AGENT_NAME, dispatch_id=f"AD_{job_id}")
    answer = await conn.request_job(job)
    assert answer.available is True, job_id
    await conn.assign(job, server.agent_token(job, answer.participant_identity))
    return job


async def test_a_failing_job_leaves_the_worker_and_the_other_job_running(
    server: LoopbackLiveKitServer, keys: Keys, tmp_path: Path
) -> None:
    server.held_rooms.add("room-call")
    port = free_port()
    env = worker_env(server, keys, port)
    env["MAX_JOBS"] = "3"
    async with run_worker(env, tmp_path, port) as worker:
        async with asyncio.timeout(90):
            conn = await server.wait_for_worker()
            call = await assign(conn, server, "AJ_call", "room-call")
            (held,) = await server.wait_for_rtc(1)  # the call is connecting
        assert held.held
        assert held.room == "room-call"

        # a second job whose room connection is refused: it fails, and ends (before the fix
        # in worker/entrypoint.py a job whose entrypoint raised kept its slot forever)...
        async with asyncio.timeout(60):
            await assign(conn, server, "AJ_doomed", "room-doomed")
            await conn.wait_for(
                "update_job", lambda u: u.job_id == "AJ_doomed" and u.status != agent.JS_RUNNING
            )
            failed = await worker.wait_for_log(
                lambda r: str(r.get("message", "")).startswith("job failed")
            )
        assert failed["job_id"] == "AJ_doomed"
        # ...and nothing else does: the worker is registered and healthy, and the call is
        # still connecting (the SDK waits ~20 s for a join response that never comes)
        assert status_of(conn, call.id) == [agent.JS_RUNNING]
        assert worker.proc.returncode is None
        assert not conn.closed.is_set()
        async with asyncio.timeout(30):
            assert await health(port) == (200, "OK")

        # the call ends (its room goes away): its job ends by itself
        await end_call(server, "room-call")
        async with asyncio.timeout(60):
            await conn.wait_for(
                "update_job", lambda u: u.job_id == call.id and u.status != agent.JS_RUNNING
            )
        # the worker goes on taking jobs, with every slot free again
        async with asyncio.timeout(60):
            await assign(conn, server, "AJ_next", "room-next")
            await worker.wait_for_log(is_job_started("AJ_next"))
            await conn.wait_for(
                "update_job", lambda u: u.job_id == "AJ_next" and u.status != agent.JS_RUNNING
            )
            await conn.wait_for(
                "update_worker", lambda u: u.job_count == 0, after=len(conn.messages) - 1
            )
        worker.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            assert await worker.wait_exit() == 0
    assert_no_secrets(worker.text(), keys)


async def test_sigterm_during_a_call_drains_until_the_call_ends(
    server: LoopbackLiveKitServer, keys: Keys, tmp_path: Path
) -> None:
    server.held_rooms.add("room-call")
    port = free_port()
    async with run_worker(worker_env(server, keys, port), tmp_path, port) as worker:
        async with asyncio.timeout(60):
            conn = await server.wait_for_worker()
            call = await assign(conn, server, "AJ_call", "room-call")
            await server.wait_for_rtc(1)  # the call is connecting (a join that never comes)
            await worker.wait_for_log(is_job_started(call.id))

        worker.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await worker.wait_for_log(lambda r: r.get("message") == "draining worker")
        # draining: the call is not cut, and no new job is taken
        assert worker.proc.returncode is None
        assert status_of(conn, call.id) == [agent.JS_RUNNING]
        assert any(a.room == "room-call" and not a.closed.is_set() for a in server.rtc_attempts)

        await end_call(server, "room-call")  # the call ends by itself
        async with asyncio.timeout(60):
            assert await worker.wait_exit() == 0
        assert status_of(conn, call.id)[-1] != agent.JS_RUNNING
    assert_no_secrets(worker.text(), keys)


# --- in-process: a session closed in the middle of a turn -----------------------------------


async def test_a_session_closed_mid_turn_closes_everything_it_opened(
    make_faulty_session: SessionFactory,
) -> None:
    Slow.started, Slow.cancelled = asyncio.Event(), asyncio.Event()

    def respond(body: dict[str, Any]) -> Reply:
        if not any(m["role"] == "tool" for m in body["messages"]):
            # "let me check" is spoken while the tool runs
            return Reply(text="Let me check that for you.", tool_calls=[ToolCall("slow_tool")])
        return Reply(text="Found it.")

    h = await make_faulty_session(respond, env={"AGENT_TOOLS": "tests.test_faults_process:Slow"})
    await h.utter("look it up")
    async with asyncio.timeout(30):
        await Slow.started.wait()  # the tool runs, the LLM stream is open, the TTS speaks
    await h.wait_for_event("agent_started_speaking", timeout=20)

    await h.parts.aclose()  # the job ends now (shutdown), mid-turn
    assert Slow.cancelled.is_set()
    # every provider connection the session opened is closed (the servers notice it soon after)
    async with asyncio.timeout(10):
        for request in h.oai.requests:
            await request.done.wait()
    await h.dg.wait_until(
        lambda: (
            all(c.closed_at is not None for c in h.dg.listen_connections)
            and all(c.closed_at is not None for c in h.dg.speak_connections)
        ),
        timeout=10,
    )
    assert h.dg.listen_connections
    assert h.dg.speak_connections
    # (the fixture then checks that no task is left and no error went unretrieved)


class Slow(llm.FunctionContext):
    """AGENT_TOOLS for the mid-turn test: one tool that runs until it is cancelled."""

    started = asyncio.Event()
    cancelled = asyncio.Event()

    @llm.ai_callable()
    async def slow_tool(self) -> str:
        """A lookup that takes a long time."""
        Slow.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            Slow.cancelled.set()
            raise
        return "never"
