"""One job as the framework runs it: ``worker.job.run_session`` on a real ``JobContext`` whose
room is the in-process room (the only test double), with the real VAD, the Deepgram plugin on
the Deepgram loopback and the LLM plugin on the OpenAI loopback. What the job decides: which
participant it talks with (dispatch metadata), that it greets once, where its metrics go, what
it sees (a screen share), and that it ends when its participant leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from livekit.agents import JobContext, JobProcess
from livekit.agents.job import JobAcceptArguments, RunningJobInfo

from tests.conftest import CAMERA_SIZE, SAMPLE_RATE, camera_frame, loopback_settings
from tests.loopback.deepgram_server import DeepgramLoopback
from tests.loopback.livekit_server import make_job
from tests.loopback.openai_server import OpenAIServer, Reply
from tests.speech import speak
from worker.job import run_session
from worker.local_room import LocalRoom, as_rtc_room
from worker.providers.selection import load_vad

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("loop_errors")]

ANSWER = "It is noon."


def last_user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return content if isinstance(content, str) else content[0]["text"]


@dataclass
class Job:
    room: LocalRoom
    oai: OpenAIServer
    dg: DeepgramLoopback
    task: asyncio.Task[None]
    shutdowns: list[str] = field(default_factory=list)

    def flushed_text(self) -> str:
        return " ".join(f.text for f in self.dg.flushes)


@asynccontextmanager
async def running_job(
    *,
    metadata: str = "",
    env: dict[str, str] | None = None,
    before: tuple[str, ...] = (),
) -> AsyncIterator[Job]:
    """A job dispatched into a room where the participants ``before`` are already present."""
    oai = OpenAIServer(lambda body: Reply(text=ANSWER))
    await oai.start()
    dg = DeepgramLoopback()
    await dg.start()
    settings = loopback_settings(oai, dg, env)
    room = LocalRoom()
    for identity in before:
        room.add_participant(identity)
    shutdowns: list[str] = []
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="", identity="agent", metadata=""),
        job=make_job("AJ_test", room.name, "", metadata=metadata),
        url="ws://unused",
        token="unused",
        worker_id="W_test",
    )
    ctx = JobContext(
        proc=JobProcess(),
        info=info,
        room=as_rtc_room(room),
        on_connect=lambda: None,
        on_shutdown=shutdowns.append,
        inference_executor=None,  # type: ignore[arg-type]
    )
    http = aiohttp.ClientSession()
    task = asyncio.create_task(
        run_session(ctx, settings, vad=load_vad(), http_session=http), name="test:job"
    )
    job = Job(room=room, oai=oai, dg=dg, task=task, shutdowns=shutdowns)
    try:
        yield job
    finally:
        # End the job as a call ends: everyone leaves, the session closes itself (cancelling
        # run_session would skip the closing the framework's shutdown callbacks do)
        for identity in list(room.remote_participants):
            await room.remove_participant(identity)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 30)
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await http.close()
        await room.aclose()
        await dg.aclose()
        await oai.stop()


async def test_the_dispatched_participant_is_heard_greeted_once_and_its_leaving_ends_the_job() -> (
    None
):
    greeting = "Hello, I am listening."
    async with running_job(
        metadata=json.dumps({"participant": "caller"}),
        env={"AGENT_GREETING": greeting, "METRICS_TOPIC": "ops.metrics"},
        before=("bystander",),  # the first participant in the room is not the one named
    ) as job:
        bystander = job.room.remote_participants["bystander"].publish_microphone()
        await asyncio.sleep(0.5)  # the job is waiting: for "caller", not the bystander
        assert job.dg.listen_connections == []
        assert job.dg.flushes == []

        caller = job.room.add_participant("caller")
        mic = caller.publish_microphone()
        await job.room.outbox.wait_for(lambda: greeting in job.flushed_text())

        # the bystander speaks: nobody listens to its track
        job.dg.transcripts.append("the bystander was heard")
        await bystander.push(speak("please ignore me entirely", SAMPLE_RATE), SAMPLE_RATE)
        await bystander.push_silence(1.0)
        assert job.oai.requests == []

        # the caller speaks: heard, answered
        job.dg.transcripts.clear()
        job.dg.transcripts.append("what time is it")
        await mic.push(speak("what time is it", SAMPLE_RATE), SAMPLE_RATE)
        async with asyncio.timeout(30):
            await job.oai.wait_for_requests(1)
        assert last_user_text(job.oai.requests[0].body) == "what time is it"
        await job.room.outbox.wait_for(lambda: ANSWER in job.flushed_text())

        # the greeting was spoken once, before the answer
        assert job.flushed_text().split() == [*greeting.split(), *ANSWER.split()]

        # the metrics go to METRICS_TOPIC, and only there
        await job.room.outbox.wait_for(
            lambda: any(d.json()["type"] == "turn" for d in job.room.outbox.data_on("ops.metrics"))
        )
        assert job.room.outbox.data_on("agent.metrics") == []

        # the caller leaves: the job ends by itself (session closed, metrics flushed)
        await job.room.remove_participant("caller")
        async with asyncio.timeout(20):
            await job.task
        assert len(job.shutdowns) == 1
        kinds = [d.json()["type"] for d in job.room.outbox.data_on("ops.metrics")]
        assert kinds[-1] == "session"
        assert job.room.remote_participants.keys() == {"bystander"}


async def test_without_metadata_the_first_participant_to_join_is_heard() -> None:
    async with running_job(before=("first",)) as job:
        mic = job.room.remote_participants["first"].publish_microphone()
        job.room.add_participant("second").publish_microphone()
        job.dg.transcripts.append("is anyone there")
        await mic.push(speak("is anyone there", SAMPLE_RATE), SAMPLE_RATE)
        async with asyncio.timeout(30):
            await job.oai.wait_for_requests(1)
        assert last_user_text(job.oai.requests[0].body) == "is anyone there"


async def test_a_screen_share_is_what_the_agent_sees() -> None:
    async with running_job(metadata=json.dumps({"participant": "presenter"})) as job:
        presenter = job.room.add_participant("presenter")
        mic = presenter.publish_microphone()
        screen = presenter.publish_screen_share(width=CAMERA_SIZE[0], height=CAMERA_SIZE[1])

        async def share() -> None:
            shade = 0
            while True:
                screen.capture_frame(camera_frame(*CAMERA_SIZE, shade))
                shade += 1
                await asyncio.sleep(0.1)

        sharing = asyncio.create_task(share(), name="test:screen")
        try:
            await asyncio.sleep(0.5)  # a few frames before the question
            job.dg.transcripts.append("what is on my screen")
            await mic.push(speak("what is on my screen", SAMPLE_RATE), SAMPLE_RATE)
            async with asyncio.timeout(30):
                await job.oai.wait_for_requests(1)
        finally:
            sharing.cancel()
            await asyncio.gather(sharing, return_exceptions=True)
        last = [m for m in job.oai.requests[0].body["messages"] if m["role"] == "user"][-1]
        kinds = [p["type"] for p in last["content"]]
        assert kinds.count("image_url") == 1, kinds
        assert last["content"][kinds.index("image_url")]["image_url"]["url"].startswith(
            "data:image/jpeg;base64,"
        )
