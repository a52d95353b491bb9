"""The real worker (``python -m worker start``) against a loopback LiveKit server.

The worker runs as a subprocess, exactly as in production (JSON logs, job processes spawned by
the framework's pool with our prewarm). The loopback server speaks the worker protocol with
the real protobufs, so these tests prove registration, job admission, assignment, job status
reports, the health endpoint, draining on SIGTERM, and that no secret reaches the output.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit.protocol import agent

from tests.loopback.livekit_server import LoopbackLiveKitServer, make_job
from tests.project_env import clean_environ

REPO = Path(__file__).resolve().parent.parent
AGENT_NAME = "loopback-tester"

pytestmark = pytest.mark.timeout(400)
JOB_START = 150
"""Seconds a job may take to start: a prewarmed job process imports the framework and loads the
VAD, over a minute when the shared machine is saturated (a hang guard, not a speed claim)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Keys:
    livekit_key: str
    livekit_secret: str
    deepgram: str
    openai: str

    def all(self) -> list[str]:
        return [self.livekit_key, self.livekit_secret, self.deepgram, self.openai]


@pytest.fixture
def keys() -> Keys:
    """Fake credentials, random per test so a match in the output cannot be a coincidence."""
    return Keys(
        livekit_key=f"APIloop{secrets.token_hex(6)}",
        livekit_secret=secrets.token_urlsafe(36),  # >= 32 chars, as a real server requires
        deepgram=f"dg{secrets.token_hex(16)}",
        openai=f"sk-loop{secrets.token_hex(16)}",
    )


@pytest.fixture
async def server(keys: Keys) -> AsyncIterator[LoopbackLiveKitServer]:
    async with LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret) as srv:
        yield srv


@dataclass
class WorkerProcess:
    """``python -m worker start`` as a subprocess, with its output collected and parsed."""

    proc: asyncio.subprocess.Process
    health_port: int
    output: bytearray = field(default_factory=bytearray)
    records: list[dict[str, Any]] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _readers: list[asyncio.Task[None]] = field(default_factory=list)

    def start_reading(self) -> None:
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._readers = [
            asyncio.create_task(self._read(self.proc.stdout)),
            asyncio.create_task(self._read(self.proc.stderr)),
        ]

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            async with self._changed:
                self.output += line
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if isinstance(record, dict):
                        self.records.append(record)
                self._changed.notify_all()

    async def wait_for_log(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first JSON log record matching ``predicate`` (bound it with asyncio.timeout)."""
        async with self._changed:
            while True:
                for record in self.records:
                    if predicate(record):
                        return record
                if all(r.done() for r in self._readers):
                    raise AssertionError("worker output ended without the expected log line")
                await self._changed.wait()

    async def wait_exit(self) -> int:
        code = await self.proc.wait()
        await asyncio.gather(*self._readers)
        return code

    async def kill(self) -> None:
        """Last-resort cleanup: the worker and its job processes share our new session."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)

    def text(self) -> str:
        return self.output.decode("utf-8", errors="replace")


def worker_env(server: LoopbackLiveKitServer, keys: Keys, health_port: int) -> dict[str, str]:
    env = clean_environ()
    env.update(server.client_env())
    env.update(
        AGENT_NAME=AGENT_NAME,
        MAX_JOBS="1",
        WORKER_PORT=str(health_port),
        DEEPGRAM_API_KEY=keys.deepgram,
        OPENAI_API_KEY=keys.openai,
        PYTHONPATH=str(REPO),
        PYTHONUNBUFFERED="1",
    )
    return env


@contextlib.asynccontextmanager
async def run_worker(
    env: dict[str, str], cwd: Path, health_port: int, args: Sequence[str] = ()
) -> AsyncIterator[WorkerProcess]:
    # cwd is an empty directory, so no developer .env file is read.
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "worker",
        "start",
        *args,
        env=env,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    worker = WorkerProcess(proc=proc, health_port=health_port)
    worker.start_reading()
    try:
        yield worker
    finally:
        await worker.kill()


def assert_no_secrets(output: str, keys: Keys) -> None:
    leaked = [name for name, value in vars(keys).items() if value in output]
    assert not leaked, f"secret values in the worker output: {leaked}"


async def health(port: int) -> tuple[int, str]:
    """GET the worker's health endpoint, retrying while its HTTP server is still starting."""
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/") as resp:
                    return resp.status, await resp.text()
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)  # connection refused: not listening yet


