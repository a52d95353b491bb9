"""Prometheus figures, scraped by a real Prometheus server (Debian's ``prometheus``).

A session runs turns through the loopback providers, with the figures in multiprocess mode as
under ``start``; a separate process (as a job process) adds a turn and exits. Prometheus scrapes
``GET /metrics`` and its HTTP API answers the turn count and a latency quantile that match the
``turn`` payloads the room got; the figures of the exited process are still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import re
import shutil
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, values

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply
from tests.test_worker_protocol import free_port
from worker.config import ConfigError, load_settings
from worker.entrypoint import job_limiter, worker_options
from worker.metrics import prometheus
from worker.metrics.prometheus import (
    LATENCY_BUCKETS,
    MULTIPROC_ENV,
    JobFigures,
    WorkerFigures,
    enable_multiprocess,
    exposition_registry,
    job_figures,
    metrics_app,
)

pytestmark = pytest.mark.timeout(180)

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def multiprocess(tmp_path: Path) -> Any:
    """Multiprocess mode in this process (as ``start`` sets it up), undone afterwards."""
    saved = values.ValueClass
    enable_multiprocess(tmp_path / "figures")
    yield tmp_path / "figures"
    os.environ.pop(MULTIPROC_ENV, None)
    values.ValueClass = saved
    prometheus._figures = None  # the next user of job_figures() starts afresh


@contextlib.asynccontextmanager
async def serve_metrics() -> AsyncIterator[int]:
    runner = web.AppRunner(metrics_app(exposition_registry()), handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield port
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def prometheus_server(target_port: int, work: Path) -> AsyncIterator[str]:
    config = work / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: agent\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target_port}']\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={work / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        await proc.wait()


async def query(api: str, expr: str) -> float | None:
    """One instant query; None while Prometheus has no answer (not up, not scraped yet)."""
    async with aiohttp.ClientSession() as http:
        try:
            async with http.get(f"{api}/api/v1/query", params={"query": expr}) as resp:
                body = await resp.json()
        except aiohttp.ClientConnectionError:
            return None
    result = body.get("data", {}).get("result", [])
    return float(result[0]["value"][1]) if result else None


async def until_equal(api: str, expr: str, expected: float) -> None:
    while True:
        if await query(api, expr) == expected:
            return
        await asyncio.sleep(0.5)


def job_process_turn() -> None:
    """Runs in another process, as a job process does: one interrupted turn, then exit."""
    job_figures().observe(
        {"v": 1, "type": "turn", "outcome": "interrupted", "interrupted": True, "e2e_latency": 0.9}
    )


async def test_prometheus_answers_turn_count_and_latency_quantile(
    multiprocess: Path, make_session: SessionFactory, tmp_path: Path
) -> None:
    h = await make_session(lambda body: Reply(text="Sure, here it is."))
    questions = ["what time is it", "and the weather", "thank you"]
    for n, question in enumerate(questions, 1):
        await h.utter(question)
        await h.wait_for_replies(n, timeout=30)

    def turns() -> list[dict[str, Any]]:
        return [
            d.json() for d in h.room.outbox.data_on("agent.metrics") if d.json()["type"] == "turn"
        ]

    await h.room.outbox.wait_for(lambda: len(turns()) >= len(questions))
    e2e = [t["e2e_latency"] for t in turns()]
    assert all(t["outcome"] == "answered" for t in turns())

    # another process records a turn and exits: its figures stay
    child = multiprocessing.get_context("spawn").Process(target=job_process_turn)
    child.start()
    await asyncio.to_thread(child.join, 60)
    assert child.exitcode == 0

    async with serve_metrics() as port, prometheus_server(port, tmp_path) as api:
        async with asyncio.timeout(90):
            await until_equal(api, 'sum(lk_agent_turns_total{outcome="answered"})', 3)
        assert await query(api, 'sum(lk_agent_turns_total{outcome="interrupted"})') == 1
        assert await query(api, "sum(lk_agent_turn_e2e_seconds_count)") == 4
        total = await query(api, "sum(lk_agent_turn_e2e_seconds_sum)")
        assert total == pytest.approx(sum(e2e) + 0.9, abs=1e-6)

        # the median from the buckets lies in the bucket of the true median (50 ms wide here)
        median = statistics.median_low([*e2e, 0.9])
        q = await query(
            api, "histogram_quantile(0.5, sum by (le) (lk_agent_turn_e2e_seconds_bucket))"
        )
        assert q is not None
        upper = min(b for b in LATENCY_BUCKETS if b >= median)
        lower = max((b for b in LATENCY_BUCKETS if b < median), default=0.0)
        assert lower <= q <= upper, (q, median, e2e)
        # usage counters fed by the same payloads
        assert (await query(api, 'sum(lk_agent_llm_tokens_total{kind="completion"})') or 0) > 0
        assert (await query(api, "sum(lk_agent_tts_characters_total)") or 0) > 0


DASHBOARD = (
    Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "voice-agent-dashboard.json"
)
CONTRACT = {
    "lk_agent_jobs_running",
    "lk_agent_jobs_total",
    "lk_agent_turns_total",
    "lk_agent_turn_e2e_seconds",
    "lk_agent_end_of_utterance_seconds",
    "lk_agent_llm_ttft_seconds",
    "lk_agent_tts_ttfb_seconds",
    "lk_agent_tool_seconds",
    "lk_agent_provider_errors_total",
    "lk_agent_llm_tokens_total",
    "lk_agent_stt_audio_seconds_total",
    "lk_agent_tts_characters_total",
    "lk_agent_vad_slow_inferences_total",
}


def exported_samples() -> set[str]:
    """Every sample name the worker exports (job families and the main process's)."""
    registry = CollectorRegistry()
    JobFigures(registry)
    worker = WorkerFigures(running=lambda: 0)
    families = [*registry.collect(), *worker.jobs.collect(), *worker.collector().collect()]
    counters = {f"{f.name}_total" for f in families if f.type == "counter"}
    return counters | {s.name for f in families for s in f.samples}


def test_the_contract_families_are_exported_and_the_dashboard_uses_only_those() -> None:
    samples = exported_samples()
    for family in CONTRACT:
        kind_suffixes = ("", "_bucket", "_count", "_sum")
        assert any(family + suffix in samples for suffix in kind_suffixes), family
    for bucket in (0.2, 0.25, 1.0, 1.95, 2.0):  # 50 ms resolution from 0.2 to 2 s
        assert bucket in LATENCY_BUCKETS
    dashboard = json.loads(DASHBOARD.read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"lk_agent_[a-z0-9_]+", target["expr"])
    }
    assert used
    assert used <= samples, used - samples
    assert {re.sub(r"_bucket$", "", n) for n in used} == CONTRACT  # every family is on it


