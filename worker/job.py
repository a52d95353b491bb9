"""One job: join the room, pick the participant, hold the conversation, close everything."""

from __future__ import annotations

import json
import logging

import aiohttp
from livekit.agents import AutoSubscribe, JobContext
from livekit.agents import vad as agents_vad
from livekit.protocol import agent as agent_proto

from worker.config import Settings
from worker.pipeline.adapter import close_before_disconnect
from worker.session import SessionParts, build_session

logger = logging.getLogger("worker.job")


def requested_identity(job: agent_proto.Job) -> str | None:
    """The participant this job is for: the publisher of a participant job, or
    ``{"participant": "<identity>"}`` in the dispatch metadata; None means the first to join."""
    if job.HasField("participant") and job.participant.identity:
        return str(job.participant.identity)
    if not job.metadata:
        return None
    try:
        metadata = json.loads(job.metadata)
    except json.JSONDecodeError:
        logger.warning("job metadata is not JSON; ignoring it", extra={"job_id": job.id})
        return None
    identity = metadata.get("participant") if isinstance(metadata, dict) else None
    return identity if isinstance(identity, str) and identity else None


async def run_session(
    ctx: JobContext,
    settings: Settings,
    *,
    vad: agents_vad.VAD,
    http_session: aiohttp.ClientSession | None = None,
) -> None:
    """``http_session`` (owned by the session) is needed outside a job process, whose own
    HTTP context the providers use otherwise."""
    await ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_ALL)
    participant = await ctx.wait_for_participant(identity=requested_identity(ctx.job))
    logger.info("talking with participant", extra={"identity": participant.identity})
    parts: SessionParts = build_session(
        ctx.room, participant.identity, settings, vad=vad, http_session=http_session
    )

    async def close_session(reason: str) -> None:
        # A plain function: 0.12 counts a bound method's ``self`` as the reason argument
        # (``__code__.co_argcount``) and would call ``parts.aclose(reason)``, which raises.
        await parts.aclose()

    ctx.add_shutdown_callback(close_session)
    close_before_disconnect(ctx.room, parts.aclose)  # a job ended from outside (drain timeout)
    await parts.start()
    reason = await parts.conversation.wait_done()
    logger.info("conversation ended", extra={"reason": reason})
    await parts.aclose()  # while the room is connected, so the session metrics reach it
    ctx.shutdown(reason)
