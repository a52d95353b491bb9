"""The framework's ``llm.FallbackAdapter``, closed properly.

``FallbackAdapter`` (0.12.21) moves a request to the next LLM when one fails before its first
chunk, marks the failed one unavailable and probes it in the background until it answers
again. Two gaps: its ``aclose()`` is the base class's no-op, so the wrapped LLMs (and their HTTP
clients) are never closed, and the background probes are tasks nobody owns. This subclass
closes both; the one private member it reaches is isolated in :func:`recovery_tasks`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from livekit.agents import llm, utils


class ClosingFallbackAdapter(llm.FallbackAdapter):
    """A FallbackAdapter that owns its LLMs: ``aclose()`` stops the probes and closes them."""

    def __init__(
        self,
        llms: Sequence[llm.LLM],
        *,
        attempt_timeout: float = 10.0,
        max_retry_per_llm: int = 1,
        retry_interval: float = 0.5,
    ) -> None:
        super().__init__(
            list(llms),
            attempt_timeout=attempt_timeout,
            max_retry_per_llm=max_retry_per_llm,
            retry_interval=retry_interval,
        )
        self._llms = list(llms)

    @property
    def llms(self) -> list[llm.LLM]:
        return list(self._llms)

    async def aclose(self) -> None:
        await utils.aio.gracefully_cancel(*recovery_tasks(self))
        for inner in self._llms:
            await inner.aclose()


def recovery_tasks(adapter: llm.FallbackAdapter) -> list[asyncio.Task[None]]:
    """The background probes of failed LLMs that are still running (private in 0.12.21:
    ``_status[i].recovering_task``; tested in test_faults_llm)."""
    return [
        s.recovering_task
        for s in adapter._status
        if s.recovering_task is not None and not s.recovering_task.done()
    ]
