"""The functions the framework runs: prewarm, request_fnc/load_fnc, entrypoint. Wiring only.

They live here, not in ``__main__``, because job processes are spawned and import them by
module path (``worker.__main__`` is not importable as such in a child process).
"""

from __future__ import annotations

import logging

from livekit.agents import JobContext, JobProcess, WorkerOptions

from .admission import AdmissionOptions, JobLimiter
from .config import Need, Settings, load_settings
from .providers import load_vad, prewarm_providers
from .redaction import install_log_redaction
from .session import run_session

logger = logging.getLogger("worker.entrypoint")

WORKER_NEEDS = (Need.LIVEKIT_SERVER, Need.CLOUD_PROVIDERS)


def prewarm(proc: JobProcess) -> None:
    """Runs once per job process, before any job: load the VAD model so a job starts fast."""
    settings = load_settings(needs=WORKER_NEEDS)
    install_log_redaction(settings.secrets())
    proc.userdata["settings"] = settings
    proc.userdata["vad"] = load_vad()
    prewarm_providers(settings)


async def entrypoint(ctx: JobContext) -> None:
    settings = ctx.proc.userdata.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings(needs=WORKER_NEEDS)
        install_log_redaction(settings.secrets())
    vad = ctx.proc.userdata.get("vad")
    logger.info(
        "job started",
        extra={
            "job_id": ctx.job.id,
            "room": ctx.job.room.name,
            "agent_name": ctx.job.agent_name,
            "vad_prewarmed": vad is not None,
        },
    )
    await run_session(ctx, settings, vad=vad if vad is not None else load_vad())


def worker_options(settings: Settings) -> WorkerOptions:
    limiter = JobLimiter(
        AdmissionOptions(max_jobs=settings.max_jobs, agent_identity=settings.agent_identity)
    )
    return WorkerOptions(
        entrypoint_fnc=entrypoint,
        prewarm_fnc=prewarm,
        request_fnc=limiter.request,
        load_fnc=limiter.load,
        agent_name=settings.agent_name,
        ws_url=settings.livekit_url,
        api_key=settings.livekit_api_key.reveal(),
        api_secret=settings.livekit_api_secret.reveal(),
        port=settings.worker_port,
    )