def is_job_started(job_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda r: r.get("message") == "job started" and r.get("job_id") == job_id


async def test_worker_registers_takes_a_job_reports_and_drains(
    server: LoopbackLiveKitServer, keys: Keys, tmp_path: Path
) -> None:
    # Generous bounds: the machine is shared; nothing here asserts speed.
    # The job's room connection is held open without an answer, so the job runs (connecting,
    # ~20 s before the SDK gives up) while the steps below look at a worker with a running job.
    # (Refused at once, the job would end at once: a failed job frees its slot.)
    server.held_rooms.add("room-1")
    port = free_port()
    async with run_worker(worker_env(server, keys, port), tmp_path, port) as worker:
        # 1. Registration, authenticated with a JWT carrying the agent grant.
        async with asyncio.timeout(60):
            conn = await server.wait_for_worker()
        assert conn.claims["iss"] == keys.livekit_key
        assert conn.claims["video"]["agent"] is True
        assert conn.register.agent_name == AGENT_NAME
        assert conn.register.type == agent.JobType.JT_ROOM
        assert conn.register.allowed_permissions.agent is True
        assert server.rejected == []

        # 2. The health endpoint answers on WORKER_PORT.
        async with asyncio.timeout(30):
            assert await health(port) == (200, "OK")

        # 3. A job offer is accepted, assigned, and the job runs in a prewarmed process.
        job = make_job(
            "AJ_first", "room-1", AGENT_NAME, dispatch_id="AD_first", metadata='{"a": 1}'
        )
        async with asyncio.timeout(60):
            answer = await conn.request_job(job)
        assert answer.available is True
        assert answer.participant_identity == "agent-AJ_first"
        await conn.assign(job, server.agent_token(job, answer.participant_identity))

        async with asyncio.timeout(JOB_START):
            running = await conn.wait_for("update_job", lambda u: u.job_id == job.id)
            started = await worker.wait_for_log(is_job_started(job.id))
        assert running.status == agent.JobStatus.JS_RUNNING
        assert started["vad_prewarmed"] is True
        assert started["room"] == "room-1"
        assert started["agent_name"] == AGENT_NAME
        assert started["name"] == "worker.entrypoint"

        # 4. While that job runs, MAX_JOBS=1 makes the worker refuse a second offer...
        second = make_job("AJ_second", "room-2", AGENT_NAME, dispatch_id="AD_second")
        async with asyncio.timeout(30):
            refusal = await conn.request_job(second)
        assert refusal.available is False
        assert worker.proc.returncode is None
        # ...and report itself full (load 1.0, one job), so a server stops offering jobs.
        async with asyncio.timeout(30):
            full = await conn.wait_for(
                "update_worker", lambda u: u.job_count == 1 and u.load == 1.0
            )
        assert full.status == agent.WorkerStatus.WS_FULL
        assert not any(u.job_id == second.id for u in conn.of_kind("update_job"))

        # 5. SIGTERM drains: the worker stays up while its job runs...
        worker.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await worker.wait_for_log(lambda r: r.get("message") == "draining worker")
        before_end = len(conn.messages)
        assert worker.proc.returncode is None
        assert not conn.closed.is_set()
        # ...and exits cleanly once the server ends the job.
        await conn.terminate(job.id)
        async with asyncio.timeout(60):
            done = await conn.wait_for("update_job", lambda u: u.job_id == job.id, after=before_end)
            assert await worker.wait_exit() == 0
            await conn.closed.wait()
        assert done.status == agent.JobStatus.JS_SUCCESS

    statuses = [(u.job_id, u.status) for u in conn.of_kind("update_job")]
    assert statuses == [(job.id, agent.JobStatus.JS_RUNNING), (job.id, agent.JobStatus.JS_SUCCESS)]
    output = worker.text()
    assert output.strip(), "the worker logged nothing"
    assert_no_secrets(output, keys)


async def test_automatic_dispatch_registers_without_a_name_and_takes_a_room_job(
    server: LoopbackLiveKitServer, keys: Keys, tmp_path: Path
) -> None:
    """AGENT_NAME empty: the worker registers with no agent name, which LiveKit reads as
    "dispatch me to every new room", and accepts the unnamed job a new room brings."""
    server.held_rooms.add("new-room")  # the job stays in its room connection while we look
    port = free_port()
    env = worker_env(server, keys, port) | {"AGENT_NAME": ""}
    async with run_worker(env, tmp_path, port) as worker:
        async with asyncio.timeout(60):
            conn = await server.wait_for_worker()
        assert conn.register.agent_name == ""
        assert conn.register.type == agent.JobType.JT_ROOM

        job = make_job("AJ_auto", "new-room", "")
        async with asyncio.timeout(60):
            answer = await conn.request_job(job)
        assert answer.available is True
        await conn.assign(job, server.agent_token(job, answer.participant_identity))
        async with asyncio.timeout(JOB_START):
            started = await worker.wait_for_log(is_job_started(job.id))
            running = await conn.wait_for("update_job", lambda u: u.job_id == job.id)
        assert running.status == agent.JobStatus.JS_RUNNING
        assert (started["room"], started["agent_name"]) == ("new-room", "")
    assert_no_secrets(worker.text(), keys)


async def test_worker_with_a_wrong_secret_is_refused_and_does_not_leak_it(
    server: LoopbackLiveKitServer, keys: Keys, tmp_path: Path
) -> None:
    port = free_port()
    wrong_secret = secrets.token_urlsafe(36)
    env = worker_env(server, keys, port)
    env["LIVEKIT_API_SECRET"] = wrong_secret
    async with run_worker(env, tmp_path, port) as worker:
        # The framework retries (after 0 s, then 2 s, ...); wait for two refusals.
        async with asyncio.timeout(60):
            rejected = await server.wait_for_rejections(2)
            await worker.wait_for_log(
                lambda r: str(r.get("message", "")).startswith("failed to connect to livekit")
            )
        assert {path for path, _ in rejected} == {"/agent"}
        assert server.workers == []
        # Stopping a worker stuck in the framework's reconnect loop is the framework's business
        # (it sometimes outlives SIGTERM there); this test is about what it printed.
        worker.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await worker.wait_exit()
        await worker.kill()

    output = worker.text()
    assert wrong_secret not in output
    assert_no_secrets(output, keys)


# --- the loopback server itself: its checks are what make the tests above meaningful ---------


async def _connect(server: LoopbackLiveKitServer, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as http:
        try:
            async with http.ws_connect(f"{server.url}/agent", headers=headers) as ws:
                await ws.send_bytes(
                    agent.WorkerMessage(
                        register=agent.RegisterWorkerRequest(
                            type=agent.JobType.JT_ROOM, agent_name="x"
                        )
                    ).SerializeToString()
                )
                reply = agent.ServerMessage.FromString(await ws.receive_bytes(timeout=10))
                assert reply.register.worker_id
                return 101
        except aiohttp.WSServerHandshakeError as e:
            return e.status


def _token(keys: Keys, *, secret: str | None = None, video: dict[str, Any]) -> str:
    from livekit import api

    grants = api.VideoGrants(**video)
    return (
        api.AccessToken(keys.livekit_key, secret or keys.livekit_secret)
        .with_grants(grants)
        .to_jwt()
    )


async def test_loopback_server_checks_the_worker_token(
    server: LoopbackLiveKitServer, keys: Keys
) -> None:
    assert await _connect(server, None) == 401
    assert await _connect(server, "not-a-jwt") == 401
    forged = _token(keys, secret=secrets.token_urlsafe(36), video={"agent": True})
    assert await _connect(server, forged) == 401
    no_grant = _token(keys, video={"room_admin": True, "room": "r"})
    assert await _connect(server, no_grant) == 401
    assert len(server.rejected) == 4
    assert await _connect(server, _token(keys, video={"agent": True})) == 101
    assert len(server.workers) == 1
