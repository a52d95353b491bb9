"""An in-process LiveKit room: the project's only test double, and the room of ``worker talk``.

What it models (one process, one event loop):

- The part of ``rtc.Room`` / ``rtc.LocalParticipant`` / ``rtc.RemoteParticipant`` /
  ``rtc.RemoteTrackPublication`` / ``rtc.LocalTrackPublication`` that livekit-agents 0.12.21
  (``VoicePipelineAgent``, ``JobContext``, the transcription forwarders) and this project use.
  Each member it offers has the real member's name and signature; a contract test
  (tests/test_local_room_contract.py) checks that against the installed ``livekit.rtc``.
- Media is real. A remote participant's microphone is a real ``rtc.LocalAudioTrack`` fed by a
  real ``rtc.AudioSource`` (paced in real time by the source, silence when nothing is pushed,
  like a live microphone); cameras and screen shares are real ``rtc.LocalVideoTrack`` fed by a
  real ``rtc.VideoSource``. The agent opens ordinary ``rtc.AudioStream`` / ``rtc.VideoStream``
  on them. Every audio track the agent publishes is read back by an :class:`AudioRecorder`
  (a real ``rtc.AudioStream``), with receive timestamps.
- Events fire through ``rtc.EventEmitter`` with the real names and argument order:
  participant_connected/disconnected, track_published/unpublished, track_subscribed/
  unsubscribed, local_track_published/unpublished/subscribed, data_received (a real
  ``rtc.DataPacket``), participant_attributes_changed, connection_state_changed, connected,
  disconnected. Driver actions (a participant joins, publishes, sends data, leaves) fire their
  events synchronously; ``set_subscribed`` completes one loop turn later, like the SDK's
  asynchronous subscription, so ``publication.track`` is None right after the call.
- Everything the agent sends is kept in :class:`Outbox` (data messages, transcriptions,
  attribute updates, published/unpublished tracks, recorded audio).

What it does not model: any network or SFU (no codecs, loss, latency, reconnection), RPC,
text/byte streams, E2EE, permissions, muting, simulcast, active speakers, connection quality,
remote participants receiving each other's media, and the 15 KiB data packet limit (payload
sizes are recorded so tests can assert on them, not enforced). Unsubscribing or disconnecting
does not end streams already open on a remote track; unpublishing, leaving and ``aclose()`` do.

Differences that code under test must tolerate:

- The doubles are not instances of the ``rtc`` classes. ``VoicePipelineAgent.start(room,
  participant)`` checks ``isinstance(participant, rtc.RemoteParticipant)``: pass
  ``participant.identity`` instead (works with the real room too).
- A remote participant's tracks are ``rtc.LocalAudioTrack`` / ``rtc.LocalVideoTrack``, not
  ``rtc.RemoteAudioTrack`` / ``rtc.RemoteVideoTrack``.
- Use :func:`as_rtc_room` / :func:`as_rtc_participant` to hand the doubles to code typed for
  the real classes (one named cast instead of ``type: ignore`` everywhere).

Members only a test or the ``talk`` driver may use are listed in each class's
``DRIVER_MEMBERS``; the contract test skips exactly those.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, cast

import numpy as np
from livekit import rtc
from livekit.agents.utils import shortuuid
from livekit.rtc.data_stream import TextStreamHandler
from livekit.rtc.participant import PublishDataError, PublishTrackError
from livekit.rtc.room import EventTypes as RoomEventTypes

from worker.local_room.outbox import AttributeUpdate, Outbox, SentData, SentText, SentTranscription
from worker.local_room.recorder import AudioRecorder
from worker.pipeline.adapter import end_track, set_track_sid

logger = logging.getLogger("worker.local_room.room")

EMITTED_EVENTS: frozenset[str] = frozenset(
    {
        "participant_connected",
        "participant_disconnected",
        "track_published",
        "track_unpublished",
        "track_subscribed",
        "track_unsubscribed",
        "local_track_published",
        "local_track_unpublished",
        "local_track_subscribed",
        "data_received",
        "participant_attributes_changed",
        "connection_state_changed",
        "connected",
        "disconnected",
    }
)
"""Every room event name LocalRoom emits (the contract test checks them against rtc)."""


def as_rtc_room(room: LocalRoom) -> rtc.Room:
    """The double, typed as the real room it stands in for (no conversion happens)."""
    return cast(rtc.Room, room)


def as_rtc_participant(participant: RemoteParticipant) -> rtc.RemoteParticipant:
    """The double, typed as the real remote participant it stands in for."""
    return cast(rtc.RemoteParticipant, participant)


@dataclass(frozen=True)
class LocalRoomOptions:
    connected: bool = True
    """Start as a room the agent has already joined (``connect()`` is then a no-op)."""
    auto_subscribe: bool = True
    """The agent subscribes to every remote track as it is published (``RoomOptions`` default)."""
    record_sample_rate: int | None = 48000
    """Rate the agent's published audio is recorded at; None disables recording."""
    record_frame_ms: int = 10
    """Frame size the recording is read in (see :class:`AudioRecorder`)."""


