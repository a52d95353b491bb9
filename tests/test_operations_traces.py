"""OpenTelemetry traces of a conversation, exported over OTLP/HTTP to a loopback receiver that
decodes the protobuf export: one trace per job, a span per turn, children for end of utterance,
each LLM round, each tool call (concurrent calls overlap) and TTS, with the payloads' figures
as attributes and no user text unless OTEL_INCLUDE_TEXT=1.
"""

from __future__ import annotations

import contextlib
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply, ToolCall
from tests.test_worker_protocol import free_port

pytestmark = pytest.mark.timeout(120)

TOOLS_ENV = {"AGENT_TOOLS": "tests.test_conversation_tools:ClockedTools"}
QUESTION = "how is paris today"
PAYLOAD_RESOLUTION_NS = 2_000_000
"""Span times come from payload timestamps (1 ms) and durations (0.1 ms)."""


@dataclass
class Span:
    name: str
    trace_id: bytes
    span_id: bytes
    parent: bytes
    start: int
    end: int
    attributes: dict[str, Any]


@dataclass
class Receiver:
    """``POST /v1/traces`` (OTLP/HTTP, protobuf): every span received, decoded."""

    spans: list[Span] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        assert request.content_type == "application/x-protobuf"
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    self.spans.append(
                        Span(
                            name=s.name,
                            trace_id=s.trace_id,
                            span_id=s.span_id,
                            parent=s.parent_span_id,
                            start=s.start_time_unix_nano,
                            end=s.end_time_unix_nano,
                            attributes={a.key: _value(a.value) for a in s.attributes},
                        )
                    )
        return web.Response(body=b"", content_type="application/x-protobuf")

    def named(self, name: str) -> list[Span]:
        return [s for s in self.spans if s.name == name]


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind is not None else None


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", r.handle)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    r.url = f"http://127.0.0.1:{port}"
    try:
        yield r
    finally:
        await runner.cleanup()


def respond(body: dict[str, Any]) -> Reply:
    if not any(m["role"] == "tool" for m in body["messages"]):
        calls = [ToolCall("weather", '{"city": "Paris"}'), ToolCall("traffic", '{"city": "Paris"}')]
        return Reply(text="Let me check.", tool_calls=calls)
    return Reply(text="It is sunny with light traffic.")


async def one_turn_traced(make_session: SessionFactory, env: dict[str, str]) -> dict[str, Any]:
    h = await make_session(respond, env={**TOOLS_ENV, **env})
    await h.utter(QUESTION)
    await h.wait_for_replies(1, timeout=40)
    await h.room.outbox.wait_for(
        lambda: any(d.json()["type"] == "turn" for d in h.room.outbox.data_on("agent.metrics"))
    )
    (turn,) = [
        d.json() for d in h.room.outbox.data_on("agent.metrics") if d.json()["type"] == "turn"
    ]
    await h.parts.aclose()  # the job ends: the job span ends and the spans are flushed
    return turn


async def test_a_turn_with_concurrent_tools_is_one_trace_of_overlapping_spans(
    make_session: SessionFactory,
) -> None:
    async with receiver() as r:
        turn = await one_turn_traced(make_session, {"OTEL_EXPORTER_OTLP_ENDPOINT": r.url})

    (job,) = r.named("job")
    assert {s.trace_id for s in r.spans} == {job.trace_id}  # one trace per job
    assert job.parent == b""
    (turn_span,) = r.named("turn")
    assert turn_span.parent == job.span_id
    children = [s for s in r.spans if s.parent == turn_span.span_id]
    names = sorted(s.name for s in children)
    assert names.count("end_of_utterance") == 1
    assert names.count("llm") == 2  # the tool round and the answer
    assert names.count("tool") == 2
    assert names.count("tts") >= 1
    for child in children:
        assert turn_span.start <= child.start <= child.end <= turn_span.end, child.name

    # the two tool calls ran concurrently: their spans overlap
    traffic, weather = sorted(r.named("tool"), key=lambda s: s.attributes["lk_agent.tool"])
    assert weather.attributes["lk_agent.tool"] == "weather"
    assert traffic.attributes["lk_agent.tool"] == "traffic"
    assert weather.start < traffic.end
    assert traffic.start < weather.end
    # ...and the answer's LLM round starts after both (to the payloads' 1 ms resolution)
    answer = max(r.named("llm"), key=lambda s: s.start)
    assert answer.start >= max(weather.end, traffic.end) - PAYLOAD_RESOLUTION_NS

    # the turn span carries the room's figures
    for key in ("e2e_latency", "end_of_utterance_delay", "llm_ttft", "tts_ttfb", "tool_time"):
        assert turn_span.attributes[f"lk_agent.{key}"] == turn[key], key
    assert turn_span.attributes["lk_agent.outcome"] == "answered"
    assert turn_span.attributes["lk_agent.tool_rounds"] == 1
    (eou,) = r.named("end_of_utterance")
    assert eou.end - eou.start == pytest.approx(
        turn["end_of_utterance_delay"] * 1e9, abs=PAYLOAD_RESOLUTION_NS
    )
    # no user or agent text anywhere
    dumped = json.dumps([s.attributes for s in r.spans])
    assert QUESTION not in dumped
    assert "sunny" not in dumped


async def test_text_is_on_the_turn_span_only_with_otel_include_text(
    make_session: SessionFactory,
) -> None:
    async with receiver() as r:
        await one_turn_traced(
            make_session, {"OTEL_EXPORTER_OTLP_ENDPOINT": r.url, "OTEL_INCLUDE_TEXT": "1"}
        )
    (turn_span,) = r.named("turn")
    assert turn_span.attributes["lk_agent.user_text"] == QUESTION
    assert "sunny" in turn_span.attributes["lk_agent.agent_text"]
