"""An LLM that moves a request to the next LLM when one fails: the framework's
``llm.FallbackAdapter``, owning its LLMs.

``FallbackAdapter`` (0.12.21) moves a request to the next LLM when one fails before its first
chunk, marks the failed one unavailable and probes it in the background until it answers
again. Its ``aclose()`` is the base class's no-op, so the wrapped LLMs (and their HTTP clients)
would never be closed and the background probes would be tasks nobody owns: this class closes
both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from livekit.agents import llm, utils

from worker.pipeline.adapter import fallback_recovery_tasks


@dataclass(frozen=True)
class FallbackLLMOptions:
    attempt_timeout: float = 10.0
    """Seconds an LLM has to send its first chunk before the next one is asked."""
    max_retry_per_llm: int = 1
    retry_interval: float = 0.5


class FallbackLLM(llm.FallbackAdapter):
    """A FallbackAdapter that owns its LLMs: ``aclose()`` stops the probes and closes them.

    Its metrics are its own stream's (the framework's LLMStream measures whichever LLM
    answered), so the inner LLMs' are not forwarded."""

    def __init__(self, llms: Sequence[llm.LLM], options: FallbackLLMOptions | None = None) -> None:
        opts = options or FallbackLLMOptions()
        super().__init__(
            list(llms),
            attempt_timeout=opts.attempt_timeout,
            max_retry_per_llm=opts.max_retry_per_llm,
            retry_interval=opts.retry_interval,
        )
        self._llms = list(llms)

    async def aclose(self) -> None:
        await utils.aio.gracefully_cancel(*fallback_recovery_tasks(self))
        for inner in self._llms:
            await inner.aclose()