# --------------------------------------------------------------------------------------------
# The agent's side


class LocalTrackPublication:
    """Stands in for ``rtc.LocalTrackPublication``."""

    DRIVER_MEMBERS: ClassVar[frozenset[str]] = frozenset({"DRIVER_MEMBERS"})

    def __init__(self, track: rtc.LocalTrack, source: rtc.TrackSource.ValueType) -> None:
        self._sid = shortuuid("TR_")
        self._track: rtc.LocalTrack | None = track
        self._name = track.name
        self._kind = track.kind
        self._source = source
        self._first_subscription: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> rtc.TrackKind.ValueType:
        return self._kind

    @property
    def source(self) -> rtc.TrackSource.ValueType:
        return self._source

    @property
    def track(self) -> rtc.LocalTrack | None:
        return self._track

    async def wait_for_subscription(self) -> None:
        await asyncio.shield(self._first_subscription)

    def _mark_subscribed(self) -> bool:
        if self._first_subscription.done():
            return False
        self._first_subscription.set_result(None)
        return True

    def __repr__(self) -> str:
        return f"local_room.LocalTrackPublication(sid={self.sid}, name={self.name})"


class LocalParticipant:
    """Stands in for ``rtc.LocalParticipant`` (the agent); records what it sends in the Outbox."""

    DRIVER_MEMBERS: ClassVar[frozenset[str]] = frozenset({"DRIVER_MEMBERS"})

    def __init__(self, room: LocalRoom, identity: str) -> None:
        self._room = room
        self._identity = identity
        self._sid = shortuuid("PA_")
        self._attributes: dict[str, str] = {}
        self._track_publications: dict[str, LocalTrackPublication] = {}

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._attributes)

    @property
    def track_publications(self) -> Mapping[str, LocalTrackPublication]:
        return self._track_publications

    async def publish_track(
        self, track: rtc.LocalTrack, options: rtc.TrackPublishOptions = rtc.TrackPublishOptions()
    ) -> LocalTrackPublication:
        if not self._room.isconnected():
            raise PublishTrackError("the room is not connected")
        publication = LocalTrackPublication(track, options.source)
        set_track_sid(track, publication.sid)
        self._track_publications[publication.sid] = publication
        await self._room._on_local_track_published(publication, track)
        return publication

    async def unpublish_track(self, track_sid: str) -> None:
        publication = self._track_publications.pop(track_sid)
        publication._track = None
        await self._room._on_local_track_unpublished(publication)

    async def set_attributes(self, attributes: dict[str, str]) -> None:
        changed = {k: v for k, v in attributes.items() if self._attributes.get(k) != v}
        self._attributes.update(attributes)
        self._room.outbox.attribute_updates.append(
            AttributeUpdate(changed=dict(attributes), at=time.perf_counter())
        )
        self._room.outbox.notify()
        if changed:
            self._room.emit("participant_attributes_changed", changed, self)
        await asyncio.sleep(0)

    async def publish_transcription(self, transcription: rtc.Transcription) -> None:
        self._room.outbox.transcriptions.append(
            SentTranscription(
                participant_identity=transcription.participant_identity,
                track_sid=transcription.track_sid,
                segments=tuple(replace(s) for s in transcription.segments),
                at=time.perf_counter(),
            )
        )
        self._room.outbox.notify()
        await asyncio.sleep(0)

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: Sequence[str] = (),
        topic: str = "",
    ) -> None:
        if not self._room.isconnected():
            raise PublishDataError("the room is not connected")
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        self._room.outbox.data.append(
            SentData(
                payload=data,
                topic=topic,
                reliable=reliable,
                destination_identities=tuple(destination_identities),
                at=time.perf_counter(),
                wall_time=time.time(),
            )
        )
        self._room.outbox.notify()
        await asyncio.sleep(0)

    async def send_text(
        self,
        text: str,
        *,
        destination_identities: list[str] | None = None,
        topic: str = "",
        attributes: dict[str, str] | None = None,
        reply_to_id: str | None = None,
    ) -> rtc.TextStreamInfo:
        if not self._room.isconnected():
            raise PublishDataError("the room is not connected")
        info = rtc.TextStreamInfo(
            stream_id=shortuuid("TS_"),
            mime_type="text/plain",
            topic=topic,
            timestamp=int(time.time() * 1000),
            size=len(text.encode("utf-8")),
            attributes=dict(attributes or {}),
            attachments=[],
        )
        self._room.outbox.texts.append(
            SentText(
                text=text,
                topic=topic,
                destination_identities=tuple(destination_identities or ()),
                at=time.perf_counter(),
            )
        )
        self._room.outbox.notify()
        await asyncio.sleep(0)
        return info

    def __repr__(self) -> str:
        return f"local_room.LocalParticipant(identity={self.identity})"


