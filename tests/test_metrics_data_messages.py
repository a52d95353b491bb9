"""Received data messages are untrusted: DataMessageRouter with the room double's data_received."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator

import pytest
from livekit import rtc

from worker.local_room import LocalRoom, RemoteParticipant
from worker.room_io.data_messages import (
    CONTROL_TOPIC,
    REJECTIONS,
    ControlCommand,
    ControlOptions,
    DataMessageRouter,
    Interrupt,
    Refused,
    Say,
    control_handler,
)


@pytest.fixture
async def room() -> AsyncIterator[LocalRoom]:
    room = LocalRoom()
    yield room
    await room.aclose()


@pytest.fixture
def user(room: LocalRoom) -> RemoteParticipant:
    return room.add_participant("user")


@pytest.fixture
def received() -> list[tuple[ControlCommand, str | None]]:
    return []


@pytest.fixture
def router(room: LocalRoom, received: list[tuple[ControlCommand, str | None]]) -> DataMessageRouter:
    router = DataMessageRouter()
    router.on_control(lambda command, sender: received.append((command, sender)))
    room.on("data_received", router.on_data_received)
    return router


def test_control_commands_reach_the_handler(
    user: RemoteParticipant,
    router: DataMessageRouter,
    received: list[tuple[ControlCommand, str | None]],
) -> None:
    user.send_data('{"type":"interrupt"}', topic=CONTROL_TOPIC)
    user.send_data('{"v":1,"type":"say","text":"  Hello there!  "}', topic=CONTROL_TOPIC)
    assert received == [(Interrupt(), "user"), (Say("Hello there!"), "user")]
    assert router.stats()["accepted"] == 2


def test_unknown_topics_are_ignored(
    user: RemoteParticipant,
    router: DataMessageRouter,
    received: list[tuple[ControlCommand, str | None]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    user.send_data('{"type":"interrupt"}', topic="something.else")
    user.send_data('{"type":"interrupt"}')  # no topic
    user.send_data(b"\xff" * 100_000, topic="agent.metrics")
    assert received == []
    assert router.stats()["ignored"] == 3
    assert not [r for r in caplog.records if r.name == "worker.room_io.data_messages"]


def test_oversized_is_rejected_before_parsing(
    user: RemoteParticipant,
    router: DataMessageRouter,
    received: list[tuple[ControlCommand, str | None]],
) -> None:
    huge = '{"type":"say","text":"' + "a" * 50_000_000 + '"}'  # would be valid JSON
    user.send_data(huge, topic=CONTROL_TOPIC)
    assert received == []
    assert router.stats()["oversized"] == 1


HOSTILE: list[tuple[bytes, str]] = [
    (b"\xff\xfe\xfd", "invalid_utf8"),
    (b"\xc0\xaf", "invalid_utf8"),  # overlong encoding
    (b"\xed\xa0\x80", "invalid_utf8"),  # an encoded surrogate
    (b'{"type":"say","text":"\xe2\x82"}', "invalid_utf8"),  # truncated sequence
    (b"", "invalid_json"),
    (b"{", "invalid_json"),
    (b'{"type":"interrupt"', "invalid_json"),
    (b"NaN", "invalid_json"),
    (b'{"type":"say","text":Infinity}', "invalid_json"),
    (b"[" * 2000, "invalid_json"),  # deeper than the recursion limit, and unterminated
    (b"[" * 1000 + b"]" * 1000, "invalid_json"),
    (b"[" * 20 + b"]" * 20, "too_deep"),
    (b'{"a":' * 10 + b"1" + b"}" * 10, "too_deep"),
    (b"1e999999", "schema"),  # parses as inf
    (b"9" * 2000, "schema"),  # a 2000-digit integer
    (b'{"type":"say","text":1e999999}', "schema"),
    (b"null", "schema"),
    (b'"interrupt"', "schema"),
    (b"[]", "schema"),
    (b'{"type":5}', "schema"),
    (b'{"type":"explode"}', "schema"),
    (b'{"type":"interrupt","all":true}', "schema"),
    (b'{"type":"say"}', "schema"),
    (b'{"type":"say","text":123}', "schema"),
    (b'{"type":"say","text":"   "}', "schema"),
    (b'{"type":"say","text":["hi"]}', "schema"),
    (b'{"type":"say","text":"' + b"x" * 501 + b'"}', "schema"),
    (b'{"type":"interrupt","v":2}', "schema"),
    (b'{"type":"interrupt","v":true}', "schema"),
    (b'{"type":["interrupt"]}', "schema"),
]


@pytest.mark.parametrize(("data", "kind"), HOSTILE)
def test_hostile_payloads_are_rejected_by_kind(
    user: RemoteParticipant,
    router: DataMessageRouter,
    received: list[tuple[ControlCommand, str | None]],
    data: bytes,
    kind: str,
) -> None:
    user.send_data(data, topic=CONTROL_TOPIC)
    assert received == []
    stats = router.stats()
    assert stats[kind] == 1
    assert sum(stats.values()) == 1


def test_each_bad_kind_is_logged_once(
    user: RemoteParticipant, router: DataMessageRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="worker.room_io.data_messages")
    for data, _ in HOSTILE * 3:
        user.send_data(data, topic=CONTROL_TOPIC)
    kinds = {kind for _, kind in HOSTILE}
    warnings = [r for r in caplog.records if r.name == "worker.room_io.data_messages"]
    assert sorted(r.reason for r in warnings) == sorted(kinds)  # type: ignore[attr-defined]
    stats = router.stats()
    assert sum(stats[k] for k in kinds) == 3 * len(HOSTILE)


def test_fuzz_random_bytes_never_crash(
    user: RemoteParticipant,
    router: DataMessageRouter,
    received: list[tuple[ControlCommand, str | None]],
) -> None:
    rng = random.Random(1234)
    valid = [b'{"type":"interrupt"}', b'{"type":"say","text":"hi"}']
    pieces = [b"{", b"}", b"[", b"]", b'"', b":", b",", b"type", b"say", b"text", b"\\u0000"]
    sent_valid = 0
    for i in range(3000):
        mode = i % 4
        if mode == 0:  # raw random bytes
            data = rng.randbytes(rng.randint(0, 3000))
        elif mode == 1:  # a valid message with bytes flipped
            flipped = bytearray(rng.choice(valid))
            for _ in range(rng.randint(1, 3)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            data = bytes(flipped)
        elif mode == 2:  # JSON-ish token soup
            data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 400)))
        else:  # random JSON values of the wrong shape
            value = rng.choice(
                [{"type": rng.random()}, {"type": "say", "text": rng.random()}, [1] * 5, "say"]
            )
            data = json.dumps(value).encode()
        if data in valid:
            sent_valid += 1
        user.send_data(data, topic=CONTROL_TOPIC)
    stats = router.stats()
    assert sum(stats.values()) == 3000
    assert len(received) == stats["accepted"] >= sent_valid
    assert stats["handler_error"] == 0


def test_packet_from_the_server_has_no_sender(
    router: DataMessageRouter, received: list[tuple[ControlCommand, str | None]]
) -> None:
    packet = rtc.DataPacket(
        data=b'{"type":"interrupt"}',
        kind=rtc.DataPacketKind.KIND_RELIABLE,
        participant=None,
        topic=CONTROL_TOPIC,
    )
    router.on_data_received(packet)
    assert received == [(Interrupt(), None)]


def test_failing_handler_is_contained(user: RemoteParticipant, room: LocalRoom) -> None:
    router = DataMessageRouter()

    def explode(command: ControlCommand, sender: str | None) -> None:
        raise RuntimeError("boom")

    router.on_control(explode)
    room.on("data_received", router.on_data_received)
    user.send_data('{"type":"interrupt"}', topic=CONTROL_TOPIC)  # must not raise here
    assert router.stats()["handler_error"] == 1
    assert router.stats()["accepted"] == 0


async def test_async_handlers_are_owned_and_bounded(
    user: RemoteParticipant, room: LocalRoom
) -> None:
    router = DataMessageRouter(max_pending=2)
    release = asyncio.Event()
    started: list[ControlCommand] = []

    async def speak(command: ControlCommand, sender: str | None) -> None:
        started.append(command)
        await release.wait()

    router.on_control(speak)
    room.on("data_received", router.on_data_received)
    for _ in range(5):
        user.send_data('{"type":"say","text":"one moment"}', topic=CONTROL_TOPIC)
    await asyncio.sleep(0)  # let the accepted handlers start
    assert len(started) == 2
    assert router.stats()["accepted"] == 2
    assert router.stats()["busy"] == 3
    await router.aclose()  # cancels the pending handlers instead of leaking them
    user.send_data('{"type":"interrupt"}', topic=CONTROL_TOPIC)
    assert router.stats()["ignored"] == 1  # closed: nothing is handled any more


async def test_async_handler_failure_is_counted(user: RemoteParticipant, room: LocalRoom) -> None:
    router = DataMessageRouter()
    done = asyncio.Event()

    async def fail(command: ControlCommand, sender: str | None) -> None:
        done.set()
        raise ValueError("bad")

    router.on_control(fail)
    room.on("data_received", router.on_data_received)
    user.send_data('{"type":"interrupt"}', topic=CONTROL_TOPIC)
    await asyncio.wait_for(done.wait(), 10)
    await router.aclose()
    assert router.stats()["handler_error"] == 1


# --- who may steer the agent, and what ------------------------------------------------------


async def test_a_strangers_commands_are_refused_first_and_take_no_pending_slot(
    user: RemoteParticipant, room: LocalRoom
) -> None:
    """A third participant floods the control topic while the user's own command is pending:
    refused before they are read, counted as ``unauthorized`` (not accepted), and the slots
    stay free for the user."""
    router = DataMessageRouter(max_pending=2)
    release = asyncio.Event()
    started: list[tuple[ControlCommand, str | None]] = []

    async def speak(command: ControlCommand, sender: str | None) -> None:
        started.append((command, sender))
        await release.wait()

    router.on_control(speak, senders=lambda sender: sender == "user")
    room.on("data_received", router.on_data_received)
    stranger = room.add_participant("stranger")
    user.send_data('{"type":"say","text":"first"}', topic=CONTROL_TOPIC)
    for _ in range(10):
        stranger.send_data('{"type":"say","text":"I have verified you"}', topic=CONTROL_TOPIC)
    stranger.send_data(b"\xff" * 100_000, topic=CONTROL_TOPIC)  # not even read
    user.send_data('{"type":"say","text":"second"}', topic=CONTROL_TOPIC)
    await asyncio.sleep(0)
    assert started == [(Say("first"), "user"), (Say("second"), "user")]
    stats = router.stats()
    assert stats["unauthorized"] == 11
    assert stats["accepted"] == 2
    assert stats["busy"] == stats["oversized"] == 0
    await router.aclose()


def test_say_is_refused_unless_allowed_and_then_rate_limited(
    user: RemoteParticipant, room: LocalRoom
) -> None:
    spoken: list[str] = []
    interrupts: list[None] = []

    def router_with(options: ControlOptions) -> DataMessageRouter:
        router = DataMessageRouter()
        handler = control_handler(
            interrupt=lambda: interrupts.append(None), say=spoken.append, options=options
        )
        router.on_control(handler, senders=lambda sender: sender == "user")
        room.on("data_received", router.on_data_received)
        return router

    off = router_with(ControlOptions())  # AGENT_ALLOW_SAY unset
    user.send_data('{"type":"say","text":"hello"}', topic=CONTROL_TOPIC)
    user.send_data('{"type":"interrupt"}', topic=CONTROL_TOPIC)
    assert spoken == []
    assert len(interrupts) == 1  # interrupting stays allowed
    assert off.stats()["say_disabled"] == 1
    assert off.stats()["accepted"] == 1
    room.off("data_received", off.on_data_received)

    on = router_with(ControlOptions(allow_say=True, say_per_minute=3))
    for i in range(5):
        user.send_data(json.dumps({"type": "say", "text": f"line {i}"}), topic=CONTROL_TOPIC)
    assert spoken == ["line 0", "line 1", "line 2"]
    assert on.stats()["rate_limited"] == 2
    assert on.stats()["accepted"] == 3


def test_every_refusal_reason_is_a_metrics_key() -> None:
    stats = DataMessageRouter().stats()
    assert {"unauthorized", "say_disabled", "rate_limited"} <= set(stats)
    assert set(stats) == {"accepted", "ignored", *REJECTIONS}
    with pytest.raises(ValueError, match="unknown refusal reason"):
        Refused("because")
