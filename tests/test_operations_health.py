"""The real worker (``python -m worker start``) as a supervised service, against the loopback
LiveKit server: the probes tell the truth through registration, a lost and regained server and
a drain; a job that cannot join its room is reported ``JS_FAILED`` with its error and counted;
a server lost for good ends the process with a non-zero status and one log line.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit.agents import Worker, WorkerOptions
from livekit.protocol import agent
from prometheus_client.parser import text_string_to_metric_families

from tests.loopback.livekit_server import LoopbackLiveKitServer
from tests.test_faults_process import assign, end_call, status_of
from tests.test_worker_protocol import (
    Keys,
    assert_no_secrets,
    free_port,
    is_job_started,
    run_worker,
    worker_env,
)
from worker.health import Heartbeat
from worker.pipeline import adapter

pytestmark = pytest.mark.timeout(240)


async def get(port: int, path: str) -> tuple[int, Any]:
    """GET on the worker, retrying while nothing listens yet; JSON bodies decoded."""
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    text = await resp.text()
                    try:
                        return resp.status, json.loads(text)
                    except ValueError:
                        return resp.status, text
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.1)


async def until(port: int, path: str, expected: tuple[int, Any]) -> None:
    while True:
        if await get(port, path) == expected:
            return
        await asyncio.sleep(0.2)


async def until_figure(port: int, name: str, value: float) -> None:
    while True:
        if (await figures(port)).get(name) == value:
            return
        await asyncio.sleep(0.2)


@pytest.fixture
def keys() -> Keys:
    return Keys(
        livekit_key=f"APIops{secrets.token_hex(6)}",
        livekit_secret=secrets.token_urlsafe(36),
        deepgram=f"dgops{secrets.token_hex(16)}",
        openai=f"sk-ops{secrets.token_hex(16)}",
    )


async def figures(port: int) -> dict[str, float]:
    status, text = await get(port, "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


NOT_READY = {
    reason: (503, {"ready": False, "reason": reason})
    for reason in ("starting", "disconnected", "draining", "full")
}
READY = (200, {"ready": True})


async def test_probes_follow_registration_loss_recovery_and_drain(
    keys: Keys, tmp_path: Path
) -> None:
    server = LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret)
    server_port = free_port()
    port, prom_port = free_port(), free_port()
    env = worker_env(server, keys, port)
    env.update(LIVEKIT_URL=f"ws://127.0.0.1:{server_port}", PROMETHEUS_PORT=str(prom_port))
    env["MAX_JOBS"] = "2"
    # Readiness here follows the registration and the drain; on a machine whose CPU is busy
    # with other work (a loaded CI runner) the default threshold would also make it `full`.
    env["LOAD_THRESHOLD"] = "off"
    async with run_worker(env, tmp_path, port) as worker:
        # no server yet: alive, not ready
        async with asyncio.timeout(60):
            assert await get(port, "/readyz") == NOT_READY["starting"]
        assert await get(port, "/healthz") == (200, {"alive": True})
        assert await get(port, "/") == (200, "OK")  # 0.12's answer stays

        await server.start(server_port)
        try:
            async with asyncio.timeout(60):
                conn = await server.wait_for_worker()
                await until(port, "/readyz", READY)

            # the server goes away: not ready within 10 s (the bound), alive all along
            await server.aclose()
            async with asyncio.timeout(10):
                await until(port, "/readyz", NOT_READY["disconnected"])
            assert await get(port, "/healthz") == (200, {"alive": True})

            # it comes back: the worker registers again and is ready again
            await server.start(server_port)
            async with asyncio.timeout(60):
                conn = (await server.wait_for_workers(2))[1]
                await until(port, "/readyz", READY)

            # a job whose room refuses the connection: JS_FAILED with the error, counted
            async with asyncio.timeout(90):
                await assign(conn, server, "AJ_doomed", "room-doomed")
                failed = await conn.wait_for(
                    "update_job",
                    lambda u: u.job_id == "AJ_doomed" and u.status != agent.JS_RUNNING,
                )
            assert failed.status == agent.JS_FAILED
            assert "ConnectError" in failed.error, failed.error
            # every line the job's process logged carries the job id and the room
            async with asyncio.timeout(30):
                logged = await worker.wait_for_log(
                    lambda r: str(r.get("message", "")).startswith("job failed")
                )
            job_lines = [r for r in worker.records if r.get("pid") == logged["pid"]]
            tagged = [r for r in job_lines if r.get("job_id") == "AJ_doomed"]
            assert {r.get("room") for r in tagged} == {"room-doomed"}
            assert len({r["name"] for r in tagged}) >= 2  # ours and the framework's
            async with asyncio.timeout(30):
                await until_figure(prom_port, "lk_agent_jobs_total{outcome=failed}", 1)

            # a call (its room connection held), then SIGTERM: draining until the call ends
            server.held_rooms.add("room-call")
            async with asyncio.timeout(60):
                call = await assign(conn, server, "AJ_call", "room-call")
                await worker.wait_for_log(is_job_started(call.id))
            now = await figures(prom_port)
            assert now["lk_agent_jobs_running"] == 1
            assert now["lk_agent_jobs_total{outcome=accepted}"] == 2
            assert now["lk_agent_jobs_total{outcome=completed}"] == 0

            worker.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await until(port, "/readyz", NOT_READY["draining"])
            await asyncio.sleep(1)  # still draining while the call runs
            assert await get(port, "/readyz") == NOT_READY["draining"]
            assert worker.proc.returncode is None
            assert status_of(conn, call.id) == [agent.JS_RUNNING]

            await end_call(server, "room-call")
            async with asyncio.timeout(90):
                assert await worker.wait_exit() == 0
        finally:
            await server.aclose()
    assert_no_secrets(worker.text(), keys)


async def test_a_server_lost_for_good_ends_the_worker_with_an_error(
    keys: Keys, tmp_path: Path
) -> None:
    server = LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret)
    port = free_port()
    env = worker_env(server, keys, port)
    env.update(LIVEKIT_URL=f"ws://127.0.0.1:{free_port()}", WORKER_MAX_RETRY="2")
    async with run_worker(env, tmp_path, port) as worker:
        async with asyncio.timeout(120):
            code = await worker.wait_exit()
    assert code != 0
    lost = [r for r in worker.records if "lost the LiveKit server" in str(r.get("message"))]
    assert len(lost) == 1, worker.text()[-2000:]
    assert lost[0]["level"] == "ERROR"
    assert "after 2 attempts" in lost[0]["error"]
    assert_no_secrets(worker.text(), keys)


def test_the_worker_internals_the_adapter_uses_are_there() -> None:
    """``health_app``, ``worker_connected``, ``report_job_failures`` and ``end_running_jobs``
    rely on these."""

    async def entry(_: Any) -> None:
        return None

    async def build() -> None:
        w = Worker(
            WorkerOptions(entrypoint_fnc=entry, ws_url="ws://x", api_key="k", api_secret="s"),
            devmode=False,
            loop=asyncio.get_running_loop(),
        )
        assert w._connecting is False  # set True per connection attempt, False once registered
        adapter.health_app(w).router.add_get("/probe-check", lambda _: None)  # type: ignore[arg-type, return-value]
        assert callable(w._update_job_status)
        assert callable(w._queue_msg)
        assert w._proc_pool.processes == []  # job executors, each with running_job and aclose()

    asyncio.run(build())


async def test_a_call_outliving_the_drain_timeout_is_ended_and_the_worker_exits(
    keys: Keys, tmp_path: Path
) -> None:
    async with LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret) as server:
        server.held_rooms.add("room-long")
        port = free_port()
        env = worker_env(server, keys, port)
        async with run_worker(env, tmp_path, port, ["--drain-timeout", "3"]) as worker:
            async with asyncio.timeout(60):
                conn = await server.wait_for_worker()
                call = await assign(conn, server, "AJ_long", "room-long")
                await worker.wait_for_log(is_job_started(call.id))
            async with asyncio.timeout(30):  # MAX_JOBS=1: no room for another call
                await until(port, "/readyz", NOT_READY["full"])
            worker.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await until(port, "/readyz", NOT_READY["draining"])
            # the call goes on past the timeout: the worker ends it and exits cleanly
            async with asyncio.timeout(90):
                expired = await worker.wait_for_log(
                    lambda r: (
                        r.get("message") == "drain timeout expired: ending the calls still running"
                    )
                )
                assert await worker.wait_exit() == 0
            assert expired["jobs"] == 1
            # the job went through its shutdown (the server hears it ended) before the exit
            assert status_of(conn, call.id)[0] == agent.JS_RUNNING
            assert status_of(conn, call.id)[-1] != agent.JS_RUNNING
    assert_no_secrets(worker.text(), keys)


async def test_liveness_fails_when_the_event_loop_was_blocked() -> None:
    heartbeat = Heartbeat(late_after=1.0)
    heartbeat.start()
    try:
        await asyncio.sleep(0.1)
        assert heartbeat.late() is None
        time.sleep(1.5)  # noqa: ASYNC251 - on purpose: the loop is stuck, no heartbeat meanwhile
        late = heartbeat.late()
        assert late is not None
        assert late >= 1.5
        await asyncio.sleep(0.3)  # the loop runs again: so does the heartbeat
        assert heartbeat.late() is None
    finally:
        await heartbeat.aclose()
    assert heartbeat.late() is not None  # a stopped heartbeat is never alive


async def test_a_busy_prometheus_port_is_a_usage_error(keys: Keys, tmp_path: Path) -> None:
    server = LoopbackLiveKitServer(keys.livekit_key, keys.livekit_secret)
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        env = worker_env(server, keys, port)
        env.update(LIVEKIT_URL=f"ws://127.0.0.1:{free_port()}")
        env["PROMETHEUS_PORT"] = str(busy.getsockname()[1])
        async with run_worker(env, tmp_path, port) as worker:
            async with asyncio.timeout(60):
                assert await worker.wait_exit() == 2
    assert f"error: PROMETHEUS_PORT: cannot listen on {env['PROMETHEUS_PORT']}" in worker.text()
    assert "Traceback" not in worker.text()
