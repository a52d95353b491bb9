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
from urllib.parse import urlsplit, urlunsplit

from livekit.agents.metrics import LLMMetrics, STTMetrics, TTSMetrics
from livekit.agents.metrics.base import Error

from plugins.openai_llm.errors import ENDPOINT_NOTE


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


KEY_VARIABLES: dict[str, str] = {
    "STT": "DEEPGRAM_API_KEY",
    "TTS": "DEEPGRAM_API_KEY",
    "LLM": "OPENAI_API_KEY",
}
"""The setting to check when a provider of this kind refuses its key (HTTP 401/403)."""


def provider_name(label: str) -> str:
    """``livekit.plugins.deepgram.stt.STT`` -> ``deepgram``; ``plugins.openai_llm.LLM`` ->
    ``openai_llm``; anything else as it is."""
    parts = label.split(".")
    return parts[parts.index("plugins") + 1] if "plugins" in parts[:-1] else label


def describe_failure(
    kind: Literal["STT", "TTS", "LLM"], error: BaseException, *, label: str = "", endpoint: str = ""
) -> str:
    """One line for the console: which provider failed (``label``: the plugin's), at which
    endpoint (found in the error, else ``endpoint``: the configured one), with what status or
    error, and what to check, e.g. ``LLM (openai_llm) failed:
    HTTP 401 from http://host/v1/chat/completions: Incorrect API key provided (APIStatusError)
    (check OPENAI_API_KEY)``.

    Read from the error and its causes (the plugins raise the framework's errors from the HTTP
    client's, which know the request); URLs lose their query string and credentials, and the
    log redaction masks any secret value that still slips in."""
    status: int | None = None
    found: str | None = None
    for e in _causes(error):
        status = status or _status(e)
        found = found or _endpoint(e)
    where = found or (_clean_url(endpoint) if endpoint else None)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    parts = [f"{kind} ({provider_name(label)}) failed:" if label else f"{kind} failed:"]
    if status is not None:
        parts.append(f"HTTP {status}")
    if where is not None:
        parts.append(f"{'from' if status is not None else 'at'} {where}:")
    elif status is not None:
        parts[-1] += ":"
    parts.append(f"{message} ({type(error).__name__})")
    if status in (401, 403):
        parts.append(f"(check {KEY_VARIABLES[kind]})")
    return " ".join(parts)


def _causes(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 8:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _status(e: BaseException) -> int | None:
    for name in ("status_code", "status"):
        value = getattr(e, name, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def _endpoint(e: BaseException) -> str | None:
    for note in getattr(e, "__notes__", ()):  # our plugins' errors (the cause is lost)
        if isinstance(note, str) and note.startswith(ENDPOINT_NOTE):
            return _clean_url(note.removeprefix(ENDPOINT_NOTE))
    request = getattr(e, "request", None)  # openai / httpx errors
    url = getattr(request, "url", None)
    if url is None:
        info = getattr(e, "request_info", None)  # aiohttp response errors
        url = getattr(info, "real_url", None)
    if url is not None:
        return _clean_url(str(url))
    host, port = getattr(e, "host", None), getattr(e, "port", None)  # aiohttp connector errors
    if isinstance(host, str) and port is not None:
        return f"{host}:{port}"
    return None


def _clean_url(url: str) -> str:
    """Without user:password@, query and fragment (where keys would travel in a URL)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
