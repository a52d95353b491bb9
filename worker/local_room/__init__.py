"""The in-process LiveKit room: the only test double, and the room of the offline ``talk``.

``room`` holds the room and its participants (the members of ``livekit.rtc`` the agent uses),
``recorder`` reads the agent's published audio back, ``outbox`` keeps everything the agent sent.
"""

from worker.local_room.outbox import AttributeUpdate, Outbox, SentData, SentText, SentTranscription
from worker.local_room.recorder import SILENCE_PEAK, AudioRecorder, ReceivedFrame
from worker.local_room.room import (
    EMITTED_EVENTS,
    LocalParticipant,
    LocalRoom,
    LocalRoomOptions,
    LocalTrackPublication,
    Microphone,
    RemoteParticipant,
    RemoteTrackPublication,
    TextStreamReader,
    VideoFeed,
    as_rtc_participant,
    as_rtc_room,
)

__all__ = [
    "EMITTED_EVENTS",
    "SILENCE_PEAK",
    "AttributeUpdate",
    "AudioRecorder",
    "LocalParticipant",
    "LocalRoom",
    "LocalRoomOptions",
    "LocalTrackPublication",
    "Microphone",
    "Outbox",
    "ReceivedFrame",
    "RemoteParticipant",
    "RemoteTrackPublication",
    "SentData",
    "SentText",
    "SentTranscription",
    "TextStreamReader",
    "VideoFeed",
    "as_rtc_participant",
    "as_rtc_room",
]
