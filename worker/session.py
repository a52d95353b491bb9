"""One conversation with one participant (placeholder until the conversation core lands)."""

from __future__ import annotations

from livekit.agents import JobContext
from livekit.agents import vad as agents_vad

from .config import Settings


async def run_session(ctx: JobContext, settings: Settings, *, vad: agents_vad.VAD) -> None:
    await ctx.connect()