def test_bad_operations_settings_are_reported_one_line_each() -> None:
    env = {
        "PROMETHEUS_PORT": "metrics",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
        "OTEL_INCLUDE_TEXT": "yes",
        "LOG_FORMAT": "xml",
        "WORKER_MAX_RETRY": "-1",
        "LOAD_THRESHOLD": "75%",
    }
    with pytest.raises(ConfigError) as e:
        load_settings(env, dotenv=None)
    assert sorted(p.split(":")[0] for p in e.value.problems) == sorted(env)
    ok = load_settings({"PROMETHEUS_PORT": "9464", "LOG_FORMAT": "JSON"}, dotenv=None)
    assert ok.prometheus_port == 9464
    assert ok.log_format == "json"
    assert load_settings({}, dotenv=None).prometheus_port is None
    for bad in ("0", "1.5", "nan", "inf"):
        with pytest.raises(ConfigError):
            load_settings({"LOAD_THRESHOLD": bad}, dotenv=None)


@pytest.mark.parametrize(("value", "threshold"), [(None, 0.75), ("0.9", 0.9), ("off", math.inf)])
def test_the_load_threshold_reaches_the_framework_and_the_readiness_probe(
    value: str | None, threshold: float
) -> None:
    """0.12 reports the worker full to the server at its threshold, and /readyz says ``full``
    from the same figure: the two must agree (unset: 0.12's own production threshold)."""
    settings = load_settings({} if value is None else {"LOAD_THRESHOLD": value}, dotenv=None)
    limiter = job_limiter(settings)
    assert limiter.options.load_threshold == threshold
    framework = worker_options(settings, limiter).load_threshold
    if value is None:  # 0.12 chooses: 0.75 under `start`, none under `dev`
        assert framework.prod_default == 0.75  # type: ignore[union-attr]
    else:  # off: the load reported is the share of MAX_JOBS running, full at 1
        assert framework == min(threshold, 1.0)
