"""OpenTelemetry traces of a job, when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (OTLP/HTTP).

One trace per job: a ``job`` span for the session, a ``turn`` span per agent reply, and under
it ``end_of_utterance``, one ``llm`` span per LLM request (a reply with tool rounds has several),
one ``tool`` span per tool call (calls run concurrently, so their spans overlap) and a ``tts``
span per synthesized segment. The spans are built from the same payloads the room gets
(:class:`TraceSink` is one more sink of the session's publisher): their times come from the
payloads' timestamps and durations, their attributes are the payloads' figures. Tool calls are
not in the payloads; the session reports each call's start and end (:meth:`TraceSink.tool_calls`).
User and agent text are attributes only with ``OTEL_INCLUDE_TEXT=1``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, Tracer, set_span_in_context

from worker.tools.runner import ToolCallTiming

SERVICE_NAME = "livekit-voice-agent"
ATTRIBUTE_PREFIX = "lk_agent."
MAX_PENDING_REPLIES = 16


@dataclass
class _Reply:
    payloads: list[Mapping[str, Any]] = field(default_factory=list)
    tools: list[tuple[str, int, int, bool]] = field(default_factory=list)  # name, ns, ns, failed
    text: dict[str, str] = field(default_factory=dict)


def _ns(unix_seconds: float) -> int:
    return int(unix_seconds * 1e9)


def _unix(perf: float) -> float:
    """A ``perf_counter()`` moment on the wall clock."""
    return time.time() - (time.perf_counter() - perf)


def _attributes(p: Mapping[str, Any], skip: Sequence[str] = ("v", "type", "ts")) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in p.items():
        if key in skip or value is None:
            continue
        if isinstance(value, bool | int | float | str):
            out[ATTRIBUTE_PREFIX + key] = value
    return out


_providers: dict[str, TracerProvider] = {}


def tracer_provider(endpoint: str) -> TracerProvider:
    """This process's provider for ``endpoint`` (exporting to ``endpoint``/v1/traces from a
    background thread), made once and kept for the process's next jobs."""
    provider = _providers.get(endpoint)
    if provider is None:
        provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
        exporter = OTLPSpanExporter(endpoint=f"{endpoint.rstrip('/')}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _providers[endpoint] = provider
    return provider


class TraceSink:
    """A metrics sink (``worker.metrics.publisher.MetricsSink``) that turns payloads into spans."""

    name = "traces"

    def __init__(
        self, provider: TracerProvider, *, include_text: bool = False, job_id: str = ""
    ) -> None:
        self._provider = provider
        self._tracer: Tracer = provider.get_tracer("worker.metrics.traces")
        self._include_text = include_text
        self._job = self._tracer.start_span(
            "job", attributes={ATTRIBUTE_PREFIX + "job_id": job_id} if job_id else None
        )
        self._job_ctx: Context = set_span_in_context(self._job)
        self._replies: dict[str, _Reply] = {}
        self._closed = False

    # --- observations from the session ----------------------------------------------------

    def tool_calls(self, sequence_id: str | None, calls: Sequence[ToolCallTiming]) -> None:
        if sequence_id is None:
            return
        reply = self._reply(sequence_id)
        reply.tools += [
            (c.name, _ns(_unix(c.started)), _ns(_unix(c.ended)), c.failed) for c in calls
        ]

    def reply_text(self, sequence_id: str | None, user: str | None, agent: str | None) -> None:
        if sequence_id is None or not self._include_text:
            return
        reply = self._reply(sequence_id)
        if user:
            reply.text["user_text"] = user
        if agent:
            reply.text["agent_text"] = agent

    # --- MetricsSink ----------------------------------------------------------------------

    async def send(self, topic: str, data: bytes) -> None:
        p = json.loads(data)
        if not isinstance(p, dict):
            return
        sequence_id = p.get("sequence_id")
        if not isinstance(sequence_id, str):
            return
        if p.get("type") == "turn":
            reply = self._replies.pop(sequence_id, _Reply())
            self._emit_turn(p, reply)
        elif p.get("type") in ("eou", "llm", "tts"):
            self._reply(sequence_id).payloads.append(p)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._job.end()
        await asyncio.to_thread(self._provider.force_flush)

    # --- spans ----------------------------------------------------------------------------

    def _reply(self, sequence_id: str) -> _Reply:
        reply = self._replies.get(sequence_id)
        if reply is None:
            reply = self._replies[sequence_id] = _Reply()
            if len(self._replies) > MAX_PENDING_REPLIES:  # replies that never finished
                del self._replies[next(iter(self._replies))]
        return reply

    def _emit_turn(self, turn: Mapping[str, Any], reply: _Reply) -> None:
        children: list[tuple[str, int, int, dict[str, Any]]] = []
        for p in reply.payloads:
            end = float(p["ts"])
            if p["type"] == "eou":
                delay = p.get("end_of_utterance_delay") or 0.0
                children.append(("end_of_utterance", _ns(end - delay), _ns(end), _attributes(p)))
            else:
                duration = p.get("duration") or 0.0
                children.append((p["type"], _ns(end - duration), _ns(end), _attributes(p)))
        for name, start, end_ns, failed in reply.tools:
            tool: dict[str, Any] = {
                ATTRIBUTE_PREFIX + "tool": name,
                ATTRIBUTE_PREFIX + "failed": failed,
            }
            children.append(("tool", start, end_ns, tool))
        turn_end = _ns(float(turn["ts"]))
        turn_start = min([c[1] for c in children] + [turn_end])
        attrs = _attributes(turn)
        attrs.update({ATTRIBUTE_PREFIX + k: v for k, v in reply.text.items()})
        span: Span = self._tracer.start_span(
            "turn", context=self._job_ctx, start_time=turn_start, attributes=attrs
        )
        ctx = set_span_in_context(span)
        for name, start, end_ns, child_attrs in sorted(children, key=lambda c: c[1]):
            child = self._tracer.start_span(
                name, context=ctx, start_time=start, attributes=child_attrs
            )
            child.end(end_time=max(end_ns, start))
        span.end(end_time=max(turn_end, *(c[2] for c in children)) if children else turn_end)


def trace_sink(endpoint: str, *, include_text: bool, job_id: str = "") -> TraceSink:
    return TraceSink(tracer_provider(endpoint), include_text=include_text, job_id=job_id)
