"""A call that outlives the drain is ended cleanly: when 0.12 ends a job from outside (the drain
timeout expired, ``Worker.aclose`` sends every job process a shutdown request), it disconnects
the room first and runs the shutdown callbacks after. The job's session still closes and its
final metrics (the ``session`` payload, and what the Prometheus sink counts) go out before the
room is gone.

The job runs the real ``worker.job.run_session`` with the framework's ``JobContext`` over the
in-process room; the framework's shutdown sequence (job_proc_lazy_main ``_run_job_task``) is
replayed step by step.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest
from livekit.agents import JobContext, JobProcess
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.agents.utils import http_context
from livekit.protocol import agent as proto_agent
from livekit.protocol import models as proto_models

from tests.conftest import SAMPLE_RATE, loopback_settings
from tests.loopback.deepgram_server import DeepgramLoopback
from tests.loopback.openai_server import OpenAIServer, Reply
from tests.speech import speak
from worker.job import run_session
from worker.local_room import LocalRoom, as_rtc_room
from worker.local_room.room import LocalRoomOptions
from worker.providers.selection import load_vad

pytestmark = pytest.mark.timeout(120)


class _NoInference:
    async def do_inference(self, method: str, data: bytes) -> bytes | None:
        raise AssertionError("no inference here")


async def framework_shutdown(ctx: JobContext, reason: str) -> None:
    """What a job process does on a ShutdownRequest (livekit-agents 0.12.21,
    ipc/job_proc_lazy_main.py ``_run_job_task``): disconnect the room, then run the callbacks."""
    await ctx.room.disconnect()
    await asyncio.gather(*(cb(reason) for cb in ctx._shutdown_callbacks))


async def test_a_call_ended_by_the_drain_timeout_closes_its_session_and_flushes_metrics() -> None:
    oai = OpenAIServer(lambda body: Reply(text="It is noon."))
    await oai.start()
    dg = DeepgramLoopback()
    await dg.start()
    room = LocalRoom(options=LocalRoomOptions(connected=False))
    settings = loopback_settings(oai, dg)
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="agent", identity="agent", metadata=""),
        job=proto_agent.Job(id="AJ_drain", room=proto_models.Room(name=room.name)),
        url="ws://127.0.0.1:1",
        token="unused",
        worker_id="local",
    )
    shutdowns: list[str] = []
    ctx = JobContext(
        proc=JobProcess(),
        info=info,
        room=as_rtc_room(room),
        on_connect=lambda: None,
        on_shutdown=shutdowns.append,
        inference_executor=_NoInference(),
    )
    user = room.add_participant("user")
    mic = user.publish_microphone()
    http_context._new_session_ctx()  # as the job process does before the entrypoint
    job = asyncio.create_task(run_session(ctx, settings, vad=load_vad()))
    try:
        # the call: one turn answered, and it goes on (the user is still there)
        dg.transcripts.append("what time is it")
        await mic.push(speak("what time is it", SAMPLE_RATE), SAMPLE_RATE)

        def payloads(kind: str) -> list[dict[str, Any]]:
            return [
                d.json() for d in room.outbox.data_on("agent.metrics") if d.json()["type"] == kind
            ]

        await room.outbox.wait_for(lambda: bool(payloads("turn")), timeout=40)
        assert not payloads("session")
        assert not job.done()

        # the drain timeout expires: the worker ends the job from outside
        await framework_shutdown(ctx, "drain timeout")

        (session,) = payloads("session")  # sent while the room was still connected
        assert session["turns"] == 1
        assert not room.isconnected()
        # the session closed what it opened
        await dg.wait_until(
            lambda: (
                all(c.closed_at is not None for c in dg.listen_connections)
                and all(c.closed_at is not None for c in dg.speak_connections)
            ),
            timeout=10,
        )
        assert dg.listen_connections
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
        await http_context._close_http_ctx()
        await room.aclose()
        await dg.aclose()
        await oai.stop()
        gc.collect()  # finalize the job's leftovers here, not inside a later test
