"""Provider failures as metrics: the framework's ``metrics.Error`` with what went wrong.

The 0.12 metric dataclasses (STTMetrics, LLMMetrics, TTSMetrics) carry an ``error`` field that
the framework itself never fills. The project's wrappers emit a metric with a
:class:`ProviderError` there when a provider failed, so the failure travels the ordinary metrics
path (the pipeline tags it with the reply's ``sequence_id``) to the room.
"""

from __future__ import annotations

from dataclasses import dataclass

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
