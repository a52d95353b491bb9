"""Prometheus figures of the worker, aggregated over its job processes.

Jobs run in their own processes, so the figures use prometheus_client's multiprocess mode: the
main process (``start``) picks a directory before any job process exists
(:func:`enable_multiprocess`, inherited by the spawned job processes through
``PROMETHEUS_MULTIPROC_DIR``); every process writes its counters and histograms to its own
memory-mapped files there, which outlive the process, so nothing is lost when a job ends.
``GET /metrics`` (:func:`metrics_app`) reads them all.

The job-side figures come from the same payloads the room gets: :class:`PrometheusSink` is one
more sink of the session's metrics publisher (``worker.session.build_session``). Labels carry
outcomes, provider kinds and error classes only: never room names, identities or text.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.metrics import MULTIPROC_ENV

LATENCY_BUCKETS: tuple[float, ...] = (
    0.05,
    0.1,
    0.15,
    *(round(0.2 + 0.05 * i, 2) for i in range(37)),  # 0.2 .. 2.0 in 50 ms steps
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    20.0,
    30.0,
)
"""Latency buckets: 50 ms resolution where voice latency lives (0.2-2 s), coarse beyond."""

SLOW_VAD_INFERENCE = 0.032
"""Seconds: one Silero window (512 samples at 16 kHz). An inference slower than the audio it
covers makes the VAD fall behind the call."""

TURN_OUTCOMES = ("answered", "interrupted", "apologised", "cut_short")
JOB_OUTCOMES = ("accepted", "rejected", "failed", "completed")


def enable_multiprocess(directory: Path) -> None:
    """Make this process and the job processes it spawns later write their figures to
    ``directory`` (emptied first: figures of an earlier run must not count)."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    join_multiprocess()


def join_multiprocess() -> None:
    """In a job process: write figures to the directory the main process chose (if any), even
    if prometheus_client was imported before the variable was seen."""
    if os.environ.get(MULTIPROC_ENV):
        values.ValueClass = values.MultiProcessValue()


class JobFigures:
    """The families written by job processes (one instance per process: :func:`job_figures`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, buckets=LATENCY_BUCKETS, registry=registry)

        self.turns = Counter(
            "lk_agent_turns_total",
            "Agent replies by how they ended",
            ["outcome"],
            registry=registry,
        )
        self.turn_e2e = histogram(
            "lk_agent_turn_e2e_seconds", "User stopped speaking -> first agent audio frame"
        )
        self.end_of_utterance = histogram(
            "lk_agent_end_of_utterance_seconds", "End of speech -> the turn was decided"
        )
        self.llm_ttft = histogram("lk_agent_llm_ttft_seconds", "LLM request -> first token")
        self.tts_ttfb = histogram(
            "lk_agent_tts_ttfb_seconds", "First reply text handed to TTS -> first audio frame"
        )
        self.tool = histogram(
            "lk_agent_tool_seconds", "Wall time of a reply's tool rounds (concurrent calls)"
        )
        self.provider_errors = Counter(
            "lk_agent_provider_errors_total",
            "Provider failures (recovered or not) by provider and error class",
            ["provider", "kind"],
            registry=registry,
        )
        self.llm_tokens = Counter(
            "lk_agent_llm_tokens_total", "LLM tokens by kind", ["kind"], registry=registry
        )
        self.stt_audio = Counter(
            "lk_agent_stt_audio_seconds", "Seconds of audio sent to STT", registry=registry
        )
        self.tts_characters = Counter(
            "lk_agent_tts_characters", "Characters synthesized by TTS", registry=registry
        )
        self.vad_slow = Counter(
            "lk_agent_vad_slow_inferences",
            "VAD inferences in windows whose average inference was slower than real time",
            registry=registry,
        )
        for outcome in TURN_OUTCOMES:  # exported at 0 from the start: rates work from the first
            self.turns.labels(outcome)
        for kind in ("prompt", "completion"):
            self.llm_tokens.labels(kind)

    def observe(self, p: Mapping[str, Any]) -> None:
        """Count one metrics payload (docs/metrics.md)."""
        kind = p.get("type")
        if kind == "turn":
            self._turn(p)
        elif kind == "llm":
            self.llm_tokens.labels("prompt").inc(_number(p.get("prompt_tokens")))
            self.llm_tokens.labels("completion").inc(_number(p.get("completion_tokens")))
            self._error("llm", p.get("error"))
        elif kind == "stt":
            self.stt_audio.inc(_number(p.get("audio_duration")))
            self._error("stt", p.get("error"))
        elif kind == "tts":
            self.tts_characters.inc(_number(p.get("characters")))
            self._error("tts", p.get("error"))
        elif kind == "vad":
            average = _number(p.get("inference_duration_avg"))
            if average > SLOW_VAD_INFERENCE:
                self.vad_slow.inc(_number(p.get("inference_count")))

    def _turn(self, p: Mapping[str, Any]) -> None:
        outcome = p.get("outcome")
        self.turns.labels(outcome if outcome in TURN_OUTCOMES else "other").inc()
        for histogram, field in (
            (self.turn_e2e, "e2e_latency"),
            (self.end_of_utterance, "end_of_utterance_delay"),
            (self.llm_ttft, "llm_ttft"),
            (self.tts_ttfb, "tts_ttfb"),
        ):
            value = p.get(field)
            if isinstance(value, int | float):
                histogram.observe(value)
        if _number(p.get("tool_rounds")) > 0:
            self.tool.observe(_number(p.get("tool_time")))

    def _error(self, provider: str, error: object) -> None:
        if isinstance(error, str) and error:
            self.provider_errors.labels(provider, error[:64]).inc()


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


_figures: JobFigures | None = None


def job_figures() -> JobFigures:
    """This process's job figures, created on first use (after :func:`join_multiprocess`)."""
    global _figures
    if _figures is None:
        join_multiprocess()
        _figures = JobFigures()
    return _figures


class PrometheusSink:
    """A metrics sink (``worker.metrics.publisher.MetricsSink``) counting each payload."""

    name = "prometheus"

    def __init__(self, figures: JobFigures | None = None) -> None:
        self._figures = figures if figures is not None else job_figures()

    async def send(self, topic: str, data: bytes) -> None:
        payload = json.loads(data)
        if isinstance(payload, dict):
            self._figures.observe(payload)

    async def aclose(self) -> None:
        return None


class WorkerFigures:
    """The families of the main process: job admission and outcomes, and running jobs."""

    def __init__(self, running: Callable[[], int]) -> None:
        self.jobs = Counter("lk_agent_jobs_total", "Jobs by outcome", ["outcome"], registry=None)
        for outcome in JOB_OUTCOMES:
            self.jobs.labels(outcome)  # every outcome exported from the start, at 0
        self._running = running

    def collector(self) -> Collector:
        running = self._running

        class Running(Collector):
            def collect(self) -> Iterable[Metric]:
                yield GaugeMetricFamily(
                    "lk_agent_jobs_running", "Jobs running in this worker", value=running()
                )

        return Running()


def exposition_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """Everything every process of this worker wrote, plus ``extra`` live collectors."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=os.environ[MULTIPROC_ENV])
    for collector in extra:
        registry.register(collector)
    return registry


def metrics_app(registry: CollectorRegistry) -> web.Application:
    """``GET /metrics`` in the Prometheus text format (reading the files off the event loop)."""

    async def metrics(_: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    return app
