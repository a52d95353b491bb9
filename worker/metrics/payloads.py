"""Metric objects -> the JSON payloads of the metrics protocol (schema v1), and their size bound.

The protocol is documented in docs/metrics.md. Every payload is a flat JSON object with
``v`` (schema version), ``type`` and ``ts`` (unix seconds); durations are seconds. The
framework marks "not measured" with -1 (``ttft``/``ttfb``); payloads carry ``null`` instead.

This module only converts; it keeps no connection to the room or the session. The VAD is the
one stateful case: its metrics come about once per second per stream, so
:class:`VadAggregator` folds them into one ``vad`` payload per window.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from livekit.agents.metrics import (
    AgentMetrics,
    LLMMetrics,
    PipelineEOUMetrics,
    STTMetrics,
    TTSMetrics,
    VADMetrics,
)

from worker.providers.errors import error_name

SCHEMA_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 15 * 1024
"""LiveKit's limit for one reliable data packet."""

Payload = dict[str, Any]

_TIME_DIGITS = 4  # 0.1 ms: more would be noise, fewer would hide small handoff delays
_TS_DIGITS = 3
_ELLIPSIS = "…"


def seconds(value: float | None) -> float | None:
    """A duration for the wire: rounded, and ``None`` for the framework's -1 / NaN / inf."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return round(value, _TIME_DIGITS)


def envelope(kind: str, ts: float | None = None) -> Payload:
    """The three fields every payload starts with."""
    return {
        "v": SCHEMA_VERSION,
        "type": kind,
        "ts": round(time.time() if ts is None else ts, _TS_DIGITS),
    }


def metric_payload(m: AgentMetrics) -> Payload | None:
    """One framework metric -> its payload (``stt``, ``eou``, ``llm`` or ``tts``).

    VAD metrics return ``None``: they are aggregated by :class:`VadAggregator`. ``ts`` is the
    metric's own timestamp (when the framework recorded it), not the moment of sending.
    """
    if isinstance(m, PipelineEOUMetrics):
        p = envelope("eou", m.timestamp)
        p["sequence_id"] = m.sequence_id
        p["end_of_utterance_delay"] = seconds(m.end_of_utterance_delay)
        p["transcription_delay"] = seconds(m.transcription_delay)
        return p
    if isinstance(m, LLMMetrics):
        p = envelope("llm", m.timestamp)
        p["sequence_id"] = getattr(m, "sequence_id", None)
        p["ttft"] = seconds(m.ttft)
        p["duration"] = seconds(m.duration)
        measured = llm_usage_reported(m)
        p["prompt_tokens"] = m.prompt_tokens if measured else None
        p["completion_tokens"] = m.completion_tokens if measured else None
        p["cancelled"] = m.cancelled
        p["label"] = m.label
        p["error"] = error_name(m.error)
        return p
    if isinstance(m, TTSMetrics):
        p = envelope("tts", m.timestamp)
        p["sequence_id"] = getattr(m, "sequence_id", None)
        p["ttfb"] = seconds(m.ttfb)
        p["duration"] = seconds(m.duration)
        p["audio_duration"] = seconds(m.audio_duration)
        p["characters"] = m.characters_count
        p["cancelled"] = m.cancelled
        p["label"] = m.label
        p["error"] = error_name(m.error)
        return p
    if isinstance(m, STTMetrics):
        p = envelope("stt", m.timestamp)
        p["duration"] = seconds(m.duration)
        p["audio_duration"] = seconds(m.audio_duration)
        p["streamed"] = m.streamed
        p["label"] = m.label
        p["error"] = error_name(m.error)
        return p
    return None


def llm_usage_reported(m: LLMMetrics) -> bool:
    """Did the provider report token usage for this request? The framework writes 0 tokens
    when it did not (a server without ``stream_options.include_usage`` support such as the
    local llama.cpp one, a request cancelled before its usage chunk); a real prompt is never
    0 tokens."""
    return m.error is None and (m.prompt_tokens > 0 or m.completion_tokens > 0)


class UsageTotals(Protocol):
    """What the ``session`` payload reports (``SessionUsage``; the framework's UsageSummary
    fits too). ``None``: not measured."""

    @property
    def llm_prompt_tokens(self) -> int | None: ...
    @property
    def llm_completion_tokens(self) -> int | None: ...
    @property
    def tts_characters_count(self) -> int: ...
    @property
    def stt_audio_duration(self) -> float: ...


@dataclass
class SessionUsage:
    """Usage totals of one session, from every STT/LLM/TTS metric. Unlike the framework's
    UsageCollector, LLM tokens stay ``None`` until a request reports usage, so a session
    whose LLM never reports any says "not measured" instead of 0 tokens."""

    llm_prompt_tokens: int | None = None
    llm_completion_tokens: int | None = None
    tts_characters_count: int = 0
    stt_audio_duration: float = 0.0

    def add(self, m: AgentMetrics) -> None:
        if isinstance(m, LLMMetrics):
            if llm_usage_reported(m):
                self.llm_prompt_tokens = (self.llm_prompt_tokens or 0) + m.prompt_tokens
                self.llm_completion_tokens = (self.llm_completion_tokens or 0) + m.completion_tokens
        elif isinstance(m, TTSMetrics):
            self.tts_characters_count += m.characters_count
        elif isinstance(m, STTMetrics):
            self.stt_audio_duration += m.audio_duration


class VadAggregator:
    """Folds the VAD's periodic metrics into one ``vad`` payload per ``window`` seconds.

    Windows are measured on the metrics' own timestamps, so the result does not depend on
    when the event loop gets around to delivering them.
    """

    def __init__(self, window: float = 10.0) -> None:
        if window <= 0:
            raise ValueError("window must be positive")
        self._window = window
        self._reset()

    def _reset(self) -> None:
        self._start: float | None = None
        self._last = 0.0
        self._count = 0
        self._reports = 0
        self._inference_total = 0.0
        self._idle_time = 0.0
        self._label = ""

    def add(self, m: VADMetrics) -> Payload | None:
        """Add one metric; returns the window's payload once the window is complete."""
        if self._start is None:
            self._start = m.timestamp
        self._last = m.timestamp
        self._reports += 1
        self._count += m.inference_count
        self._inference_total += m.inference_duration_total
        self._idle_time = m.idle_time
        self._label = m.label
        if self._last - self._start >= self._window:
            return self.flush()
        return None

    def flush(self) -> Payload | None:
        """The payload for what was collected so far (``None`` if nothing), and a new window."""
        if self._start is None or self._count == 0:
            self._reset()
            return None
        p = envelope("vad", self._last)
        p["window"] = seconds(self._last - self._start)
        p["reports"] = self._reports
        p["inference_count"] = self._count
        p["inference_duration_total"] = seconds(self._inference_total)
        p["inference_duration_avg"] = seconds(self._inference_total / self._count)
        p["idle_time"] = seconds(self._idle_time)
        p["label"] = self._label
        self._reset()
        return p


