"""plugins.livekit_vad: LiveKit's native VAD behind the 0.12 VAD interface, on real espeak speech.

The same scenes as tests/test_silero_vad.py (both plugins must segment them alike), plus what
this plugin does on its own: input at 48 kHz, speech duration counting speech only, the options
of the Silero plugin.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from livekit import rtc
from livekit.agents import metrics as agents_metrics
from livekit.agents import vad as agents_vad

from plugins.livekit_vad import VAD
from plugins.silero_vad import VAD as SileroVAD
from tests.speech import resample, silence, speak
from tests.vad_audio import (
    LONG,
    RATE,
    add_noise,
    detect,
    speech_truth,
    trim,
    two_sentences,
)


async def test_two_sentences_with_a_1s_gap_are_two_segments() -> None:
    clean, spans = two_sentences()
    vad = VAD.load()
    collected: list[agents_metrics.VADMetrics] = []
    vad.on("metrics_collected", collected.append)

    result = await detect(vad, add_noise(clean, snr_db=10, kind="pink"))

    assert len(result.segments) == 2, result.segments
    (s0, e0), (s1, e1) = result.segments
    (a0, a1), (b0, b1) = spans
    assert abs(s0 - a0) < 0.3, "first segment starts with the first sentence"
    assert a1 - 0.2 < e0 < b0, "first segment ends after the first sentence, inside the gap"
    assert abs(s1 - b0) < 0.3, "second segment starts with the second sentence"
    assert e1 > b1 - 0.2, "second segment lasts to the end of the second sentence"
    # END_OF_SPEECH carries the utterance audio (what the pipeline hands downstream), with the
    # prefix padding before it
    assert result.end_audio_seconds[0] >= (a1 - a0) + 0.4
    assert result.end_audio_seconds[1] >= (b1 - b0) + 0.4
    assert result.end_audio_seconds[0] < (a1 - a0) + 0.5 + 0.55 + 0.2
    # The metrics VoicePipelineAgent listens for, labelled with this class.
    assert collected, "no metrics_collected from the VAD"
    assert collected[0].label == "plugins.livekit_vad.vad.VAD"
    assert collected[0].inference_count >= 1 / vad.capabilities.update_interval


async def test_a_continuous_sentence_is_one_segment() -> None:
    clean = np.concatenate([silence(0.8, RATE), trim(speak(LONG, RATE)), silence(1.2, RATE)])
    result = await detect(VAD.load(), add_noise(clean, snr_db=10, kind="white"))
    assert len(result.segments) == 1, result.segments


async def test_probabilities_follow_the_speech() -> None:
    clean, _ = two_sentences()
    truth = speech_truth(clean)
    p = np.array((await detect(VAD.load(), add_noise(clean, snr_db=20, seed=4))).probabilities)
    n = min(p.size, truth.size)
    assert p.size == clean.size // 512, "one INFERENCE_DONE per 32 ms window"
    decided = p[:n] >= 0.5
    assert np.mean(decided == truth[:n]) > 0.85
    assert p[:n][truth[:n]].mean() > 0.7 > 0.3 > p[:n][~truth[:n]].mean()


async def test_48khz_input_is_resampled_and_frames_stay_at_48khz() -> None:
    """The pipeline pushes the track's own rate: segments land at the same times as at 16 kHz,
    and the events' audio is the input's (what the STT and ChatAudio receive)."""
    clean, _ = two_sentences()
    noisy = add_noise(clean, snr_db=20, kind="pink")
    at_16k = await detect(VAD.load(), noisy)
    high = resample(noisy, RATE, 48000)
    stream = VAD.load().stream()
    ends: list[rtc.AudioFrame] = []
    starts: list[float] = []
    try:
        for i in range(0, high.size - 480 + 1, 480):
            stream.push_frame(rtc.AudioFrame(high[i : i + 480].tobytes(), 48000, 1, 480))
        stream.end_input()
        async for ev in stream:
            if ev.type == agents_vad.VADEventType.START_OF_SPEECH:
                starts.append(ev.timestamp - ev.speech_duration)
            elif ev.type == agents_vad.VADEventType.END_OF_SPEECH:
                ends.extend(ev.frames)
            elif ev.type == agents_vad.VADEventType.INFERENCE_DONE:
                assert ev.frames[0].sample_rate == 48000
                assert abs(ev.frames[0].samples_per_channel - 1536) <= 1
    finally:
        await stream.aclose()
    assert len(ends) == 2
    assert all(f.sample_rate == 48000 for f in ends)
    for (s16, _), s48 in zip(at_16k.segments, starts, strict=True):
        assert abs(s16 - s48) < 0.1
    assert abs(ends[0].samples_per_channel / 48000 - at_16k.end_audio_seconds[0]) < 0.1


async def test_speech_duration_counts_speech_not_the_trailing_silence() -> None:
    """0.12 interrupts the agent once speech_duration reaches 0.5 s: a 0.3 s sound must never
    get there while the stream waits out its silence."""
    burst = trim(speak("mm hmm", RATE))[: int(0.3 * RATE)]
    audio = add_noise(np.concatenate([silence(0.5, RATE), burst, silence(1.2, RATE)]), 30)
    stream = VAD.load().stream()
    speech_durations: list[float] = []
    kinds: list[agents_vad.VADEventType] = []
    try:
        for i in range(0, audio.size - 160 + 1, 160):
            stream.push_frame(rtc.AudioFrame(audio[i : i + 160].tobytes(), RATE, 1, 160))
        stream.end_input()
        async for ev in stream:
            kinds.append(ev.type)
            if ev.type == agents_vad.VADEventType.INFERENCE_DONE and ev.speaking:
                speech_durations.append(ev.speech_duration)
    finally:
        await stream.aclose()
    assert agents_vad.VADEventType.START_OF_SPEECH in kinds, "the burst is detected"
    assert agents_vad.VADEventType.END_OF_SPEECH in kinds
    # the stream stays "speaking" for its min_silence after the burst, but counts no speech then
    assert len(speech_durations) * 0.032 > 0.55
    assert 0.1 < max(speech_durations) < 0.4


async def test_update_options_reaches_open_streams() -> None:
    """A longer min_silence, set on an open stream, merges the two sentences."""
    clean, _ = two_sentences()
    clean = np.concatenate([clean, silence(1.0, RATE)])
    vad = VAD.load()
    result = await detect(
        vad, add_noise(clean, 20), on_open=lambda: vad.update_options(min_silence_duration=1.5)
    )
    assert len(result.segments) == 1, result.segments
    assert vad.options.min_silence_duration == 1.5
    assert vad.options.activation_threshold == 0.5, "options not given are kept"


async def test_a_high_activation_threshold_hears_nothing() -> None:
    clean, _ = two_sentences()
    result = await detect(VAD.load(activation_threshold=1.01), add_noise(clean, 20))
    assert result.segments == []


def test_same_options_as_the_silero_plugin() -> None:
    """A drop-in for the Silero VAD: its model-independent options, with its defaults."""
    ours = inspect.signature(VAD.load).parameters
    silero = inspect.signature(SileroVAD.load).parameters
    assert set(ours) <= set(silero)
    assert set(silero) - set(ours) == {"sample_rate", "force_cpu", "padding_duration"}
    assert all(ours[k].default == silero[k].default for k in ours)
    assert isinstance(VAD.load(min_silence_duration=0.3), agents_vad.VAD)


def _prewarm_and_detect_in_job_process() -> list[int]:
    """What a spawned job process does: prewarm loads the VAD once, sessions reuse it."""

    async def main() -> list[int]:
        vad = VAD.load()
        clean, _ = two_sentences()
        counts = []
        for seed in (1, 2):
            counts.append(len((await detect(vad, add_noise(clean, 10, seed=seed))).segments))
        return counts

    return asyncio.run(main())


def test_works_in_a_spawned_process() -> None:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_prewarm_and_detect_in_job_process).result(timeout=120) == [2, 2]


def test_vad_provider_selects_the_plugin_and_the_audio_detector_its_silence() -> None:
    from worker.pipeline.turn_detector import AudioTurnOptions
    from worker.providers.selection import load_vad

    assert isinstance(load_vad("silero"), SileroVAD)
    default = load_vad()
    assert isinstance(default, VAD)
    assert default.options.min_silence_duration == 0.55
    audio = load_vad("livekit", "audio")
    assert isinstance(audio, VAD)
    assert audio.options.min_silence_duration == AudioTurnOptions().decide_after
