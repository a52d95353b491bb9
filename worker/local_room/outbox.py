"""What the agent sent into the in-process room: data, transcriptions, attributes, tracks, audio."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livekit import rtc

from worker.local_room.recorder import AudioRecorder, Waiters

if TYPE_CHECKING:
    from worker.local_room.room import LocalTrackPublication


@dataclass(frozen=True)
class SentData:
    payload: bytes
    topic: str
    reliable: bool
    destination_identities: tuple[str, ...]
    at: float
    """time.perf_counter() when it was published."""
    wall_time: float
    """time.time() when it was published."""

    def json(self) -> Any:
        return json.loads(self.payload.decode("utf-8"))


@dataclass(frozen=True)
class SentTranscription:
    participant_identity: str
    track_sid: str
    segments: tuple[rtc.TranscriptionSegment, ...]
    at: float

    @property
    def text(self) -> str:
        return "".join(s.text for s in self.segments)

    @property
    def final(self) -> bool:
        return bool(self.segments) and all(s.final for s in self.segments)


@dataclass(frozen=True)
class SentText:
    """A text stream the agent sent (``send_text``)."""

    text: str
    topic: str
    destination_identities: tuple[str, ...]
    at: float


@dataclass(frozen=True)
class AttributeUpdate:
    changed: Mapping[str, str]
    at: float


class Outbox:
    """Everything the agent (the local participant) sent into the room, in order."""

    def __init__(self) -> None:
        self.data: list[SentData] = []
        self.transcriptions: list[SentTranscription] = []
        self.texts: list[SentText] = []
        self.attribute_updates: list[AttributeUpdate] = []
        self.published: list[LocalTrackPublication] = []
        self.unpublished: list[str] = []
        self.audio: list[AudioRecorder] = []
        """One recorder per audio track the agent published, in publication order."""
        self._waiters = Waiters()

    def data_on(self, topic: str) -> list[SentData]:
        return [d for d in self.data if d.topic == topic]

    def attribute_values(self, key: str) -> list[str]:
        """Every value the agent set ``key`` to, in order (e.g. ``lk.agent.state``)."""
        return [u.changed[key] for u in self.attribute_updates if key in u.changed]

    def transcriptions_of(self, identity: str) -> list[SentTranscription]:
        return [t for t in self.transcriptions if t.participant_identity == identity]

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        *,
        timeout: float = 30.0,
    ) -> None:
        """Return once ``predicate()`` holds (checked after each change); TimeoutError otherwise."""
        await self._waiters.wait_until(predicate, timeout, self._summary)

    def notify(self) -> None:
        self._waiters.notify()

    def _summary(self) -> str:
        updates = [dict(u.changed) for u in self.attribute_updates]
        return (
            f"outbox has {len(self.data)} data messages, {len(self.transcriptions)} "
            f"transcriptions, attribute updates {updates}, {len(self.published)} published tracks"
        )
