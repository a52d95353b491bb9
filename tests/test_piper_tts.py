"""The piper TTS plugin: real voice, checked with real Silero VAD and a Whisper round trip."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from livekit import rtc
from livekit.agents import tts as agents_tts
from livekit.agents import vad as agents_vad
from livekit.agents.metrics import TTSMetrics
from livekit.plugins import silero

from plugins.piper_tts import TTS, default_voice_paths, load_voice
from plugins.whisper_stt import STT

TIMEOUT = 60.0
# Phrases whose words Whisper tiny.en hears reliably in piper's voice (piper's output varies a
# little from run to run: "in Paris is" was once heard as "impairs").
TEXT = "Good morning. The weather is sunny and warm today."


@pytest.fixture(scope="module")
def voice_loaded() -> None:
    TTS().prewarm()  # once per module; every TTS below shares the process-wide voice


@pytest.fixture
def piper(voice_loaded: None) -> TTS:
    return TTS()


@pytest.fixture(scope="module")
def whisper() -> STT:
    stt = STT()
    stt.prewarm()
    return stt


@pytest.fixture(scope="module")
def vad() -> silero.VAD:
    return silero.VAD.load()


def collect_metrics(tts: TTS) -> list[TTSMetrics]:
    metrics: list[TTSMetrics] = []
    tts.on("metrics_collected", metrics.append)
    return metrics


async def drain(stream: agents_tts.ChunkedStream | agents_tts.SynthesizeStream):
    async def _all() -> list[agents_tts.SynthesizedAudio]:
        return [ev async for ev in stream]

    return await asyncio.wait_for(_all(), TIMEOUT)


async def transcribe(whisper: STT, frames: list[rtc.AudioFrame]) -> str:
    event = await asyncio.wait_for(whisper.recognize(frames), TIMEOUT)
    return event.alternatives[0].text.lower()


async def speech_events(vad: silero.VAD, frames: list[rtc.AudioFrame]) -> list[agents_vad.VADEvent]:
    rate = frames[0].sample_rate
    tail = np.zeros(rate, dtype=np.int16)  # 1 s of silence so the VAD closes the utterance
    stream = vad.stream()
    try:
        for frame in [*frames, rtc.AudioFrame(tail.tobytes(), rate, 1, tail.size)]:
            stream.push_frame(frame)
        stream.end_input()

        async def _speech() -> list[agents_vad.VADEvent]:
            return [ev async for ev in stream if ev.type != agents_vad.VADEventType.INFERENCE_DONE]

        return await asyncio.wait_for(_speech(), TIMEOUT)
    finally:
        await stream.aclose()


def test_declares_streaming_at_the_output_rate() -> None:
    tts = TTS()
    assert tts.capabilities.streaming is True
    assert (tts.sample_rate, tts.num_channels) == (24000, 1)
    assert TTS(sample_rate=16000).sample_rate == 16000


async def test_synthesize_is_speech_that_whisper_understands(piper: TTS, whisper, vad) -> None:
    metrics = collect_metrics(piper)
    events = await drain(piper.synthesize(TEXT))

    frames = [ev.frame for ev in events]
    assert all(f.sample_rate == 24000 and f.num_channels == 1 for f in frames)
    # 40 ms frames, only the last may be shorter
    assert {f.samples_per_channel for f in frames[:-1]} == {960}
    assert 0 < frames[-1].samples_per_channel <= 960
    assert [ev.is_final for ev in events].count(True) == 1
    assert events[-1].is_final
    audio_s = sum(f.duration for f in frames)
    assert audio_s > 2.0

    vad_events = await speech_events(vad, frames)
    ends = [ev for ev in vad_events if ev.type == agents_vad.VADEventType.END_OF_SPEECH]
    assert vad_events[0].type == agents_vad.VADEventType.START_OF_SPEECH
    assert ends, "Silero found no complete utterance"
    speech_s = sum(f.duration for ev in ends for f in ev.frames)
    assert 0.5 * audio_s < speech_s <= audio_s + 1.0

    text = await transcribe(whisper, frames)
    for word in ("morning", "weather", "sunny", "warm"):
        assert word in text, f"{word!r} not in {text!r}"

    assert len(metrics) == 1
    m = metrics[0]
    assert m.streamed is False
    assert m.cancelled is False
    assert m.error is None
    assert m.characters_count == len(TEXT)
    assert m.audio_duration == pytest.approx(audio_s)
    assert 0.0 < m.ttfb <= m.duration
    assert m.label == "plugins.piper_tts.tts.TTS"


@pytest.mark.parametrize("sample_rate", [22050, 16000])
async def test_output_rate_is_configurable(voice_loaded: None, whisper, sample_rate) -> None:
    tts = TTS(sample_rate=sample_rate, frame_ms=20)
    phrase = "Please turn on the kitchen lights."
    frame = await asyncio.wait_for(tts.synthesize(phrase).collect(), TIMEOUT)
    assert frame.sample_rate == sample_rate
    assert frame.duration > 1.0
    text = await transcribe(whisper, [frame])
    assert "kitchen" in text, text
    assert "lights" in text, text


async def test_stream_plays_first_sentence_before_the_last_is_written(piper: TTS, whisper) -> None:
    first = "This is the first sentence of my answer."
    second = "The second one starts right after it."
    last = "And the final sentence talks about bananas."
    metrics = collect_metrics(piper)
    stream = piper.stream()
    log: list[str] = []
    events: list[agents_tts.SynthesizedAudio] = []
    first_audio = asyncio.Event()

    async def read() -> None:
        async for ev in stream:
            if not events:
                log.append("audio")
                first_audio.set()
            events.append(ev)

    reader = asyncio.create_task(read())
    try:
        # word by word, as an LLM writes; the tokenizer completes a sentence when the next begins
        for word in f"{first} {second}".split(" "):
            stream.push_text(word + " ")
            log.append("text")
        await asyncio.wait_for(first_audio.wait(), TIMEOUT)
        for word in last.split(" "):
            stream.push_text(word + " ")
        log.append("last text")
        stream.end_input()
        await asyncio.wait_for(reader, TIMEOUT)
    finally:
        await stream.aclose()
        await piper.aclose()

    assert log.index("audio") < log.index("last text")
    assert len({ev.segment_id for ev in events}) == 1
    assert [ev.is_final for ev in events] == [False] * (len(events) - 1) + [True]

    text = await transcribe(whisper, [ev.frame for ev in events])
    for word in ("first", "second", "bananas"):
        assert word in text, f"{word!r} not in {text!r}"

    assert len(metrics) == 1
    m = metrics[0]
    assert m.streamed is True
    assert m.cancelled is False
    assert m.characters_count == len(f"{first} {second} {last} ")  # each word + " "
    assert m.audio_duration == pytest.approx(sum(ev.frame.duration for ev in events))
    assert 0.0 < m.ttfb <= m.duration


async def test_flush_ends_a_segment(piper: TTS) -> None:
    metrics = collect_metrics(piper)
    stream = piper.stream()
    try:
        stream.push_text("Hello there, how are you?")
        stream.flush()
        stream.push_text("...")  # a segment that makes no sound still ends properly
        stream.flush()
        stream.push_text("See you tomorrow, my friend.")
        stream.end_input()
        events = await drain(stream)
    finally:
        await stream.aclose()

    segment_ids = list(dict.fromkeys(ev.segment_id for ev in events))
    assert len(segment_ids) == 3
    for sid in segment_ids:
        seg = [ev for ev in events if ev.segment_id == sid]
        assert [ev.is_final for ev in seg] == [False] * (len(seg) - 1) + [True]
    # segments come out in order, one after the other
    assert [ev.segment_id for ev in events] == sorted(
        (ev.segment_id for ev in events), key=segment_ids.index
    )
    assert [m.characters_count for m in metrics] == [25, 3, 28]
    assert all(m.streamed and not m.cancelled for m in metrics)
    assert metrics[0].audio_duration > 1.0
    assert metrics[2].audio_duration > 1.0


async def test_aclose_mid_stream_cancels_and_reports(piper: TTS) -> None:
    metrics = collect_metrics(piper)
    stream = piper.stream()
    stream.push_text("One sentence comes first here. " * 6 + "And then")
    first = await asyncio.wait_for(stream.__anext__(), TIMEOUT)
    assert first.frame.samples_per_channel > 0

    await asyncio.wait_for(stream.aclose(), TIMEOUT)

    assert len(metrics) == 1
    assert metrics[0].cancelled is True
    assert metrics[0].audio_duration > 0.0


async def test_tts_aclose_closes_open_streams(piper: TTS) -> None:
    stream = piper.stream()
    stream.push_text("Hello there.")
    await asyncio.wait_for(piper.aclose(), TIMEOUT)
    with pytest.raises(RuntimeError, match=r"closed|input ended"):
        stream.push_text("more")


async def test_synthesis_runs_off_the_event_loop(piper: TTS) -> None:
    """One long sentence is one piper inference; the loop keeps running meanwhile."""
    sentence = "This single long sentence keeps the voice model busy for quite a while " * 2
    collect = asyncio.create_task(piper.synthesize(sentence + ".").collect())
    started = last = time.perf_counter()
    longest_gap = 0.0
    while not collect.done():
        await asyncio.sleep(0.005)
        now = time.perf_counter()
        longest_gap, last = max(longest_gap, now - last), now
    elapsed = last - started
    assert (await collect).duration > 3.0
    # on the loop, the synthesis would be one stall as long as all of it; off it, the loop
    # only waits for its own turns
    assert longest_gap < elapsed / 2, (longest_gap, elapsed)


def test_voice_loads_once_per_process(voice_loaded: None, tmp_path: Path) -> None:
    assert load_voice() is load_voice()
    with pytest.raises(FileNotFoundError):
        load_voice(tmp_path / "missing.onnx")
    # `voice` names a voice file (str or path); its config defaults to `<voice>.json`
    model, config = default_voice_paths()
    assert config == Path(f"{model}.json")
    assert TTS(voice=str(model))._voice() is load_voice()
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        TTS(voice=tmp_path / "missing.onnx").prewarm()
