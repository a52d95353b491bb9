"""plugins.silero_vad: the Silero VAD with its RNN state carried, on real espeak speech + noise.

Audio is pushed into the real VADStream unpaced (push_frame does not pace), so each
test runs in well under a second of model time.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import numpy as np
import pytest
from livekit.agents import metrics as agents_metrics
from livekit.agents import vad as agents_vad
from livekit.plugins import silero
from livekit.plugins.silero import onnx_model

from plugins.silero_vad import VAD, StateCarryingSession
from tests.speech import silence, speak
from tests.vad_audio import (
    FIRST,
    LONG,
    RATE,
    SECOND,
    WINDOW,
    add_noise,
    detect,
    speech_truth,
    trim,
    two_sentences,
)


class RecordingSession:
    """Wraps a session; records the state each call was fed and the state it returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.state_arrays: list[np.ndarray] = []  # the objects fed (identity matters)
        self.fed: list[np.ndarray] = []  # copies, before the call
        self.returned: list[np.ndarray] = []
        self.input_names: list[list[str]] = []

    def run(self, output_names: Any, feed: dict[str, np.ndarray], *rest: Any) -> Any:
        self.input_names.append(sorted(feed))
        self.state_arrays.append(feed["state"])
        self.fed.append(feed["state"].copy())
        outputs = self.inner.run(output_names, feed, *rest)
        self.returned.append(np.array(outputs[1], copy=True))
        return outputs


def _float_windows(audio: np.ndarray, n: int | None = None) -> list[np.ndarray]:
    x = audio.astype(np.float32) / 32767
    return [x[i * WINDOW : (i + 1) * WINDOW] for i in range(n or x.size // WINDOW)]


@pytest.fixture(scope="module")
def session() -> Any:
    return onnx_model.new_inference_session(True)


# ----------------------------------------------------------------------------- tests


def test_plugin_contract(session: Any) -> None:
    """The one plugin internal the fix relies on. If this fails, plugins.silero_vad must change.

    livekit-plugins-silero 0.7.6 OnnxModel must feed the model file's `state` input with the
    SAME writable array on every call (its `_rnn_state`), so an in-place copy carries the state.
    """
    assert [i.name for i in session.get_inputs()] == ["input", "state", "sr"]
    assert [o.name for o in session.get_outputs()] == ["output", "stateN"]

    recorder = RecordingSession(session)
    model = onnx_model.OnnxModel(onnx_session=recorder, sample_rate=RATE)
    clean = speak(FIRST, RATE)
    for window in _float_windows(clean, 40):
        model(window)

    assert all(names == ["input", "sr", "state"] for names in recorder.input_names)
    first = recorder.state_arrays[0]
    assert all(a is first for a in recorder.state_arrays), (
        "OnnxModel no longer feeds one persistent state array: StateCarryingSession's in-place "
        "copy would not carry the state"
    )
    assert first.flags.writeable
    assert first.shape == recorder.returned[0].shape == (2, 1, 128)
    # The bug being fixed: the stock model feeds zeros on every window.
    assert all(not fed.any() for fed in recorder.fed), (
        "the stock plugin now carries its state itself (upstream fix?): plugins.silero_vad "
        "is harmless but may no longer be needed"
    )


def test_state_carries_between_windows_on_noisy_speech(session: Any) -> None:
    noisy = add_noise(speak(FIRST, RATE), snr_db=10, kind="white")
    windows = _float_windows(noisy)

    recorder = RecordingSession(StateCarryingSession(session))
    fixed = onnx_model.OnnxModel(onnx_session=recorder, sample_rate=RATE)
    stock = onnx_model.OnnxModel(onnx_session=session, sample_rate=RATE)
    p_fixed = np.array([fixed(w) for w in windows])
    p_stock = np.array([stock(w) for w in windows])

    # Each window is fed exactly the state the previous window produced.
    assert not recorder.fed[0].any()
    for n in range(1, len(windows)):
        np.testing.assert_array_equal(recorder.fed[n], recorder.returned[n - 1])
    # ... and that state really evolves with the audio.
    fed = np.stack(recorder.fed[1:])
    assert np.abs(fed).max() > 0.1
    assert len({f.tobytes() for f in fed}) == len(fed)
    # Same session, same audio, different answers: the state matters.
    assert np.abs(p_fixed - p_stock).max() > 0.3


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
    # END_OF_SPEECH carries the utterance audio (what the pipeline hands downstream).
    assert result.end_audio_seconds[0] >= 0.9 * (a1 - a0)
    assert result.end_audio_seconds[1] >= 0.9 * (b1 - b0)
    # The metrics VoicePipelineAgent listens for are emitted, labelled with this class.
    assert collected, "no metrics_collected from the VAD"
    assert collected[0].label == "plugins.silero_vad.vad.VAD"


async def test_a_continuous_sentence_is_one_segment() -> None:
    clean = np.concatenate([silence(0.8, RATE), trim(speak(LONG, RATE)), silence(1.2, RATE)])
    result = await detect(VAD.load(), add_noise(clean, snr_db=10, kind="white"))
    assert len(result.segments) == 1, result.segments


async def test_update_options_reaches_open_streams() -> None:
    """Inherited API: a longer min_silence, set on an open stream, merges the two sentences."""
    clean, _ = two_sentences()
    clean = np.concatenate([clean, silence(1.0, RATE)])
    vad = VAD.load()
    result = await detect(
        vad, add_noise(clean, 20), on_open=lambda: vad.update_options(min_silence_duration=1.5)
    )
    assert len(result.segments) == 1, result.segments


async def test_fixed_vad_is_more_confident_on_speech_than_stock() -> None:
    clean = np.concatenate(
        [silence(0.5, RATE), speak(FIRST, RATE), speak(SECOND, RATE), silence(1.0, RATE)]
    )
    noisy = add_noise(clean, snr_db=10, kind="white", seed=3)
    truth = speech_truth(clean)

    fixed = np.array((await detect(VAD.load(), noisy)).probabilities)
    stock = np.array((await detect(silero.VAD.load(), noisy)).probabilities)

    n = min(truth.size, fixed.size, stock.size)
    fixed_mean = fixed[:n][truth[:n]].mean()
    stock_mean = stock[:n][truth[:n]].mean()
    assert fixed_mean > stock_mean + 0.15, (fixed_mean, stock_mean)
    assert fixed_mean > 0.7


def test_same_load_options_as_the_stock_plugin() -> None:
    ours = inspect.signature(VAD.load).parameters
    stock = inspect.signature(silero.VAD.load).parameters
    assert list(ours) == list(stock)
    assert all(ours[k].default == stock[k].default for k in ours)
    vad = VAD.load(min_silence_duration=0.3, sample_rate=8000)
    assert isinstance(vad, agents_vad.VAD)
    assert isinstance(vad, silero.VAD)


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
