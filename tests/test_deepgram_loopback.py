"""The loopback Deepgram server, driven by the real livekit-plugins-deepgram 0.7.4 client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from livekit import rtc
from livekit.agents import APIConnectOptions, stt, tts
from livekit.plugins import deepgram

from tests.loopback.deepgram_server import DeepgramLoopback, ListenOptions
from tests.speech import silence, speak

STT_RATE = 16000
TTS_RATE = 24000


@pytest.fixture
async def server() -> AsyncIterator[DeepgramLoopback]:
    async with DeepgramLoopback() as srv:
        yield srv


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _frames(samples: np.ndarray, rate: int = STT_RATE, ms: int = 20) -> list[rtc.AudioFrame]:
    step = rate * ms // 1000
    return [
        rtc.AudioFrame(
            data=samples[i : i + step].tobytes(),
            sample_rate=rate,
            num_channels=1,
            samples_per_channel=len(samples[i : i + step]),
        )
        for i in range(0, len(samples), step)
    ]


def _voiced_end(samples: np.ndarray, rate: int = STT_RATE) -> float:
    """Seconds at which the last clearly audible sample of ``samples`` ends."""
    loud = np.nonzero(np.abs(samples.astype(np.int32)) > 300)[0]
    return float(loud[-1] + 1) / rate


async def _recognize(
    server: DeepgramLoopback, http: aiohttp.ClientSession, audio: np.ndarray
) -> list[stt.SpeechEvent]:
    """Stream ``audio`` through the real plugin; return its events once the server closed.

    The 0.7.4 stream itself ends up to 5 s after CloseStream (its keepalive task sleeps 5 s
    between sends), so the test closes it as soon as the server has closed the socket: every
    message the server sent was read by then (the close frame comes after them).
    """
    client = deepgram.STT(base_url=server.stt_url, http_session=http, api_key="fake-key")
    stream = client.stream(conn_options=APIConnectOptions(max_retry=1, timeout=5.0))
    opened = len(server.listen_connections)

    async def collect() -> list[stt.SpeechEvent]:
        return [ev async for ev in stream if ev.type != stt.SpeechEventType.RECOGNITION_USAGE]

    collector = asyncio.create_task(collect())
    try:
        for frame in _frames(audio):
            stream.push_frame(frame)
        stream.end_input()

        def closed_stream() -> bool:
            conns = server.listen_connections[opened:]
            return (
                bool(conns)
                and "CloseStream" in [k for _, k in conns[-1].control]
                and all(c.closed_at is not None for c in conns)
            )

        await server.wait_until(closed_stream, timeout=20)
    finally:
        await stream.aclose()
    return await collector


async def test_stt_final_transcripts_follow_each_utterance(server, http):
    server.transcripts.extend(["what time is it", "thank you"])
    first = speak("what time is it", STT_RATE)
    second = speak("thank you very much", STT_RATE)
    audio = np.concatenate([first, silence(0.6), second, silence(0.6)])

    events = await _recognize(server, http, audio)

    kinds = [ev.type for ev in events if ev.type != stt.SpeechEventType.INTERIM_TRANSCRIPT]
    expected = [
        stt.SpeechEventType.START_OF_SPEECH,
        stt.SpeechEventType.FINAL_TRANSCRIPT,
        stt.SpeechEventType.END_OF_SPEECH,
    ]
    assert kinds == expected * 2
    finals = [ev for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [ev.alternatives[0].text for ev in finals] == ["what time is it", "thank you"]
    assert finals[0].request_id == server.listen_connections[0].request_id

    # Both finals were sent because enough silence followed the speech, not because of Finalize,
    # and each one final_delay after its speech ended, on the audio timeline.
    records = server.finals
    assert [r.from_finalize for r in records] == [False, False]
    assert records[0].speech_end == pytest.approx(_voiced_end(first), abs=0.03)
    for record in records:
        delay = record.audio_time - record.speech_end
        assert server.listen.final_delay <= delay < server.listen.final_delay + 0.06
    # The word timings span the utterance.
    words = finals[0].alternatives[0]
    assert words.start_time == pytest.approx(records[0].speech_start, abs=0.01)
    assert words.end_time == pytest.approx(records[0].speech_end, abs=0.01)

    conn = server.listen_connections[0]
    assert conn.query["sample_rate"] == str(STT_RATE)
    assert conn.audio_seconds == pytest.approx(len(audio) / STT_RATE, abs=0.06)
    assert [kind for _, kind in conn.control][-1] == "CloseStream"
    assert not server.transcripts


async def test_stt_interims_are_prefixes_and_pauses_split_or_join_segments(server, http):
    sentence = "please tell me the weather in paris tomorrow morning"
    server.transcripts.append(sentence)
    audio = np.concatenate([speak(sentence, STT_RATE), silence(0.5)])

    events = await _recognize(server, http, audio)
    interims = [ev for ev in events if ev.type == stt.SpeechEventType.INTERIM_TRANSCRIPT]
    assert interims
    assert all(sentence.startswith(ev.alternatives[0].text) for ev in interims)

    # A 0.4 s pause inside the utterance (~0.5 s with espeak's own padding): with the default
    # 0.1 s gap it is two segments ...
    half = np.concatenate([speak("turn on", STT_RATE), silence(0.4), speak("the lights", STT_RATE)])
    audio = np.concatenate([half, silence(0.5)])
    server.transcripts.extend(["turn on", "the lights"])
    events = await _recognize(server, http, audio)
    finals = [ev.alternatives[0].text for ev in events if ev.type == "final_transcript"]
    assert finals == ["turn on", "the lights"]

    # ... and with min_gap above the pause it is one.
    server.listen = ListenOptions(min_gap=1.0, final_delay=1.0)
    server.transcripts.append("turn on the lights")
    events = await _recognize(server, http, np.concatenate([half, silence(1.2)]))
    finals = [ev.alternatives[0].text for ev in events if ev.type == "final_transcript"]
    assert finals == ["turn on the lights"]


async def test_stt_finalize_sends_the_pending_final(server, http):
    # end_input right after speech: the final comes from Finalize, not from silence.
    server.transcripts.append("stop")
    audio = speak("stop", STT_RATE)
    events = await _recognize(server, http, audio[: round(_voiced_end(audio) * STT_RATE)])
    finals = [ev.alternatives[0].text for ev in events if ev.type == "final_transcript"]
    assert finals == ["stop"]
    assert [r.from_finalize for r in server.finals] == [True]


async def test_stt_dropped_connection_is_reconnected(server, http):
    server.listen_faults.drop_after_audio = 0.5
    server.transcripts.append("still here")
    client = deepgram.STT(base_url=server.stt_url, http_session=http, api_key="fake-key")
    stream = client.stream(conn_options=APIConnectOptions(max_retry=1, timeout=5.0))
    try:
        # The plugin forwards whatever is queued to the socket at once, so the audio after the
        # drop is pushed only once the plugin has reconnected (as a real-time source would be).
        for frame in _frames(silence(1.0)):
            stream.push_frame(frame)
        await server.wait_until(lambda: len(server.listen_connections) == 2)
        for frame in _frames(np.concatenate([speak("still here", STT_RATE), silence(0.5)])):
            stream.push_frame(frame)
        async for ev in stream:
            if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT:
                assert ev.alternatives[0].text == "still here"
                break
    finally:
        await stream.aclose()

    assert [c.dropped for c in server.listen_connections] == [True, False]
    assert server.listen_connections[0].audio_seconds >= 0.5
    assert server.finals[0].connection == 1


async def _synthesize_stream(
    client: deepgram.TTS, segments: list[str]
) -> list[tts.SynthesizedAudio]:
    stream = client.stream()
    for i, text in enumerate(segments):
        stream.push_text(text)
        if i < len(segments) - 1:
            stream.flush()
    stream.end_input()
    out = [ev async for ev in stream]
    await stream.aclose()
    return out


async def test_tts_stream_gets_audio_per_flush(server, http):
    client = deepgram.TTS(base_url=server.tts_url, http_session=http, api_key="fake-key")
    try:
        out = await _synthesize_stream(client, ["Hello there. ", "How are you today?"])
    finally:
        await client.aclose()

    flushes = server.flushes
    assert [f.text for f in flushes] == ["Hello there. ", "How are you today? "]
    assert all(f.flushed_at is not None for f in flushes)
    assert server.speak_connections[0].query["sample_rate"] == str(TTS_RATE)
    speak_msgs = [m for m in server.speak_messages if m.type in ("Speak", "Flush")]
    assert [m.type for m in speak_msgs].count("Flush") == 2

    # One segment per flush, in order, each ending with an is_final frame, and all of it audible.
    segment_ids = list(dict.fromkeys(ev.segment_id for ev in out))
    assert len(segment_ids) == 2
    for seg_id, flush in zip(segment_ids, flushes, strict=True):
        frames = [ev for ev in out if ev.segment_id == seg_id]
        assert [ev.is_final for ev in frames].count(True) == 1
        assert frames[-1].is_final
        seconds = sum(ev.frame.duration for ev in frames)
        assert seconds == pytest.approx(flush.audio_seconds, abs=0.01)
        assert seconds == pytest.approx(len(flush.text.strip()) * 0.06, rel=0.2)
    pcm = np.concatenate([np.frombuffer(ev.frame.data, dtype=np.int16) for ev in out])
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 1000


async def test_tts_non_streaming_and_faults(server, http):
    client = deepgram.TTS(
        base_url=server.tts_url, http_session=http, api_key="fake-key", sample_rate=16000
    )
    try:
        frame = await client.synthesize("good morning").collect()
        assert frame.sample_rate == 16000
        assert frame.duration == pytest.approx(len("good morning") * 0.06, rel=0.2)

        # One refused connection: the non-streaming request is retried with its text.
        server.speak_faults.refuse_connections = 1
        frame = await client.synthesize("refused once").collect()
        assert len(server.refused) == 1
        assert frame.duration == pytest.approx(len("refused once") * 0.06, rel=0.2)

        # Plugin fact (0.7.4): the streaming path also retries a refused connection, but the
        # text it had already taken from its input is lost, so the stream ends without audio.
        server.speak_faults.refuse_connections = 1
        out = await _synthesize_stream(client, ["Refused once, then silent."])
        assert len(server.refused) == 2
        assert out == []

        # A socket closed mid-audio: the plugin keeps the half it got and (same fact as above,
        # and TTS.stream() ignores conn_options) its retry has no text left, so the stream ends
        # quietly, short of audio.
        server.speak_faults.close_mid_audio = 1
        out = await _synthesize_stream(client, ["This one is cut off halfway through."])
        cut = server.flushes[-1]
        assert cut.closed_mid_audio
        assert cut.flushed_at is None
        assert 0 < cut.audio_seconds < len(cut.text) * 0.06 * 0.75
        assert sum(ev.frame.duration for ev in out) <= cut.audio_seconds + 0.01
    finally:
        await client.aclose()
