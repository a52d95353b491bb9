"""``python -m worker start``: the production worker, run as a supervised service.

The framework's ``start`` (``livekit.agents.cli``) builds the same ``Worker``; it is run here
instead so that a supervisor learns the truth: probes on the health port (``worker.health``),
Prometheus figures (``worker.metrics.prometheus``), jobs that failed reported as failed, a
non-zero exit status when the server is lost for good (the framework logs it and exits 0), and
a drain that ends the calls still running when its timeout expires, through their shutdown
path (session closed, metrics flushed), before the process exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from livekit.agents import Worker
from livekit.agents.cli.log import setup_logging

from worker.admission import Decision
from worker.config import Settings, usage_error
from worker.entrypoint import job_limiter, worker_options
from worker.health import Heartbeat, Readiness, add_probes
from worker.job_failures import JobFailures
from worker.logs import JobFields, tag_records
from worker.pipeline.adapter import (
    end_running_jobs,
    health_app,
    report_job_failures,
    worker_connected,
)

if TYPE_CHECKING:
    from worker.metrics.prometheus import WorkerFigures

logger = logging.getLogger("worker.service")

DRAIN_TIMEOUT = 600
"""Seconds a SIGTERM'd worker lets its calls run: LiveKit's Kubernetes guidance for voice agents
(terminationGracePeriodSeconds: 600). 0.12.21's own CLI default is 60 s, which cuts calls."""

EXIT_SERVER_LOST = 1
FINAL_STATUS_GRACE = 0.5
"""Seconds for the server connection to send the status of jobs ended at the drain timeout."""


@dataclass(frozen=True)
class StartOptions:
    log_level: str
    drain_timeout: int
    url: str | None
    api_key: str | None
    api_secret: str | None


def parse_start(argv: list[str]) -> StartOptions:
    parser = argparse.ArgumentParser(
        prog="python -m worker start",
        description="Run the worker in production mode (drains running calls on SIGTERM).",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
    )
    parser.add_argument("--url", help="LiveKit server URL (default: LIVEKIT_URL)")
    parser.add_argument("--api-key", help="API key (default: LIVEKIT_API_KEY)")
    parser.add_argument("--api-secret", help="API secret (default: LIVEKIT_API_SECRET)")
    parser.add_argument(
        "--drain-timeout",
        type=int,
        default=DRAIN_TIMEOUT,
        help=(
            "seconds running calls may go on after SIGTERM before they are ended "
            f"(default {DRAIN_TIMEOUT}, LiveKit's Kubernetes guidance for voice agents)"
        ),
    )
    args = parser.parse_args(argv)
    if args.drain_timeout < 0:
        parser.error("--drain-timeout: must be 0 or more")
    return StartOptions(
        log_level=args.log_level,
        drain_timeout=args.drain_timeout,
        url=args.url,
        api_key=args.api_key,
        api_secret=args.api_secret,
    )


def run_start(settings: Settings, options: StartOptions) -> None:
    """Run until SIGTERM (exit 0 after the drain) or until the server is lost for good (exit 1)."""
    setup_logging(options.log_level, devmode=False)  # the framework's JSON lines
    code = asyncio.run(_serve(settings, options))
    if code:
        raise SystemExit(code)


async def _serve(settings: Settings, options: StartOptions) -> int:
    loop = asyncio.get_running_loop()
    metrics_dir: tempfile.TemporaryDirectory[str] | None = None
    figures: WorkerFigures | None = None
    if settings.prometheus_port is not None:
        from worker.metrics.prometheus import WorkerFigures, enable_multiprocess

        metrics_dir = tempfile.TemporaryDirectory(prefix="lk-agent-metrics-")
        enable_multiprocess(Path(metrics_dir.name))  # before any job process is spawned
        figures = WorkerFigures(running=lambda: len(worker.active_jobs))

    def decided(decision: Decision) -> None:
        if figures is not None:
            figures.jobs.labels(decision).inc()

    limiter = job_limiter(settings, on_decision=decided)
    opts = worker_options(settings, limiter)
    opts.ws_url = options.url or opts.ws_url
    opts.api_key = options.api_key or opts.api_key
    opts.api_secret = options.api_secret or opts.api_secret
    worker = Worker(opts, devmode=False, loop=loop)

    def room_of(job_id: str) -> str | None:
        running = (j for j in worker.active_jobs if j.job.id == job_id)
        return next((j.job.room.name for j in running), None)

    tag_records(JobFields(room_of=room_of))  # the framework's lines about a job

    readiness = Readiness(connected=lambda: worker_connected(worker), full=lambda: limiter.full)
    worker.on("worker_registered", lambda *_: setattr(readiness, "registered", True))
    heartbeat = Heartbeat()
    add_probes(health_app(worker), readiness, heartbeat)

    failures = JobFailures()
    failures.install()

    def finished(job_id: str, failed: bool) -> None:
        if figures is not None:
            figures.jobs.labels("failed" if failed else "completed").inc()

    report_job_failures(worker, failures.pop, finished)

    metrics_runner: web.AppRunner | None = None
    if figures is not None and settings.prometheus_port is not None:
        from worker.metrics.prometheus import exposition_registry, metrics_app

        metrics_runner = web.AppRunner(
            metrics_app(exposition_registry([figures.collector()])), handle_signals=False
        )
        await metrics_runner.setup()
        try:
            await web.TCPSite(metrics_runner, opts.host or None, settings.prometheus_port).start()
        except OSError as e:
            await metrics_runner.cleanup()
            if metrics_dir is not None:
                metrics_dir.cleanup()
            usage_error([f"PROMETHEUS_PORT: cannot listen on {settings.prometheus_port}: {e}"])

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    heartbeat.start()
    run = asyncio.create_task(worker.run(), name="worker")
    stopping = asyncio.create_task(stop.wait(), name="stop-signal")
    code = 0
    try:
        await asyncio.wait({run, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if run.done():
            error = run.exception()
            code = EXIT_SERVER_LOST
            lost = isinstance(error, RuntimeError) and "failed to connect" in str(error)
            logger.error(
                "lost the LiveKit server for good, exiting" if lost else "worker failed, exiting",
                extra={"error": str(error) if error else "worker stopped", "url": opts.ws_url},
            )
        else:
            code = await _drain(worker, readiness, options.drain_timeout, stop)
    finally:
        stopping.cancel()
        await worker.aclose()  # ends the calls still running through their shutdown path
        if not run.done():
            run.cancel()
        await asyncio.gather(run, stopping, return_exceptions=True)
        await heartbeat.aclose()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        if metrics_dir is not None:
            metrics_dir.cleanup()
    return code


async def _drain(worker: Worker, readiness: Readiness, timeout: int, stop: asyncio.Event) -> int:
    readiness.draining = True
    stop.clear()
    forced = asyncio.create_task(stop.wait(), name="second-signal")
    drain = asyncio.create_task(worker.drain(timeout=timeout or None), name="drain")
    try:
        await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
        if forced.done():
            logger.warning("second stop signal while draining: exiting now")
            os._exit(1)  # as the framework does: its job processes die with the process group
        with contextlib.suppress(asyncio.TimeoutError):
            await drain
            return 0
        logger.warning(
            "drain timeout expired: ending the calls still running",
            extra={"drain_timeout": timeout, "jobs": len(worker.active_jobs)},
        )
        await end_running_jobs(worker)
        await asyncio.sleep(FINAL_STATUS_GRACE)  # the connection sends their final status
        return 0
    finally:
        forced.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await forced