# --------------------------------------------------------------------------------------------
# The remote side (driven by a test or the talk command)


class RemoteTrackPublication:
    """Stands in for ``rtc.RemoteTrackPublication``; ``track`` is set while subscribed."""

    DRIVER_MEMBERS: ClassVar[frozenset[str]] = frozenset({"DRIVER_MEMBERS"})

    def __init__(
        self,
        participant: RemoteParticipant,
        media_track: rtc.LocalAudioTrack | rtc.LocalVideoTrack,
        source: rtc.TrackSource.ValueType,
    ) -> None:
        self._participant = participant
        self._media_track = media_track
        self._sid = shortuuid("TR_")
        set_track_sid(media_track, self._sid)
        self._name = media_track.name
        self._kind = media_track.kind
        self._source = source
        self._subscribed = False
        self._wanted = False
        self._published = True
        self._pending: asyncio.Handle | None = None

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> rtc.TrackKind.ValueType:
        return self._kind

    @property
    def source(self) -> rtc.TrackSource.ValueType:
        return self._source

    @property
    def subscribed(self) -> bool:
        return self._subscribed

    @property
    def track(self) -> rtc.Track | None:
        return self._media_track if self._subscribed else None

    def set_subscribed(self, subscribed: bool) -> None:
        """Takes effect one loop turn later (the SDK's request is asynchronous too)."""
        self._wanted = subscribed
        if self._pending is None and self._published:
            self._pending = asyncio.get_running_loop().call_soon(self._apply_subscription)

    def _apply_subscription(self) -> None:
        self._pending = None
        if not self._published or self._wanted == self._subscribed:
            return
        room = self._participant._room
        self._subscribed = self._wanted
        event: RoomEventTypes = "track_subscribed" if self._subscribed else "track_unsubscribed"
        room.emit(event, self._media_track, self, self._participant)

    def _unpublish(self) -> None:
        """Drop the subscription (with its event) and stop any pending one."""
        was_subscribed = self._subscribed
        self._unpublish_quietly()
        if was_subscribed:
            room = self._participant._room
            room.emit("track_unsubscribed", self._media_track, self, self._participant)

    def _unpublish_quietly(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._published = False
        self._subscribed = False

    def __repr__(self) -> str:
        return f"local_room.RemoteTrackPublication(sid={self.sid}, name={self.name})"


class Microphone:
    """A remote participant's published microphone: push int16 audio into it.

    ``push`` returns once the audio is queued (at most ``queue_ms`` ahead of real time); use
    ``wait_for_playout`` to wait until it has all been "spoken".
    """

    def __init__(
        self,
        publication: RemoteTrackPublication,
        source: rtc.AudioSource,
        track: rtc.LocalAudioTrack,
    ) -> None:
        self.publication = publication
        self.source = source
        self.track = track

    @property
    def sample_rate(self) -> int:
        return self.source.sample_rate

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        """Feed one frame; it must have the microphone's sample rate and channel count."""
        await self.source.capture_frame(frame)

    async def push(self, samples: np.ndarray, sample_rate: int) -> None:
        """Feed mono int16 samples at ``sample_rate`` (resampled with rtc.AudioResampler; push
        whole utterances rather than tiny pieces when the rates differ; copied to every
        channel of a multi-channel microphone)."""
        if samples.dtype != np.int16 or samples.ndim != 1:
            raise TypeError(f"expected mono int16 samples, got {samples.dtype} {samples.shape}")
        pcm = np.ascontiguousarray(samples)
        if sample_rate != self.source.sample_rate:
            resampler = rtc.AudioResampler(sample_rate, self.source.sample_rate, num_channels=1)
            frame = rtc.AudioFrame(pcm.tobytes(), sample_rate, 1, pcm.size)
            frames = [*resampler.push(frame), *resampler.flush()]
            pcm = np.concatenate(
                [np.frombuffer(f.data, dtype=np.int16) for f in frames]
                or [np.zeros(0, dtype=np.int16)]
            )
        channels = self.source.num_channels
        step = self.source.sample_rate // 100  # 10 ms frames, like a WebRTC capturer
        for start in range(0, pcm.size, step):
            chunk = pcm[start : start + step]
            data = np.repeat(chunk, channels) if channels > 1 else chunk  # interleaved
            await self.source.capture_frame(
                rtc.AudioFrame(data.tobytes(), self.source.sample_rate, channels, chunk.size)
            )

    async def push_silence(self, seconds: float) -> None:
        await self.push(
            np.zeros(round(seconds * self.sample_rate), dtype=np.int16), self.sample_rate
        )

    async def wait_for_playout(self) -> None:
        await self.source.wait_for_playout()


class VideoFeed:
    """A remote participant's published camera or screen share."""

    def __init__(
        self,
        publication: RemoteTrackPublication,
        source: rtc.VideoSource,
        track: rtc.LocalVideoTrack,
    ) -> None:
        self.publication = publication
        self.source = source
        self.track = track

    def capture_frame(self, frame: rtc.VideoFrame) -> None:
        self.source.capture_frame(frame, timestamp_us=int(time.monotonic() * 1_000_000))


class TextStreamReader:
    """Stands in for ``rtc.TextStreamReader``: a text stream a participant sent, in chunks."""

    DRIVER_MEMBERS: ClassVar[frozenset[str]] = frozenset({"DRIVER_MEMBERS"})

    def __init__(self, info: rtc.TextStreamInfo, chunks: Sequence[str]) -> None:
        self._info = info
        self._chunks = list(chunks)

    @property
    def info(self) -> rtc.TextStreamInfo:
        return self._info

    def __aiter__(self) -> AsyncIterator[str]:
        return self

    async def __anext__(self) -> str:
        await asyncio.sleep(0)  # chunks arrive one by one, as from the FFI
        if not self._chunks:
            raise StopAsyncIteration
        return self._chunks.pop(0)

    async def read_all(self) -> str:
        return "".join([chunk async for chunk in self])


class RemoteParticipant:
    """Stands in for ``rtc.RemoteParticipant``; also the handle a driver publishes media with."""

    DRIVER_MEMBERS: ClassVar[frozenset[str]] = frozenset(
        {
            "DRIVER_MEMBERS",
            "publish_microphone",
            "publish_camera",
            "publish_screen_share",
            "unpublish",
            "send_data",
            "send_text_stream",
        }
    )

    def __init__(
        self,
        room: LocalRoom,
        identity: str,
        kind: rtc.ParticipantKind.ValueType,
        attributes: Mapping[str, str],
    ) -> None:
        self._room = room
        self._identity = identity
        self._sid = shortuuid("PA_")
        self._kind = kind
        self._attributes = dict(attributes)
        self._track_publications: dict[str, RemoteTrackPublication] = {}
        self._sources: dict[str, rtc.AudioSource | rtc.VideoSource] = {}

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def sid(self) -> str:
        return self._sid

    @property
    def kind(self) -> rtc.ParticipantKind.ValueType:
        return self._kind

    @property
    def attributes(self) -> dict[str, str]:
        return dict(self._attributes)

    @property
    def track_publications(self) -> Mapping[str, RemoteTrackPublication]:
        return self._track_publications

    # -- driver-only ---------------------------------------------------------------------------

    def publish_microphone(
        self,
        *,
        name: str = "microphone",
        sample_rate: int = 48000,
        num_channels: int = 1,
        queue_ms: int = 1000,
    ) -> Microphone:
        """Publish a microphone (fires track_published, then track_subscribed if the room
        auto-subscribes, one loop turn later).

        The source plays silence whenever its queue runs dry, so a driver starved of CPU for
        longer than ``queue_ms`` would cut a pause into the user's speech that they never made;
        the SDK's own default queue covers the stalls of a loaded machine."""
        source = rtc.AudioSource(sample_rate, num_channels, queue_size_ms=queue_ms)
        track = rtc.LocalAudioTrack.create_audio_track(name, source)
        publication = self._publish(track, rtc.TrackSource.SOURCE_MICROPHONE, source)
        return Microphone(publication, source, track)

    def publish_camera(
        self, *, width: int = 640, height: int = 480, name: str = "camera"
    ) -> VideoFeed:
        return self._publish_video(width, height, name, rtc.TrackSource.SOURCE_CAMERA)

    def publish_screen_share(
        self, *, width: int = 1280, height: int = 720, name: str = "screen"
    ) -> VideoFeed:
        return self._publish_video(width, height, name, rtc.TrackSource.SOURCE_SCREENSHARE)

    async def unpublish(self, track_sid: str) -> None:
        """Unpublish a track: track_unsubscribed (if subscribed), then track_unpublished."""
        publication = self._track_publications.pop(track_sid)
        publication._unpublish()
        self._room.emit("track_unpublished", publication, self)
        await self._release(publication)

    def send_data(self, payload: bytes | str, *, topic: str = "", reliable: bool = True) -> None:
        """Send a data message to the agent (fires data_received with a real rtc.DataPacket)."""
        data = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
        kind = rtc.DataPacketKind.KIND_RELIABLE if reliable else rtc.DataPacketKind.KIND_LOSSY
        packet = rtc.DataPacket(
            data=data, kind=kind, participant=as_rtc_participant(self), topic=topic
        )
        self._room.emit("data_received", packet)

    def send_text_stream(self, text: str, *, topic: str, chunk_chars: int = 100) -> bool:
        """Send a text stream to the agent, in chunks of ``chunk_chars`` characters, to the
        handler registered for ``topic`` (as the SDK does); False when none is."""
        handler = self._room._text_stream_handlers.get(topic)
        if handler is None:
            return False
        info = rtc.TextStreamInfo(
            stream_id=shortuuid("TS_"),
            mime_type="text/plain",
            topic=topic,
            timestamp=int(time.time() * 1000),
            size=len(text.encode("utf-8")),
            attributes={},
            attachments=[],
        )
        chunks = [text[i : i + chunk_chars] for i in range(0, len(text), chunk_chars)]
        handler(TextStreamReader(info, chunks), self._identity)  # type: ignore[arg-type]
        return True

    # -- internals -----------------------------------------------------------------------------

    def _publish_video(
        self, width: int, height: int, name: str, source_kind: rtc.TrackSource.ValueType
    ) -> VideoFeed:
        screencast = source_kind == rtc.TrackSource.SOURCE_SCREENSHARE
        source = rtc.VideoSource(width, height, is_screencast=screencast)
        track = rtc.LocalVideoTrack.create_video_track(name, source)
        publication = self._publish(track, source_kind, source)
        return VideoFeed(publication, source, track)

    def _publish(
        self,
        track: rtc.LocalAudioTrack | rtc.LocalVideoTrack,
        source_kind: rtc.TrackSource.ValueType,
        source: rtc.AudioSource | rtc.VideoSource,
    ) -> RemoteTrackPublication:
        if self._room.remote_participants.get(self._identity) is not self:
            raise RuntimeError(f"{self._identity} has left the room")
        publication = RemoteTrackPublication(self, track, source_kind)
        self._track_publications[publication.sid] = publication
        self._sources[publication.sid] = source
        logger.debug(
            "remote track published",
            extra={"identity": self._identity, "sid": publication.sid, "source": source_kind},
        )
        self._room.emit("track_published", publication, self)
        if self._room._auto_subscribe:
            publication.set_subscribed(True)
        return publication

    async def _leave(self) -> None:
        for sid in list(self._track_publications):
            await self.unpublish(sid)

    async def _release(self, publication: RemoteTrackPublication) -> None:
        end_track(publication._media_track)
        source = self._sources.pop(publication.sid, None)
        if source is not None:
            await source.aclose()

    async def _release_all(self) -> None:
        """Teardown without events: end every track and close every source."""
        for publication in list(self._track_publications.values()):
            publication._unpublish_quietly()
            await self._release(publication)
        self._track_publications.clear()

    def __repr__(self) -> str:
        return f"local_room.RemoteParticipant(identity={self.identity})"


# --------------------------------------------------------------------------------------------
# The room


class LocalRoom(rtc.EventEmitter[RoomEventTypes]):
    """Stands in for ``rtc.Room``. Build it inside a running event loop; close with ``aclose()``.

    Typical use::

        room = LocalRoom()
        user = room.add_participant("user")
        mic = user.publish_microphone()
        agent.start(as_rtc_room(room), user.identity)
        await mic.push(speech_int16, 16000)
        await room.outbox.wait_for(lambda: bool(room.outbox.audio))
        await room.outbox.audio[0].wait_for_audio(0.5, timeout=30)
        await room.aclose()
    """

    DRIVER_MEMBERS: ClassVar[frozenset[str]] = frozenset(
        {"DRIVER_MEMBERS", "add_participant", "remove_participant", "outbox", "aclose"}
    )

    def __init__(
        self,
        name: str = "local-room",
        *,
        agent_identity: str = "agent",
        options: LocalRoomOptions | None = None,
    ) -> None:
        super().__init__()
        opts = options or LocalRoomOptions()
        self._name = name
        self._connected = opts.connected
        self._auto_subscribe = opts.auto_subscribe
        self._record_sample_rate = opts.record_sample_rate
        self._record_frame_ms = opts.record_frame_ms
        self._local = LocalParticipant(self, agent_identity)
        self._remote: dict[str, RemoteParticipant] = {}
        self._subscribers: set[str] = set()  # remote identities that subscribe to agent tracks
        self._pending: set[asyncio.Handle] = set()
        self._text_stream_handlers: dict[str, TextStreamHandler] = {}
        self.outbox = Outbox()

    # -- rtc.Room surface ----------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def local_participant(self) -> LocalParticipant:
        return self._local

    @property
    def remote_participants(self) -> Mapping[str, RemoteParticipant]:
        return self._remote

    def register_text_stream_handler(self, topic: str, handler: TextStreamHandler) -> None:
        if topic in self._text_stream_handlers:
            raise ValueError(f"text stream handler for topic '{topic}' already set")
        self._text_stream_handlers[topic] = handler

    def unregister_text_stream_handler(self, topic: str) -> None:
        self._text_stream_handlers.pop(topic, None)

    def isconnected(self) -> bool:
        return self._connected

    async def connect(
        self, url: str, token: str, options: rtc.RoomOptions = rtc.RoomOptions()
    ) -> None:
        """No network: ``url`` and ``token`` are ignored; ``options.auto_subscribe`` is honoured."""
        self._auto_subscribe = options.auto_subscribe
        if self._connected:
            return
        self._connected = True
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_CONNECTED)
        self.emit("connected")
        await asyncio.sleep(0)

    async def disconnect(
        self, *, reason: rtc.DisconnectReason.ValueType = rtc.DisconnectReason.CLIENT_INITIATED
    ) -> None:
        if not self._connected:
            return
        self._connected = False
        for recorder in self.outbox.audio:
            await recorder.aclose()
        self.emit("connection_state_changed", rtc.ConnectionState.CONN_DISCONNECTED)
        self.emit("disconnected", reason)

    # -- driver-only ---------------------------------------------------------------------------

    def add_participant(
        self,
        identity: str,
        *,
        kind: rtc.ParticipantKind.ValueType = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        attributes: Mapping[str, str] | None = None,
        subscribe_to_agent: bool = True,
    ) -> RemoteParticipant:
        """A participant joins (fires participant_connected). With ``subscribe_to_agent`` it
        subscribes to the agent's audio tracks, which resolves their ``wait_for_subscription``."""
        if identity in self._remote or identity == self._local.identity:
            raise ValueError(f"identity {identity!r} is already in the room")
        participant = RemoteParticipant(self, identity, kind, attributes or {})
        self._remote[identity] = participant
        logger.debug("participant joined", extra={"room": self._name, "identity": identity})
        self.emit("participant_connected", participant)
        if subscribe_to_agent:
            self._subscribers.add(identity)
            for publication in self._local.track_publications.values():
                self._schedule_local_subscription(publication)
        return participant

    async def remove_participant(self, identity: str) -> None:
        """The participant leaves: its tracks are unpublished (track_unsubscribed,
        track_unpublished), then participant_disconnected fires."""
        participant = self._remote[identity]
        await participant._leave()
        del self._remote[identity]
        self._subscribers.discard(identity)
        logger.debug("participant left", extra={"room": self._name, "identity": identity})
        self.emit("participant_disconnected", participant)

    async def aclose(self) -> None:
        """Disconnect, stop recording, end every remote track (streams on them finish) and
        release the media sources. Fires no participant or track events."""
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()
        await self.disconnect()
        for recorder in self.outbox.audio:
            await recorder.aclose()
        for participant in list(self._remote.values()):
            await participant._release_all()

    # -- internals -----------------------------------------------------------------------------

    async def _on_local_track_published(
        self, publication: LocalTrackPublication, track: rtc.LocalTrack
    ) -> None:
        self.outbox.published.append(publication)
        logger.debug(
            "agent track published",
            extra={
                "sid": publication.sid,
                "track_name": publication.name,
                "source": publication.source,
            },
        )
        if self._record_sample_rate is not None and track.kind == rtc.TrackKind.KIND_AUDIO:
            self.outbox.audio.append(
                AudioRecorder(
                    track, sample_rate=self._record_sample_rate, frame_ms=self._record_frame_ms
                )
            )
        self.outbox.notify()
        self.emit("local_track_published", publication, track)
        self._schedule_local_subscription(publication)
        await asyncio.sleep(0)

    async def _on_local_track_unpublished(self, publication: LocalTrackPublication) -> None:
        self.outbox.unpublished.append(publication.sid)
        for recorder in self.outbox.audio:
            if recorder.track_sid == publication.sid:
                await recorder.aclose()
        self.outbox.notify()
        self.emit("local_track_unpublished", publication)

    def _schedule_local_subscription(self, publication: LocalTrackPublication) -> None:
        if not self._subscribers:
            return

        def subscribe() -> None:
            self._pending.discard(handle)
            track = publication.track
            if track is not None and publication._mark_subscribed():
                self.emit("local_track_subscribed", track)

        handle = asyncio.get_running_loop().call_soon(subscribe)
        self._pending.add(handle)
