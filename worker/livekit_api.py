"""The LiveKit server API as the commands use it: explicit dispatch and participant tokens.

``dispatch`` and ``token`` (cli) and the browser client's token endpoint (web) share these, so a
token's grants are defined once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import timedelta

from worker.config import Settings


async def create_dispatch(settings: Settings, room: str, metadata: str) -> str:
    """Create an explicit dispatch of ``settings.agent_name`` into ``room``; return its id."""
    from livekit import api

    async with api.LiveKitAPI(
        settings.livekit_url,
        settings.livekit_api_key.reveal(),
        settings.livekit_api_secret.reveal(),
    ) as lkapi:
        dispatch = await lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=settings.agent_name, room=room, metadata=metadata
            )
        )
    return str(dispatch.id)


_TTL_RE = re.compile(r"^(\d+)\s*([smhd]?)$")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TTL = timedelta(hours=24)


def parse_ttl(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> timedelta; at most 24 h."""
    match = _TTL_RE.match(text.strip().lower())
    if not match:
        raise ValueError("must be a duration like 900, 15m, 2h or 1d")
    ttl = timedelta(seconds=int(match[1]) * _TTL_UNITS[match[2]])
    if not timedelta(0) < ttl <= MAX_TTL:
        raise ValueError("must be more than 0 and at most 24h")
    return ttl


def mint_token(
    settings: Settings,
    room: str,
    identity: str,
    ttl: timedelta,
    name: str = "",
    *,
    sources: Sequence[str] | None = None,
) -> str:
    """A participant token with the least privilege: join this one room, publish and subscribe.

    ``sources`` (track sources such as ``"microphone"``) limits what may be published; None
    allows every source. No room admin, recording, listing or metadata update is ever granted.
    """
    from livekit import api

    grants = api.VideoGrants(
        room_join=True,
        room=room,
        can_publish=True,
        can_subscribe=True,
        can_publish_data=True,
        can_publish_sources=list(sources) if sources is not None else None,
    )
    token = (
        api.AccessToken(settings.livekit_api_key.reveal(), settings.livekit_api_secret.reveal())
        .with_identity(identity)
        .with_name(name or identity)
        .with_grants(grants)
        .with_ttl(ttl)
    )
    return token.to_jwt()
