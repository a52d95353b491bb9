"""The functions the framework runs: prewarm, request_fnc/load_fnc, entrypoint. Wiring only.

They live here, not in ``__main__``, because job processes are spawned and import them by
module path (``worker.__main__`` is not importable as such in a child process).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import replace

from livekit.agents import JobContext, JobProcess, WorkerOptions

from worker.admission import AdmissionOptions, Decision, JobLimiter
from worker.config import Need, Settings, load_settings
from worker.job import run_session
from worker.job_failures import FAILURE_FIELD, describe
from worker.logs import JobFields, tag_records
from worker.metrics import MULTIPROC_ENV
from worker.providers.selection import load_vad, prewarm_providers
from worker.redaction import install_log_redaction

logger = logging.getLogger("worker.entrypoint")

WORKER_NEEDS = (Need.LIVEKIT_SERVER, Need.CLOUD_PROVIDERS, Need.PROVIDER_PACKAGES)

LAZY_MODULES = ("httpcore2", "openai.resources.chat.chat", "anyio._backends._asyncio")
"""Modules the openai SDK imports on first use: its HTTP transport when the job builds the LLM
client, its chat resource (``openai.resources.chat`` only names it: the package imports
``chat.chat`` and the completions resource on first access) on the first request. Imported at
the first reply they would stall the job's event loop on the voice path (tests/test_prewarm.py
checks that a first request imports nothing more). Missing names are skipped."""


PREWARM_TIMEOUT = 60.0
"""Seconds a job process may take to start and prewarm. The framework's 10 s kills a process
that a busy machine made slow, then starts another from zero; all of a worker's idle
processes prewarm at once at start-up, which is when the machine is busiest."""


def import_lazy_modules() -> None:
    for name in LAZY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process, before any job: load the VAD model so a job starts fast."""
    settings = load_settings(needs=WORKER_NEEDS)
    install_log_redaction(settings.secrets())
    proc.userdata["settings"] = settings
    proc.userdata["vad"] = load_vad(settings.vad_provider, settings.turn_detector)
    prewarm_providers(settings)
    import_lazy_modules()
    if os.environ.get(MULTIPROC_ENV):  # `start` exports figures: they exist (at 0) from now
        from worker.metrics.prometheus import job_figures

        job_figures()
    # What is loaded now lives as long as the process: keep it out of the cyclic collector's
    # full passes (each one walks every object and stalls the event loop, at random moments of
    # a call). Objects the job creates are collected as usual.
    gc.collect()
    gc.freeze()


async def entrypoint(ctx: JobContext) -> None:
    settings = ctx.proc.userdata.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings(needs=WORKER_NEEDS)
        install_log_redaction(settings.secrets())
    vad = ctx.proc.userdata.get("vad")
    tag_records(JobFields(job_id=ctx.job.id, room=ctx.job.room.name))  # one job per process
    logger.info(
        "job started",
        extra={
            "job_id": ctx.job.id,
            "room": ctx.job.room.name,
            "agent_name": ctx.job.agent_name,
            "vad_prewarmed": vad is not None,
        },
    )
    try:
        if vad is None:
            vad = load_vad(settings.vad_provider, settings.turn_detector)
        await run_session(ctx, settings, vad=vad)
    except Exception as e:
        # 0.12 keeps a job whose entrypoint raised alive, holding one of the worker's job
        # slots, until something shuts it down (the room never connected, so nothing will):
        # end it now. The job process then exits and its slot is free again.
        logger.exception(
            "job failed",
            extra={
                "job_id": ctx.job.id,
                "room": ctx.job.room.name,
                "error": type(e).__name__,
                FAILURE_FIELD: describe(e),  # reported to the server by the main process
            },
        )
        ctx.shutdown(reason=f"error: {type(e).__name__}")


def worker_options(settings: Settings, limiter: JobLimiter | None = None) -> WorkerOptions:
    """The framework's options for this worker; ``limiter`` decides admission (one is made from
    the settings if not given)."""
    if limiter is None:
        limiter = job_limiter(settings)
    options = WorkerOptions(
        entrypoint_fnc=entrypoint,
        prewarm_fnc=prewarm,
        request_fnc=limiter.request,
        load_fnc=limiter.load,
        agent_name=settings.agent_name,
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key.reveal(),
        api_secret=settings.livekit_api_secret.reveal(),
        port=settings.worker_port,
        max_retry=settings.worker_max_retry,
        initialize_process_timeout=PREWARM_TIMEOUT,
    )
    if settings.load_threshold is not None:
        options = replace(options, load_threshold=limiter.framework_threshold)
    return options


def job_limiter(
    settings: Settings, on_decision: Callable[[Decision], None] | None = None
) -> JobLimiter:
    return JobLimiter(
        AdmissionOptions(
            max_jobs=settings.max_jobs,
            agent_identity=settings.agent_identity,
            load_threshold=(
                AdmissionOptions.load_threshold
                if settings.load_threshold is None
                else settings.load_threshold
            ),
        ),
        on_decision,
    )