@dataclass(frozen=True)
class TurnCounts:
    turns: int
    interrupted: int
    apologised: int = 0
    """Turns where the LLM failed for good before saying anything (the apology was spoken)."""
    with_errors: int = 0
    """Turns with a provider failure the user noticed (the ``turn`` payload's ``error``)."""


def session_payload(
    usage: UsageTotals,
    turns: TurnCounts,
    *,
    duration: float,
    data_messages: Mapping[str, int] | None = None,
    ts: float | None = None,
) -> Payload:
    """The ``session`` payload sent once at the end of the job."""
    p = envelope("session", ts)
    p["duration"] = seconds(duration)
    p["turns"] = turns.turns
    p["interrupted_turns"] = turns.interrupted
    p["apologised_turns"] = turns.apologised
    p["error_turns"] = turns.with_errors
    p["llm_prompt_tokens"] = usage.llm_prompt_tokens
    p["llm_completion_tokens"] = usage.llm_completion_tokens
    p["tts_characters"] = usage.tts_characters_count
    p["stt_audio_duration"] = seconds(usage.stt_audio_duration)
    if data_messages is not None:
        p["data_messages"] = dict(data_messages)
    return p


# --- encoding with the size bound ------------------------------------------------------------


_PROTECTED = frozenset({"v", "type", "ts"})
_MIN_CUT = 8  # strings this short (in escaped bytes) are left alone


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _escaped_len(text: str) -> int:
    """Bytes ``text`` takes inside the encoded JSON (without its quotes)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _clean_str(text: str, limit: int) -> str:
    if len(text) > limit:  # longer than the whole budget: can never fit, stop carrying it
        text = text[:limit]
    try:
        text.encode()
    except UnicodeEncodeError:  # lone surrogates are not UTF-8
        text = text.encode(errors="replace").decode()
    return text


def _jsonable(value: Any, limit: int, depth: int = 0) -> Any:
    """A copy ``_dumps`` accepts: non-finite floats -> null, lone surrogates replaced,
    strings and lists longer than the whole budget pre-cut, depth bounded."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clean_str(value, limit)
    if depth >= 32:
        return None
    if isinstance(value, Mapping):
        return {_clean_str(str(k), limit): _jsonable(v, limit, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, limit, depth + 1) for v in value[: limit // 2]]
    return _clean_str(str(value), limit)


def _slots(root: Payload) -> list[tuple[Any, Any]]:
    """(container, key) of every cuttable string value, the envelope excluded."""
    found: list[tuple[Any, Any]] = []
    stack: list[Any] = [root]
    while stack:
        c = stack.pop()
        pairs = c.items() if isinstance(c, dict) else enumerate(c)
        for key, v in pairs:
            if isinstance(v, str):
                if not (c is root and key in _PROTECTED):
                    found.append((c, key))
            elif isinstance(v, dict | list):
                stack.append(v)
    return found


def _prefix_within(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose escaped length is at most ``budget``."""
    lo, hi = 0, min(len(text), budget)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _escaped_len(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _cap_strings(work: Payload, max_bytes: int) -> bool:
    """Cut the longest strings to one common cap (as large as fits); True if it now fits."""
    slots = _slots(work)
    lens = [_escaped_len(c[k]) for c, k in slots]
    overhead = len(_dumps(work)) - sum(lens)

    def total(cap: int) -> int:
        return overhead + sum(min(n, cap) for n in lens)

    if total(_MIN_CUT) > max_bytes:
        cap = _MIN_CUT
    else:
        lo, hi = _MIN_CUT, max(lens, default=_MIN_CUT)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if total(mid) <= max_bytes:
                lo = mid
            else:
                hi = mid - 1
        cap = lo
    for (c, k), n in zip(slots, lens, strict=True):
        if n > cap:
            c[k] = _prefix_within(c[k], cap - len(_ELLIPSIS.encode())) + _ELLIPSIS
    return len(_dumps(work)) <= max_bytes


def _longest_list(root: Payload) -> list[Any] | None:
    best: list[Any] | None = None
    stack: list[Any] = [root]
    while stack:
        c = stack.pop()
        if isinstance(c, list) and c and (best is None or len(c) > len(best)):
            best = c
        stack.extend(
            v for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, dict | list)
        )
    return best


def encode_payload(payload: Mapping[str, Any], max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """UTF-8 JSON of ``payload``, at most ``max_bytes`` long.

    When too long, the longest string values are cut to a common length (ending in "…") so
    that the whole fits, and only if that is not enough the longest lists lose items; the
    JSON stays valid and ``truncated: true`` is added. The envelope (``v``, ``type``, ``ts``)
    is never cut. Non-finite floats become null.
    """
    work: Payload = _jsonable(payload, max_bytes)
    data = _dumps(work)
    if len(data) <= max_bytes:  # then nothing was pre-cut either: that alone would not fit
        return data
    work["truncated"] = True
    while not _cap_strings(work, max_bytes):
        longest = _longest_list(work)
        if longest is None:
            envelope_only = {k: work[k] for k in ("v", "type", "ts") if k in work}
            return _dumps(envelope_only | {"truncated": True})
        del longest[len(longest) // 2 :]
    return _dumps(work)
