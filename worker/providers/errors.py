"""Provider failures as metrics: the framework's ``metrics.Error`` with what went wrong.

The 0.12 metric dataclasses (STTMetrics, LLMMetrics, TTSMetrics) carry an ``error`` field that
the framework itself never fills. The project's wrappers emit a metric with a
:class:`ProviderError` there when a provider failed, so the failure travels the ordinary metrics
path (the pipeline tags it with the reply's ``sequence_id``) to the room.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

from livekit.agents.metrics import LLMMetrics, STTMetrics, TTSMetrics
from livekit.agents.metrics.base import Error


@dataclass
class ProviderError(Error):
    reason: str
    """Short and secret-free: the exception's class name, e.g. ``APIConnectionError``."""
    recovered: bool
    """True if the component carried on (reconnected, retried); False if it gave up."""


def error_name(error: object) -> str | None:
    """What a metric's ``error`` field says on the wire (None: no error)."""
    if error is None:
        return None
    if isinstance(error, ProviderError):
        return error.reason
    return type(error).__name__


def failure_metric(
    kind: Literal["stt", "tts", "llm"], *, label: str, error: BaseException, recovered: bool
) -> STTMetrics | TTSMetrics | LLMMetrics:
    """The metric a wrapper emits for one failure of its provider: no usage, the ``error``."""
    failure = ProviderError(reason=type(error).__name__, recovered=recovered)
    now = time.time()
    if kind == "stt":
        return STTMetrics(
            request_id="",
            timestamp=now,
            duration=0.0,
            label=label,
            audio_duration=0.0,
            streamed=True,
            error=failure,
        )
    if kind == "tts":
        return TTSMetrics(
            request_id="",
            timestamp=now,
            ttfb=-1.0,
            duration=0.0,
            audio_duration=0.0,
            cancelled=False,
            characters_count=0,
            label=label,
            streamed=True,
            error=failure,
        )
    return LLMMetrics(
        request_id="",
        timestamp=now,
        ttft=-1.0,
        duration=0.0,
        label=label,
        cancelled=False,
        completion_tokens=0,
        prompt_tokens=0,
        total_tokens=0,
        tokens_per_second=0.0,
        error=failure,
    )
