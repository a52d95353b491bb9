"""Tools every session has: the time, a fresh look at the camera, ending the call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from livekit.agents import llm

from worker.tools.runner import ToolResult, tool_options


class BuiltinTools(llm.FunctionContext):
    """Built-in tools; the session supplies what they act on."""

    def __init__(
        self,
        *,
        look: Callable[[], Awaitable[list[llm.ChatImage]]],
        end_call: Callable[[], None],
    ) -> None:
        self._look = look
        self._end_call = end_call
        super().__init__()

    @llm.ai_callable()
    async def current_time(
        self,
        timezone: Annotated[
            str, llm.TypeInfo(description="IANA time zone, e.g. Europe/Paris; default UTC")
        ] = "UTC",
    ) -> str:
        """Get the current date and time in a time zone."""
        try:
            # reads the zone file the first time: off the event loop
            zone = await asyncio.to_thread(ZoneInfo, timezone)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            # OSError: a directory ("Europe") or a name too long for the file system
            return f"unknown time zone {timezone[:64]!r}; use an IANA name like Europe/Paris"
        now = datetime.now(zone)
        return now.strftime(f"%A %d %B %Y, %H:%M ({timezone})")

    @llm.ai_callable()
    @tool_options(timeout=5.0)
    async def look_at_camera(self) -> ToolResult:
        """Look at the user's camera or screen right now, to answer about what they show."""
        images = await self._look()
        if not images:
            return ToolResult("No camera or screen share is available right now.")
        return ToolResult(f"Here is what the camera shows now ({len(images)} image).", images)

    @llm.ai_callable()
    async def end_call(self) -> str:
        """End the call when the user says goodbye or asks to hang up."""
        self._end_call()
        return "The call will end after your goodbye; say a short goodbye now."
