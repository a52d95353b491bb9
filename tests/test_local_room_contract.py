"""Contract: every member LocalRoom's doubles offer exists on the real livekit.rtc class, with a
compatible shape.

For each double/real pair, every public member of a live double instance (minus the class's
explicit ``DRIVER_MEMBERS``) must exist on the real class and:
- a property on the real class is a property or a plain attribute on the double;
- a method on the real class is a method on the double, both sync or both async, and every
  parameter the double accepts has the real parameter's name, kind, position and default
  (a default on one side only is a mismatch); every parameter the real method requires is
  accepted by the double.
This fails when the installed livekit.rtc changes a member the double mirrors, and when someone
adds a member to a double that the real class lacks.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from livekit import rtc
from livekit.rtc.room import EventTypes as RoomEventTypes

from worker import local_room
from worker.local_room import LocalRoom

PAIRS: list[tuple[type, type]] = [
    (local_room.LocalRoom, rtc.Room),
    (local_room.LocalParticipant, rtc.LocalParticipant),
    (local_room.RemoteParticipant, rtc.RemoteParticipant),
    (local_room.LocalTrackPublication, rtc.LocalTrackPublication),
    (local_room.RemoteTrackPublication, rtc.RemoteTrackPublication),
    (local_room.TextStreamReader, rtc.TextStreamReader),
]

_MISSING = object()


def _is_method(attr: object) -> bool:
    return isinstance(attr, (staticmethod, classmethod)) or inspect.isfunction(attr)


def _function(attr: Any) -> Any:
    return attr.__func__ if isinstance(attr, (staticmethod, classmethod)) else attr


def _same_default(a: object, b: object) -> bool:
    if isinstance(a, Sequence) and isinstance(b, Sequence) and not isinstance(a, (str, bytes)):
        return tuple(a) == tuple(b)  # `()` on the double for the real `[]`
    return a == b


def signature_problems(name: str, double_fn: Any, real_fn: Any) -> list[str]:
    problems: list[str] = []
    if inspect.iscoroutinefunction(double_fn) != inspect.iscoroutinefunction(real_fn):
        problems.append(f"{name}: async-ness differs from the real method")
    double_params = list(inspect.signature(double_fn).parameters.values())
    real_params = list(inspect.signature(real_fn).parameters.values())
    real_by_name = {p.name: p for p in real_params}
    for index, param in enumerate(double_params):
        real = real_by_name.get(param.name)
        if real is None:
            problems.append(f"{name}: parameter {param.name!r} does not exist on the real method")
            continue
        if param.kind != real.kind:
            problems.append(f"{name}: parameter {param.name!r} is {param.kind}, real {real.kind}")
        positional = (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)
        if param.kind in positional and real_params.index(real) != index:
            problems.append(f"{name}: parameter {param.name!r} is at another position")
        has_default = param.default is not param.empty
        real_has_default = real.default is not real.empty
        if has_default != real_has_default:
            problems.append(f"{name}: parameter {param.name!r} default present on one side only")
        elif has_default and not _same_default(param.default, real.default):
            problems.append(
                f"{name}: parameter {param.name!r} default {param.default!r} != {real.default!r}"
            )
    double_names = {p.name for p in double_params}
    for real in real_params:
        variadic = real.kind in (real.VAR_POSITIONAL, real.VAR_KEYWORD)
        if real.default is real.empty and not variadic and real.name not in double_names:
            problems.append(f"{name}: required real parameter {real.name!r} is not accepted")
    return problems


def contract_problems(double: object, real_cls: type, driver_members: frozenset[str]) -> list[str]:
    problems: list[str] = []
    members = {n for n in dir(double) if not n.startswith("_")} - driver_members
    for name in sorted(members):
        label = f"{type(double).__name__}.{name}"
        real_attr = inspect.getattr_static(real_cls, name, _MISSING)
        if real_attr is _MISSING:
            problems.append(f"{label}: {real_cls.__qualname__} has no such member")
            continue
        double_attr = inspect.getattr_static(type(double), name, _MISSING)
        if isinstance(real_attr, property):
            if _is_method(double_attr):
                problems.append(f"{label}: a property on the real class, a method here")
        elif _is_method(real_attr):
            if not _is_method(double_attr):
                problems.append(f"{label}: a method on the real class, not a method here")
            elif isinstance(double_attr, staticmethod) != isinstance(real_attr, staticmethod):
                problems.append(f"{label}: staticmethod on one side only")
            else:
                problems += signature_problems(label, _function(double_attr), _function(real_attr))
        elif _is_method(double_attr) or isinstance(double_attr, property):
            problems.append(f"{label}: a plain attribute on the real class")
    return problems


@pytest.fixture
async def doubles() -> AsyncIterator[dict[type, object]]:
    room = LocalRoom()
    user = room.add_participant("user")
    mic = user.publish_microphone()
    source = rtc.AudioSource(24000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("voice", source)
    publication = await room.local_participant.publish_track(track)
    readers: list[object] = []
    room.register_text_stream_handler("t", lambda reader, _sender: readers.append(reader))
    user.send_text_stream("hello", topic="t")
    yield {
        local_room.TextStreamReader: readers[0],
        local_room.LocalRoom: room,
        local_room.LocalParticipant: room.local_participant,
        local_room.RemoteParticipant: user,
        local_room.LocalTrackPublication: publication,
        local_room.RemoteTrackPublication: mic.publication,
    }
    await room.aclose()
    await source.aclose()


@pytest.mark.parametrize(("double_cls", "real_cls"), PAIRS, ids=lambda c: c.__qualname__)
def test_double_members_exist_on_the_real_class_with_compatible_signatures(
    doubles: dict[type, object], double_cls: type, real_cls: type
) -> None:
    double = doubles[double_cls]
    assert type(double) is double_cls
    driver_members: frozenset[str] = double_cls.DRIVER_MEMBERS  # type: ignore[attr-defined]
    assert contract_problems(double, real_cls, driver_members) == []


@pytest.mark.parametrize(("double_cls", "real_cls"), PAIRS, ids=lambda c: c.__qualname__)
def test_driver_members_are_not_real_members(double_cls: type, real_cls: type) -> None:
    """A driver-only name that the real class also has would dodge the signature check."""
    driver_members: frozenset[str] = double_cls.DRIVER_MEMBERS  # type: ignore[attr-defined]
    assert "DRIVER_MEMBERS" in driver_members
    assert [n for n in driver_members if hasattr(real_cls, n)] == []


@pytest.mark.parametrize(("double_cls", "real_cls"), PAIRS, ids=lambda c: c.__qualname__)
def test_doubles_offer_what_the_framework_uses(
    doubles: dict[type, object], double_cls: type, real_cls: type
) -> None:
    """The members livekit-agents 0.12.21 reads (pipeline, transcription, JobContext) are there."""
    used = {
        rtc.Room: {
            "on",
            "off",
            "remote_participants",
            "isconnected",
            "local_participant",
            "connect",
        },
        rtc.LocalParticipant: {
            "identity",
            "track_publications",
            "publish_track",
            "set_attributes",
            "publish_transcription",
            "publish_data",
        },
        rtc.RemoteParticipant: {"identity", "kind", "track_publications"},
        rtc.TextStreamReader: {"info", "read_all"},
        rtc.LocalTrackPublication: {"sid", "source", "wait_for_subscription"},
        rtc.RemoteTrackPublication: {
            "sid",
            "source",
            "kind",
            "subscribed",
            "set_subscribed",
            "track",
        },
    }[real_cls]
    assert used - set(dir(doubles[double_cls])) == set()


def test_emitted_events_are_real_room_events() -> None:
    assert local_room.EMITTED_EVENTS - set(typing.get_args(RoomEventTypes)) == set()


# -- the checker itself catches the drift it exists for -----------------------------------------


class _RealThing:
    @property
    def identity(self) -> str:
        return ""

    async def publish(self, payload: bytes, *, reliable: bool = True, topic: str = "") -> None:
        return None

    def isconnected(self) -> bool:
        return True


class _DriftedThing:
    identity = "plain attribute is fine for a property"

    def publish(self, payload: bytes, *, reliable: bool, topic: str = "x") -> None:
        return None

    @property
    def isconnected(self) -> bool:
        return True

    def extra(self) -> None:
        return None

    def driver_only(self) -> None:
        return None


def test_checker_reports_every_kind_of_drift() -> None:
    problems = contract_problems(_DriftedThing(), _RealThing, frozenset({"driver_only"}))
    assert problems == [
        "_DriftedThing.extra: _RealThing has no such member",
        "_DriftedThing.isconnected: a method on the real class, not a method here",
        "_DriftedThing.publish: async-ness differs from the real method",
        "_DriftedThing.publish: parameter 'reliable' default present on one side only",
        "_DriftedThing.publish: parameter 'topic' default 'x' != ''",
    ]


def test_checker_reports_renamed_and_missing_parameters() -> None:
    async def real(self: Any, track_sid: str, *, reason: int = 0) -> None:
        return None

    async def renamed(self: Any, sid: str) -> None:
        return None

    async def positional_reason(self: Any, track_sid: str, reason: int = 0) -> None:
        return None

    assert signature_problems("m", renamed, real) == [
        "m: parameter 'sid' does not exist on the real method",
        "m: required real parameter 'track_sid' is not accepted",
    ]
    assert signature_problems("m", positional_reason, real) == [
        "m: parameter 'reason' is POSITIONAL_OR_KEYWORD, real KEYWORD_ONLY",
    ]
