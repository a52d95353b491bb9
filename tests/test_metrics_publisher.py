"""MetricsPublisher / SessionMetrics against the in-process room (worker/local_room/room.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import rtc
from livekit.agents.metrics import (
    PipelineEOUMetrics,
    PipelineLLMMetrics,
    PipelineSTTMetrics,
    PipelineTTSMetrics,
    PipelineVADMetrics,
)

from worker.local_room import LocalParticipant, LocalRoom
from worker.metrics.collector import JsonlFileSink, MetricsOptions, RoomSink, SessionMetrics
from worker.metrics.payloads import MAX_PAYLOAD_BYTES
from worker.metrics.publisher import DataPublisher, MetricsPublisher
from worker.room_io.data_messages import DataMessageRouter

TOPIC = "agent.metrics"


@pytest.fixture
async def room() -> AsyncIterator[LocalRoom]:
    room = LocalRoom()
    yield room
    await room.aclose()


class ScriptedParticipant(LocalParticipant):
    """The room double's participant, with publishes that hang until ``gate`` opens.

    ``hang``: which calls (1-based) wait for the gate; None means every call.
    """

    def __init__(self, room: LocalRoom, *, hang: set[int] | None = None) -> None:
        super().__init__(room, "agent")
        self.hang = hang
        self.gate = asyncio.Event()
        self.calls = 0
        self._called = asyncio.Condition()

    async def publish_data(self, payload, *, reliable=True, destination_identities=(), topic=""):
        self.calls += 1
        async with self._called:
            self._called.notify_all()
        if self.hang is None or self.calls in self.hang:
            await self.gate.wait()
        await super().publish_data(
            payload, reliable=reliable, destination_identities=destination_identities, topic=topic
        )

    async def wait_calls(self, n: int) -> None:
        async with self._called:
            await asyncio.wait_for(self._called.wait_for(lambda: self.calls >= n), 10)


def sent(room: LocalRoom) -> list[dict]:
    return [d.json() for d in room.outbox.data_on(TOPIC)]


def _real_participant_is_a_data_publisher(p: rtc.LocalParticipant) -> DataPublisher:
    return p  # mypy checks the real class against the Protocol


def test_room_double_matches_the_protocol(room: LocalRoom) -> None:
    _participant: DataPublisher = room.local_participant  # checked by mypy
    real = inspect.signature(rtc.LocalParticipant.publish_data)
    double = inspect.signature(LocalParticipant.publish_data)
    expected = ["self", "payload", "reliable", "destination_identities", "topic"]
    assert list(real.parameters) == list(double.parameters) == expected


async def test_publishes_reliable_utf8_json_in_order(room: LocalRoom) -> None:
    publisher = MetricsPublisher(
        [RoomSink(room.local_participant, destination_identities=["dashboard"])], topic=TOPIC
    )
    publisher.start()
    for i in range(20):
        publisher.publish({"v": 1, "type": "stt", "ts": 1.0, "n": i, "text": "héllo"})
    await publisher.aclose()  # flushes
    data = room.outbox.data_on(TOPIC)
    assert [d.json()["n"] for d in data] == list(range(20))
    assert all(d.reliable and d.destination_identities == ("dashboard",) for d in data)
    assert data[0].payload.decode("utf-8") == ('{"v":1,"type":"stt","ts":1.0,"n":0,"text":"héllo"}')
    assert publisher.stats() == {"room": {"sent": 20, "dropped": 0, "queued": 0}}


async def test_aclose_delivers_what_was_queued_before_start(room: LocalRoom) -> None:
    publisher = MetricsPublisher([RoomSink(room.local_participant)], topic=TOPIC)
    publisher.publish({"v": 1, "type": "session", "ts": 1.0})
    await publisher.aclose()
    assert [m["type"] for m in sent(room)] == ["session"]
    publisher.publish({"v": 1, "type": "stt", "ts": 2.0})  # after close: ignored
    assert publisher.stats()["room"] == {"sent": 1, "dropped": 0, "queued": 0}


async def test_payloads_are_bounded_on_the_wire(room: LocalRoom) -> None:
    publisher = MetricsPublisher([RoomSink(room.local_participant)], topic=TOPIC)
    publisher.start()
    publisher.publish({"v": 1, "type": "turn", "ts": 1.0, "agent_text": "word " * 100_000})
    await publisher.aclose()
    (msg,) = room.outbox.data_on(TOPIC)
    assert len(msg.payload) <= MAX_PAYLOAD_BYTES
    assert msg.json()["truncated"] is True


async def test_slow_room_drops_oldest_and_reports_the_count(room: LocalRoom) -> None:
    slow = ScriptedParticipant(room)
    publisher = MetricsPublisher([RoomSink(slow)], topic=TOPIC, max_queue=4)
    publisher.start()
    publisher.publish({"v": 1, "type": "stt", "ts": 1.0, "n": 0})
    await slow.wait_calls(1)  # n=0 is in flight, stuck in the room
    for i in range(1, 11):  # the caller is never held up: these all return immediately
        publisher.publish({"v": 1, "type": "stt", "ts": 1.0, "n": i})
    assert publisher.stats()["room"] == {"sent": 0, "dropped": 6, "queued": 4}
    slow.gate.set()
    await publisher.aclose()
    got = sent(room)
    assert [m["n"] for m in got] == [0, 7, 8, 9, 10]  # oldest dropped, order kept
    assert "dropped" not in got[0]
    assert got[1]["dropped"] == 6
    assert all("dropped" not in m for m in got[2:])


async def test_failing_room_is_logged_once_and_the_count_survives(
    room: LocalRoom, caplog: pytest.LogCaptureFixture
) -> None:
    participant = ScriptedParticipant(room, hang=set())
    publisher = MetricsPublisher([RoomSink(participant)], topic=TOPIC)
    publisher.start()
    await room.disconnect()  # publish_data now raises PublishDataError
    caplog.set_level(logging.DEBUG, logger="worker.metrics.publisher")
    for i in range(5):
        publisher.publish({"v": 1, "type": "llm", "ts": 1.0, "n": i})
    await participant.wait_calls(5)

    await room.connect("ws://unused", "unused")  # the room recovers
    publisher.publish({"v": 1, "type": "llm", "ts": 1.0, "n": 5})
    publisher.publish({"v": 1, "type": "llm", "ts": 1.0, "n": 6})
    await publisher.aclose()
    assert [(m["n"], m.get("dropped")) for m in sent(room)] == [(5, 5), (6, None)]
    assert publisher.stats()["room"] == {"sent": 2, "dropped": 5, "queued": 0}
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].error == "PublishDataError"  # type: ignore[attr-defined]


async def test_slow_room_does_not_block_the_caller_nor_shutdown(room: LocalRoom) -> None:
    """A room that never answers: publish() keeps returning; aclose gives up after its timeout."""
    stuck = ScriptedParticipant(room)
    publisher = MetricsPublisher([RoomSink(stuck)], topic=TOPIC, send_timeout=60, close_timeout=0.2)
    publisher.start()
    publisher.publish({"v": 1, "type": "tts", "ts": 1.0})
    await stuck.wait_calls(1)
    for _ in range(1000):
        publisher.publish({"v": 1, "type": "tts", "ts": 1.0})
    await asyncio.wait_for(publisher.aclose(), 10)
    stats = publisher.stats()["room"]
    assert stats["sent"] == 0
    assert stats["queued"] == 0
    assert stats["dropped"] == 1001  # the one in flight (cancelled) and the 1000 queued


async def test_send_timeout_counts_as_dropped(room: LocalRoom) -> None:
    hangs_once = ScriptedParticipant(room, hang={1})
    # 1 s: far longer than an answering send takes on a loaded machine; the hang is forever
    publisher = MetricsPublisher([RoomSink(hangs_once)], topic=TOPIC, send_timeout=1.0)
    publisher.start()
    publisher.publish({"v": 1, "type": "eou", "ts": 1.0, "n": 0})
    publisher.publish({"v": 1, "type": "eou", "ts": 1.0, "n": 1})
    await publisher.aclose()
    assert [(m["n"], m.get("dropped")) for m in sent(room)] == [(1, 1)]


async def test_jsonl_sink_writes_exactly_the_published_bytes(
    room: LocalRoom, tmp_path: Path
) -> None:
    path = tmp_path / "metrics.jsonl"
    publisher = MetricsPublisher(
        [RoomSink(room.local_participant), JsonlFileSink(path)], topic="custom.topic"
    )
    publisher.start()
    publisher.publish({"v": 1, "type": "stt", "ts": 1.5, "label": 'quote " é'})
    publisher.publish({"v": 1, "type": "session", "ts": 2.0, "turns": 0})
    await publisher.aclose()
    lines = path.read_bytes().splitlines()
    published = room.outbox.data_on("custom.topic")
    assert len(lines) == len(published) == 2
    for line, msg in zip(lines, published, strict=True):
        assert line == b'{"topic":"custom.topic","payload":' + msg.payload + b"}"
        assert json.loads(line) == {"topic": "custom.topic", "payload": msg.json()}


async def test_session_metrics_end_to_end(room: LocalRoom) -> None:
    """Real metric objects in, the room's data messages out: types, order, join, totals."""
    router = DataMessageRouter()
    router.on_control(lambda command, sender: None)
    user = room.add_participant("user")
    room.on("data_received", router.on_data_received)
    metrics = SessionMetrics(
        [RoomSink(room.local_participant)],
        MetricsOptions(topic=TOPIC),
        data_message_stats=router.stats,
    )
    metrics.start()
    ts = 1_700_000_000.0
    user.send_data(b"\xff\xfe", topic="agent.control")  # rejected: invalid UTF-8
    user.send_data('{"type":"interrupt"}', topic="agent.control")
    metrics.turns.user_stopped_speaking(100.0)
    for i in range(3):
        metrics.collect(
            PipelineVADMetrics(
                timestamp=ts + i,
                idle_time=0.1,
                inference_duration_total=0.03,
                inference_count=31,
                label="vad",
            )
        )
    metrics.collect(
        PipelineSTTMetrics(
            request_id="s",
            timestamp=ts,
            duration=3.0,
            label="stt",
            audio_duration=2.5,
            streamed=True,
            error=None,
        )
    )
    metrics.collect(
        PipelineEOUMetrics(
            sequence_id="SH_1", timestamp=ts, end_of_utterance_delay=0.55, transcription_delay=0.2
        )
    )
    metrics.turns.first_text("SH_1", 100.9)
    metrics.collect(
        PipelineLLMMetrics(
            request_id="l",
            timestamp=ts,
            ttft=0.3,
            duration=0.6,
            label="llm",
            cancelled=False,
            completion_tokens=12,
            prompt_tokens=80,
            total_tokens=92,
            tokens_per_second=20.0,
            error=None,
            sequence_id="SH_1",
        )
    )
    metrics.turns.first_audio(None, 101.2)
    metrics.collect(
        PipelineTTSMetrics(
            request_id="t",
            timestamp=ts,
            ttfb=0.8,
            duration=1.0,
            audio_duration=2.0,
            cancelled=False,
            characters_count=55,
            label="tts",
            streamed=True,
            error=None,
            sequence_id="SH_1",
        )
    )
    metrics.turns.reply_finished(None, interrupted=False)
    await metrics.aclose()

    got = sent(room)
    assert [m["type"] for m in got] == ["stt", "eou", "llm", "tts", "turn", "vad", "session"]
    assert all(m["v"] == 1 and isinstance(m["ts"], float) for m in got)
    turn = got[4]
    assert turn["sequence_id"] == "SH_1"
    assert turn["e2e_latency"] == pytest.approx(1.2)
    assert turn["end_of_utterance_delay"] == 0.55
    assert turn["llm_ttft"] == 0.3
    assert turn["tts_ttfb"] == pytest.approx(0.3)
    assert turn["tts_ttfb_source"] == "first_text"
    assert got[5]["inference_count"] == 93
    assert got[5]["reports"] == 3
    session = got[6]
    assert session["turns"] == 1
    assert session["interrupted_turns"] == 0
    assert session["llm_prompt_tokens"] == 80
    assert session["llm_completion_tokens"] == 12
    assert session["tts_characters"] == 55
    assert session["stt_audio_duration"] == 2.5
    assert session["data_messages"]["accepted"] == 1
    assert session["data_messages"]["invalid_utf8"] == 1
    metrics.collect(PipelineEOUMetrics("SH_2", ts, 0.1, 0.1))  # after close: ignored, no error
    assert len(sent(room)) == 7
