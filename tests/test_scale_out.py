"""Scale-out is the LiveKit server's job: a pool of workers registers with it, and it offers each
new job to a worker that reports itself available. Shown with two real workers
(``python -m worker start`` subprocesses) on one loopback ``/agent`` server: both register,
both report load and status, a worker at MAX_JOBS reports itself full and refuses more, and a
draining worker takes no new job while the other does.

The second worker gets its server and keys only from ``--url/--api-key/--api-secret`` (LiveKit
CLI style): its job process, spawned later, must see them too, and they must never be printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from livekit.protocol import agent

from tests.loopback.livekit_server import LoopbackLiveKitServer, WorkerConnection, make_job
from tests.test_worker_protocol import (
    AGENT_NAME,
    Keys,
    WorkerProcess,
    assert_no_secrets,
    free_port,
    is_job_started,
    worker_env,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def keys() -> Keys:
    return Keys(
        livekit_key=f"APIpool{secrets.token_hex(6)}",
        livekit_secret=secrets.token_urlsafe(36),
        deepgram=f"dg{secrets.token_hex(16)}",
        openai=f"sk-pool{secrets.token_hex(16)}",
    )


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[LoopbackLiveKitServer]:
    async with LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret) as srv:
        yield srv


@pytest.fixture
def workdirs(tmp_path: Path) -> tuple[Path, Path]:
    """An empty working directory per worker: no .env file is read."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    return a, b


@contextlib.asynccontextmanager
async def start_worker(
    env: dict[str, str], cwd: Path, health_port: int, args: list[str]
) -> AsyncIterator[WorkerProcess]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker", "start", *args,
        env=env, cwd=cwd,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )  # fmt: skip
    worker = WorkerProcess(proc=proc, health_port=health_port)
    worker.start_reading()
    try:
        yield worker
    finally:
        await worker.kill()


def is_warm(record: dict[str, Any]) -> bool:
    return record.get("message") == "job process initialized"


async def connection_of(worker: WorkerProcess, conns: list[WorkerConnection]) -> WorkerConnection:
    """The server-side connection of ``worker`` (its log names the id the server gave it)."""
    registered = await worker.wait_for_log(lambda r: r.get("message") == "registered worker")
    (conn,) = [c for c in conns if c.worker_id == registered["id"]]
    return conn


async def run_job(
    srv: LoopbackLiveKitServer, conn: WorkerConnection, worker: WorkerProcess, job: agent.Job
) -> None:
    """Offer, assign, and wait until the job runs in the worker's prewarmed job process."""
    answer = await conn.request_job(job)
    assert answer.available is True, job.id
    await conn.assign(job, srv.agent_token(job, answer.participant_identity))
    running = await conn.wait_for("update_job", lambda u: u.job_id == job.id)
    assert running.status == agent.JobStatus.JS_RUNNING
    started = await worker.wait_for_log(is_job_started(job.id))
    # Prewarm loaded the settings, LIVEKIT_* included, in the job process.
    assert started["vad_prewarmed"] is True


async def test_two_workers_share_the_jobs_by_reported_load_and_status(
    server: LoopbackLiveKitServer, keys: Keys, workdirs: tuple[Path, Path]
) -> None:
    for room in ("room-1", "room-2", "room-3"):
        server.held_rooms.add(room)  # each job stays in its call until the server ends it
    port_a, port_b = free_port(), free_port()
    env_a = {**worker_env(server, keys, port_a), "MAX_JOBS": "2"}
    env_b = worker_env(server, keys, port_b)  # MAX_JOBS=1
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        del env_b[name]
    flags = [
        "--url",
        server.url,
        "--api-key",
        keys.livekit_key,
        "--api-secret",
        keys.livekit_secret,
    ]
    async with contextlib.AsyncExitStack() as stack:
        # One after the other, and each with a warm job process before it gets a job: the
        # waits below then bound one worker's start-up at a time, not six prewarms at once.
        worker_a = await stack.enter_async_context(start_worker(env_a, workdirs[0], port_a, []))
        async with asyncio.timeout(120):
            (first,) = await server.wait_for_workers(1)
            await worker_a.wait_for_log(is_warm)
        worker_b = await stack.enter_async_context(start_worker(env_b, workdirs[1], port_b, flags))
        # 1. Both register with the one server, as one pool (same agent name).
        async with asyncio.timeout(120):
            conns = await server.wait_for_workers(2)
            a = await connection_of(worker_a, conns)
            b = await connection_of(worker_b, conns)
            await worker_b.wait_for_log(is_warm)
        assert a is first
        assert a.register.agent_name == b.register.agent_name == AGENT_NAME
        assert b.claims["iss"] == keys.livekit_key  # from --api-key, signed with --api-secret

        # 2. Each reports its load and status (the server's basis for choosing one); idle, the
        # load is the CPU's, never the job limit's 1.0.
        async with asyncio.timeout(30):
            for conn in (a, b):
                idle = await conn.wait_for("update_worker", lambda u: u.job_count == 0)
                assert 0.0 <= idle.load < 1.0

        # 3. B at MAX_JOBS=1: reports itself full (load 1.0, WS_FULL) and refuses another job.
        job1 = make_job("AJ_1", "room-1", AGENT_NAME, dispatch_id="AD_1")
        async with asyncio.timeout(60):
            await run_job(server, b, worker_b, job1)
            full = await b.wait_for("update_worker", lambda u: u.job_count == 1)
        assert (full.status, full.load) == (agent.WorkerStatus.WS_FULL, 1.0)
        job2 = make_job("AJ_2", "room-2", AGENT_NAME, dispatch_id="AD_2")
        async with asyncio.timeout(30):
            assert (await b.request_job(job2)).available is False

        # ...while A, with room for two, takes it.
        async with asyncio.timeout(60):
            await run_job(server, a, worker_a, job2)
            await a.wait_for("update_worker", lambda u: u.job_count == 1)

        # 4. B's call ends: it reports room again.
        before = len(b.messages)
        await b.terminate(job1.id)
        async with asyncio.timeout(60):
            await b.wait_for("update_worker", lambda u: u.job_count == 0, after=before)

        # 5. A drains (SIGTERM, as in a rollout): it reports itself full and refuses a new job
        # although it has room for one more; B takes that job.
        before = len(a.messages)
        worker_a.proc.send_signal(signal.SIGTERM)
        job3 = make_job("AJ_3", "room-3", AGENT_NAME, dispatch_id="AD_3")
        async with asyncio.timeout(30):
            await worker_a.wait_for_log(lambda r: r.get("message") == "draining worker")
            draining = await a.wait_for("update_worker", lambda _: True, after=before)
            assert draining.status == agent.WorkerStatus.WS_FULL
            assert (await a.request_job(job3)).available is False
        async with asyncio.timeout(60):
            await run_job(server, b, worker_b, job3)
        assert worker_a.proc.returncode is None  # still draining: its call goes on

        # 6. A's call ends: A exits cleanly; it never reported job3.
        await a.terminate(job2.id)
        async with asyncio.timeout(60):
            assert await worker_a.wait_exit() == 0
        assert not any(u.job_id == job3.id for u in a.of_kind("update_job"))

    for worker in (worker_a, worker_b):
        assert_no_secrets(worker.text(), keys)
