"""The agent hears the microphone in 50 ms frames (real Silero VAD on espeak-ng speech, the real
Deepgram plugin against the loopback server) and closes the stream it opened."""

from __future__ import annotations

import aiohttp
import pytest
from livekit import rtc

from tests.conftest import eventually, open_ffi_subscriptions
from tests.loopback.deepgram_server import DeepgramLoopback
from tests.speech import speak
from worker.config import load_settings
from worker.local_room import LocalRoom, as_rtc_room
from worker.pipeline.adapter import MicrophoneInput
from worker.providers.selection import build_stt, load_vad
from worker.room_io.utterance_audio import TappedVAD

pytestmark = pytest.mark.timeout(60)


async def test_the_microphone_is_heard_in_50_ms_frames_and_its_stream_closed() -> None:
    async with DeepgramLoopback() as dg, aiohttp.ClientSession() as http:
        dg.transcripts.append("what time is it")
        settings = load_settings(
            {
                "DEEPGRAM_API_KEY": "dg-test",
                "OPENAI_API_KEY": "sk-test",
                "DEEPGRAM_STT_URL": dg.stt_url,
                "DEEPGRAM_TTS_URL": dg.tts_url,
            },
            dotenv=None,
        )
        speech_to_text = build_stt(settings, http_session=http)
        room = LocalRoom()
        user = room.add_participant("user")
        mic = user.publish_microphone()
        rtc_room = as_rtc_room(room)

        frames: list[rtc.AudioFrame] = []
        events: list[str] = []
        finals: list[str] = []
        before = open_ffi_subscriptions()
        heard = MicrophoneInput(
            room=rtc_room,
            vad=TappedVAD(load_vad(), on_frame=frames.append, on_event=lambda ev: None),
            stt=speech_to_text,
            participant=rtc_room.remote_participants[user.identity],
            transcription=False,
        )
        heard.on("start_of_speech", lambda ev: events.append("start"))
        heard.on("end_of_speech", lambda ev: events.append("end"))
        heard.on("final_transcript", lambda ev: finals.append(ev.alternatives[0].text))
        try:
            await mic.push(speak("what time is it in Paris", mic.sample_rate), mic.sample_rate)
            await mic.push_silence(1.0)
            await eventually(lambda: "end" in events and bool(finals))
            # VAD and STT work as before on the longer frames
            assert events == ["start", "end"]
            assert finals == ["what time is it"]
            assert len(frames) > 20
            # 50 ms frames at 16 kHz mono (what the VAD and the STT take)
            assert {(f.sample_rate, f.num_channels, f.samples_per_channel) for f in frames} == {
                (16000, 1, 800)
            }
        finally:
            await heard.aclose()
            await speech_to_text.aclose()
        # both streams gone: 0.12's (closed unread) and ours (0.12 leaves its own open)
        assert open_ffi_subscriptions() == before
