"""VAD quality on noisy speech: stock Silero, plugins.silero_vad and plugins.livekit_vad.

Real espeak-ng speech (several utterances with natural mid-utterance pauses of
0.3-0.8 s) is mixed with white, pink and brown noise at 20/10/5 dB SNR. Ground
truth per 32 ms window comes from the clean speech's energy envelope. Both VADs
run through the plugin's real ``VADStream`` (default options, 10 ms frames at
16 kHz, fed faster than real time), so the probabilities are the exp-filtered
ones the plugin thresholds, and the segments come from its START/END_OF_SPEECH
events. Raw model probabilities and the CPU time per window come from calling
the model directly, stock and fixed interleaved window by window (LiveKit's native VAD is not
smoothed: its raw probabilities are its stream's). CPU per session: the process CPU time a
stream takes for the scene (threads included), over the scene's duration: the share of a core
one real-time session costs.

Run: ``.venv/bin/python -m bench.vad_quality [--json PATH] [--png PATH] [--seeds N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from livekit import rtc
from livekit.agents import vad as agents_vad
from livekit.plugins import silero
from livekit.plugins.silero import onnx_model

from plugins.livekit_vad import VAD as LiveKitVAD
from plugins.silero_vad import VAD, StateCarryingSession
from tests.speech import speak

logger = logging.getLogger("bench.vad_quality")

SAMPLE_RATE = 16000
WINDOW = 512  # samples per Silero window at 16 kHz (32 ms)
FRAME = 160  # 10 ms input frames, as rtc.AudioStream delivers them
THRESHOLD = 0.5  # the plugin's default activation threshold
GT_FLOOR_DB = -35.0  # window RMS within 35 dB of the loud speech windows = speech
SPEECH_LEVEL_DBFS = -26.0  # active speech level of the clean track
PAUSE_TOLERANCE = 0.15  # s: a split this close to a real pause counts as at the pause

# Utterances: phrases (str) and mid-utterance pauses (seconds) in speaking order.
SCRIPT: tuple[tuple[str | float, ...], ...] = (
    ("I would like to book a table", 0.5, "for two people tomorrow evening."),
    ("The weather today is quite nice, isn't it?",),
    ("Well", 0.4, "let me think about that for a moment", 0.7, "maybe around seven o'clock."),
    ("Can you tell me how far it is to the nearest train station from here?",),
    ("Thank you very much", 0.3, "that was really helpful."),
    ("So the first thing", 0.8, "is to check the calendar and send the invitations."),
)
GAP_BETWEEN_UTTERANCES = 2.0
LEAD_SILENCE = 1.0
TAIL_SILENCE = 1.5

NOISES = ("white", "pink", "brown")
SNRS_DB = (20.0, 10.0, 5.0, 0.0)  # 0 dB: a stress level beyond the brief
MIN_SILENCE = 0.55  # the plugin default: pauses at least this long may end a segment
FAR_FROM_SPEECH = 0.3  # s: non-speech windows this far from speech show noise response


@dataclass
class Scene:
    """The clean track and what is in it (times in seconds)."""

    audio: np.ndarray  # float32, active speech at SPEECH_LEVEL_DBFS
    phrases: list[tuple[float, float, int]]  # (start, end, utterance index)
    pauses: list[tuple[float, float, int]]  # mid-utterance pauses
    utterances: list[tuple[float, float]]
    speech_windows: np.ndarray  # bool per 32 ms window


@dataclass(frozen=True)
class Segment:
    """One START..END_OF_SPEECH pair; ``start``/``end`` are the speech edges the events imply."""

    start: float  # START event time - its speech_duration
    end: float  # END event time - its silence_duration
    start_event: float
    end_event: float


@dataclass
class StreamRun:
    probabilities: np.ndarray  # per window, exp-filtered as the plugin thresholds them
    segments: list[Segment]


@dataclass
class ConditionResult:
    condition: str
    noise: str
    snr_db: float | None
    variant: str  # "stock" or "fixed"
    runs: int
    p_speech: float  # mean filtered probability on speech windows
    p_nonspeech: float
    p_far_nonspeech: float  # non-speech windows >= 0.3 s from any speech (no hangover)
    raw_p_speech: float  # mean raw model probability on speech windows
    raw_p_nonspeech: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    flips: float  # decision changes (p >= 0.5) per run
    segments: int
    utterances: int
    missed_utterances: int
    missed_phrases: int
    false_splits: int  # splits inside continuous speech
    pause_splits: int  # splits at a real mid-utterance pause (0.3-0.8 s)
    short_pause_splits: int  # of those, at a pause shorter than min_silence (0.55 s)
    merged_boundaries: int  # utterance boundaries with no END between them
    false_alarm_segments: int  # segments overlapping no speech
    eos_delay_p50: float | None  # END_OF_SPEECH event - true utterance end
    sos_delay_p50: float | None  # START_OF_SPEECH event - true utterance start
    cpu_pct: float  # % of one core for one real-time session (stream CPU time / audio time)


# ---------------------------------------------------------------------------- audio


def _trim(samples: np.ndarray) -> np.ndarray:
    """Drop espeak's leading/trailing silence so the scripted pauses are exact."""
    x = samples.astype(np.float32)
    n = x.size // FRAME
    rms = np.sqrt((x[: n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1) + 1e-12)
    active = np.flatnonzero(rms > rms.max() * 10 ** (-40 / 20))
    return x[active[0] * FRAME : (active[-1] + 1) * FRAME]


def window_rms(audio: np.ndarray) -> np.ndarray:
    n = audio.size // WINDOW
    return np.sqrt((audio[: n * WINDOW].reshape(n, WINDOW).astype(np.float64) ** 2).mean(axis=1))


def build_scene() -> Scene:
    parts: list[np.ndarray] = [np.zeros(round(LEAD_SILENCE * SAMPLE_RATE), np.float32)]
    t = LEAD_SILENCE
    phrases: list[tuple[float, float, int]] = []
    pauses: list[tuple[float, float, int]] = []
    utterances: list[tuple[float, float]] = []
    for u, script in enumerate(SCRIPT):
        if u:
            parts.append(np.zeros(round(GAP_BETWEEN_UTTERANCES * SAMPLE_RATE), np.float32))
            t += GAP_BETWEEN_UTTERANCES
        start = t
        for item in script:
            if isinstance(item, float):
                parts.append(np.zeros(round(item * SAMPLE_RATE), np.float32))
                pauses.append((t, t + item, u))
                t += item
            else:
                speech = _trim(speak(item, SAMPLE_RATE))
                parts.append(speech)
                phrases.append((t, t + speech.size / SAMPLE_RATE, u))
                t += speech.size / SAMPLE_RATE
        utterances.append((start, t))
    parts.append(np.zeros(round(TAIL_SILENCE * SAMPLE_RATE), np.float32))
    audio = np.concatenate(parts)

    rms = window_rms(audio)
    loud = np.percentile(rms[rms > 0], 95)
    speech_windows = rms >= loud * 10 ** (GT_FLOOR_DB / 20)
    active_rms = np.sqrt((rms[speech_windows] ** 2).mean())
    audio = audio * (10 ** (SPEECH_LEVEL_DBFS / 20) * 32767 / active_rms)
    return Scene(audio.astype(np.float32), phrases, pauses, utterances, speech_windows)


def make_noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: white (flat), pink (1/f power), brown (1/f^2 power, above 20 Hz)."""
    white = rng.standard_normal(n)
    if kind != "white":
        exponent = {"pink": 0.5, "brown": 1.0}[kind]  # amplitude ~ f^-exponent
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spectrum *= np.maximum(freqs, 20.0) ** -exponent
        spectrum[0] = 0.0
        white = np.fft.irfft(spectrum, n)
    return (white / np.sqrt((white**2).mean())).astype(np.float32)


def mix(scene: Scene, noise: str, snr_db: float | None, seed: int) -> np.ndarray:
    """int16 speech + noise at ``snr_db`` (active speech power / noise power)."""
    if snr_db is None:
        return np.clip(np.round(scene.audio), -32768, 32767).astype(np.int16)
    speech_power = (window_rms(scene.audio)[scene.speech_windows] ** 2).mean()
    n = make_noise(noise, scene.audio.size, np.random.default_rng(seed))
    noisy = scene.audio + n * np.sqrt(speech_power / 10 ** (snr_db / 10))
    return np.clip(np.round(noisy), -32768, 32767).astype(np.int16)


# ---------------------------------------------------------------------------- runs


async def run_stream(vad: agents_vad.VAD, audio: np.ndarray) -> StreamRun:
    """Push ``audio`` through ``vad.stream()`` in 10 ms frames (unpaced) and collect events."""
    stream = vad.stream()
    try:
        for i in range(0, audio.size - FRAME + 1, FRAME):
            chunk = audio[i : i + FRAME]
            stream.push_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
        stream.end_input()
        probabilities: list[float] = []
        segments: list[Segment] = []
        started: agents_vad.VADEvent | None = None
        async for ev in stream:
            if ev.type == agents_vad.VADEventType.INFERENCE_DONE:
                probabilities.append(ev.probability)
            elif ev.type == agents_vad.VADEventType.START_OF_SPEECH:
                started = ev
            elif ev.type == agents_vad.VADEventType.END_OF_SPEECH and started is not None:
                segments.append(_segment(started, ev.timestamp - ev.silence_duration, ev.timestamp))
                started = None
        if started is not None:  # still speaking when the audio ended
            end = audio.size / SAMPLE_RATE
            segments.append(_segment(started, end, end))
    finally:
        await stream.aclose()
    return StreamRun(np.array(probabilities), segments)


def _segment(started: agents_vad.VADEvent, end: float, end_event: float) -> Segment:
    return Segment(started.timestamp - started.speech_duration, end, started.timestamp, end_event)


def raw_run(
    models: Sequence[onnx_model.OnnxModel], audio: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Call each model on every window, interleaved (order alternating), timing each call."""
    x = audio.astype(np.float32) / np.iinfo(np.int16).max
    n = x.size // WINDOW
    probs = [np.empty(n) for _ in models]
    times = [np.empty(n) for _ in models]
    order = list(range(len(models)))
    for w in range(n):
        window = x[w * WINDOW : (w + 1) * WINDOW]
        for k in order if w % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            probs[k][w] = models[k](window)
            times[k][w] = time.perf_counter() - t0
    return probs, times


# ---------------------------------------------------------------------------- scoring


def far_from_speech(truth: np.ndarray) -> np.ndarray:
    """Non-speech windows at least FAR_FROM_SPEECH from any speech window."""
    reach = round(FAR_FROM_SPEECH * SAMPLE_RATE / WINDOW)
    near = np.convolve(truth.astype(int), np.ones(2 * reach + 1, dtype=int), mode="same") > 0
    return ~near


def frame_scores(p: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    n = min(p.size, truth.size)
    p, truth = p[:n], truth[:n]
    decided = p >= THRESHOLD
    tp = float(np.sum(decided & truth))
    fp = float(np.sum(decided & ~truth))
    fn = float(np.sum(~decided & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "p_speech": float(p[truth].mean()),
        "p_nonspeech": float(p[~truth].mean()),
        "p_far_nonspeech": float(p[far_from_speech(truth)].mean()),
        "accuracy": float(np.mean(decided == truth)),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "flips": float(np.count_nonzero(np.diff(decided.astype(np.int8)))),
    }


def _overlaps(a0: float, a1: float, b0: float, b1: float) -> bool:
    return a0 < b1 and b0 < a1


def segment_scores(segments: list[Segment], scene: Scene) -> dict[str, Any]:
    """Match the VAD's segments to the script's utterances, phrases and pauses."""
    utts_of = [
        [u for u, (u0, u1) in enumerate(scene.utterances) if _overlaps(s.start, s.end, u0, u1)]
        for s in segments
    ]
    false_splits = pause_splits = short_pause_splits = 0
    for k in range(len(segments) - 1):
        shared = set(utts_of[k]) & set(utts_of[k + 1])
        if not shared:
            continue
        gap_mid = (segments[k].end + segments[k + 1].start) / 2
        at_pause = [
            p1 - p0
            for p0, p1, u in scene.pauses
            if u in shared and p0 - PAUSE_TOLERANCE <= gap_mid <= p1 + PAUSE_TOLERANCE
        ]
        if at_pause:
            pause_splits += 1
            short_pause_splits += at_pause[0] < MIN_SILENCE
        else:
            false_splits += 1
    missed_phrases = sum(
        not any(_overlaps(s.start, s.end, p0, p1) for s in segments) for p0, p1, _ in scene.phrases
    )
    covered = {u for us in utts_of for u in us}
    eos: list[float] = []
    sos: list[float] = []
    for u, (u0, u1) in enumerate(scene.utterances):
        mine = [k for k, us in enumerate(utts_of) if us == [u]]
        if mine:
            sos.append(segments[mine[0]].start_event - u0)
            eos.append(segments[mine[-1]].end_event - u1)
    return {
        "segments": len(segments),
        "missed_utterances": len(scene.utterances) - len(covered),
        "missed_phrases": missed_phrases,
        "false_splits": false_splits,
        "pause_splits": pause_splits,
        "short_pause_splits": short_pause_splits,
        "merged_boundaries": sum(max(0, len(us) - 1) for us in utts_of),
        "false_alarm_segments": sum(not us for us in utts_of),
        "eos_delays": eos,
        "sos_delays": sos,
    }


# ---------------------------------------------------------------------------- main


def conditions(seeds: int) -> list[tuple[str, str, float | None, list[int]]]:
    out: list[tuple[str, str, float | None, list[int]]] = [("clean", "none", None, [0])]
    for noise in NOISES:
        for snr in SNRS_DB:
            out.append((f"{noise} {snr:g} dB", noise, snr, list(range(seeds))))
    return out


def _p50(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def variants(extra_min_silence: Sequence[float]) -> dict[str, tuple[int | None, agents_vad.VAD]]:
    """name -> (index of the raw Silero model with the same state handling, or None when the
    stream's probabilities are the raw ones; loaded VAD)."""
    out: dict[str, tuple[int | None, agents_vad.VAD]] = {
        "stock": (0, silero.VAD.load()),
        "fixed": (1, VAD.load()),
        "livekit": (None, LiveKitVAD.load()),
    }
    for ms in extra_min_silence:
        out[f"fixed ms={ms:g}"] = (1, VAD.load(min_silence_duration=ms))
    return out


async def measure(seeds: int, extra_min_silence: Sequence[float]) -> dict[str, Any]:
    scene = build_scene()
    vads = variants(extra_min_silence)
    session = onnx_model.new_inference_session(True)
    results: list[ConditionResult] = []
    traces: dict[str, list[float]] = {}
    timing: dict[str, list[float]] = {"stock": [], "fixed": []}

    for name, noise, snr, seed_list in conditions(seeds):
        acc: dict[str, list[dict[str, Any]]] = {variant: [] for variant in vads}
        for seed in seed_list:
            audio = mix(scene, noise, snr, seed)
            models = [
                onnx_model.OnnxModel(onnx_session=session, sample_rate=SAMPLE_RATE),
                onnx_model.OnnxModel(
                    onnx_session=StateCarryingSession(session), sample_rate=SAMPLE_RATE
                ),
            ]
            raw_probs, raw_times = raw_run(models, audio)
            for i, variant in enumerate(("stock", "fixed")):
                timing[variant].extend(raw_times[i].tolist())
            for variant, (k, vad) in vads.items():
                cpu_started = time.process_time()
                run = await run_stream(vad, audio)
                cpu = time.process_time() - cpu_started
                scores: dict[str, Any] = frame_scores(run.probabilities, scene.speech_windows)
                scores["cpu_pct"] = 100 * cpu / (audio.size / SAMPLE_RATE)
                raw = frame_scores(
                    raw_probs[k] if k is not None else run.probabilities, scene.speech_windows
                )
                scores["raw_p_speech"] = raw["p_speech"]
                scores["raw_p_nonspeech"] = raw["p_nonspeech"]
                scores.update(segment_scores(run.segments, scene))
                acc[variant].append(scores)
                if noise == "pink" and snr == 5.0 and seed == 0:
                    traces[variant] = [round(float(p), 3) for p in run.probabilities]
        for variant, runs in acc.items():
            fields: dict[str, Any] = {
                key: round(float(np.mean([r[key] for r in runs])), 3)
                for key in (
                    "p_speech",
                    "p_nonspeech",
                    "p_far_nonspeech",
                    "raw_p_speech",
                    "raw_p_nonspeech",
                    "accuracy",
                    "precision",
                    "recall",
                    "f1",
                    "flips",
                    "cpu_pct",
                )
            }
            for key in (
                "segments",
                "missed_utterances",
                "missed_phrases",
                "false_splits",
                "pause_splits",
                "short_pause_splits",
                "merged_boundaries",
                "false_alarm_segments",
            ):
                fields[key] = int(sum(r[key] for r in runs))
            results.append(
                ConditionResult(
                    condition=name,
                    noise=noise,
                    snr_db=snr,
                    variant=variant,
                    runs=len(runs),
                    utterances=len(scene.utterances) * len(runs),
                    eos_delay_p50=_p50([d for r in runs for d in r["eos_delays"]]),
                    sos_delay_p50=_p50([d for r in runs for d in r["sos_delays"]]),
                    **fields,
                )
            )
            logger.info("condition done", extra={"condition": name, "variant": variant})
            print(_row(results[-1]), flush=True)

    per_window = {
        variant: {
            "p50_us": round(float(np.percentile(t, 50)) * 1e6, 1),
            "p95_us": round(float(np.percentile(t, 95)) * 1e6, 1),
            "windows": len(t),
        }
        for variant, t in timing.items()
    }
    per_window["fixed_over_stock_p50"] = {
        "ratio": round(per_window["fixed"]["p50_us"] / per_window["stock"]["p50_us"], 3)
    }
    return {
        "bench": "vad_quality",
        "method": {
            "speech": "espeak-ng en-us 175 wpm, 16 kHz, phrases trimmed, active level -26 dBFS",
            "script": [list(s) for s in SCRIPT],
            "gap_between_utterances_s": GAP_BETWEEN_UTTERANCES,
            "ground_truth": f"32 ms window RMS >= {GT_FLOOR_DB} dB below the p95 window RMS",
            "snr": "active speech power / noise power; noise white, pink (1/f), brown (1/f^2)",
            "seeds_per_noisy_condition": seeds,
            "vad_options": "defaults (activation 0.5, min_speech 0.05 s, min_silence 0.55 s)",
            "frames": "10 ms AudioFrames at 16 kHz pushed unpaced into VADStream",
            "stock": "livekit.plugins.silero.VAD 0.7.6 (RNN state dropped each window)",
            "fixed": "plugins.silero_vad.VAD (RNN state carried)",
            "fixed ms=X": "plugins.silero_vad.VAD.load(min_silence_duration=X)",
            "livekit": "plugins.livekit_vad.VAD (livekit-local-inference native VAD)",
            "cpu_pct": "stream CPU time (process, all threads) / audio duration, unpaced",
            "false_split": "two segments of one utterance whose gap is not at a real pause",
            "short_pause_split": "a split at a real pause shorter than min_silence (0.55 s)",
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
            "onnx_threads": 1,
        },
        "audio_seconds": round(scene.audio.size / SAMPLE_RATE, 2),
        "speech_window_fraction": round(float(scene.speech_windows.mean()), 3),
        "results": [asdict(r) for r in results],
        "time_per_window": per_window,
        "trace_pink_5db": {
            "truth": scene.speech_windows.astype(int).tolist(),
            **traces,
        },
    }


def _row(r: ConditionResult) -> str:
    return (
        f"{r.condition:14} {r.variant:13} p_sp {r.p_speech:.2f} p_ns {r.p_nonspeech:.2f} "
        f"acc {r.accuracy:.2f} f1 {r.f1:.2f} flips {r.flips:5.1f} seg {r.segments:3d} "
        f"miss {r.missed_utterances}/{r.missed_phrases} fsplit {r.false_splits} "
        f"psplit {r.pause_splits}({r.short_pause_splits} short) "
        f"merged {r.merged_boundaries} fa {r.false_alarm_segments} "
        f"eos {r.eos_delay_p50} sos {r.sos_delay_p50} cpu {r.cpu_pct:.2f}%"
    )


def draw(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    names = [r["condition"] for r in rows if r["variant"] == "stock"]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7.5))
    xs = np.arange(len(names))
    bars = ((-0.27, "stock", "tab:gray"), (0.0, "fixed", "tab:blue"), (0.27, "livekit", "tab:red"))
    for off, variant, color in bars:
        mine = [r for r in rows if r["variant"] == variant]
        ax1.bar(xs + off, [r["p_speech"] for r in mine], 0.27, color=color, label=variant)
        ax1.plot(xs + off, [r["f1"] for r in mine], "k.", markersize=8)
    ax1.set_xticks(xs, names, rotation=30, ha="right")
    ax1.set_ylim(0, 1.05)
    ax1.set_ylabel("mean p on speech (bars), F1 (dots)")
    ax1.legend(loc="lower left")
    ax1.set_title("Silero VAD 0.7.6 stock, RNN state carried, LiveKit native VAD")

    trace = report["trace_pink_5db"]
    t = np.arange(len(trace["truth"])) * WINDOW / SAMPLE_RATE
    ax2.fill_between(t, 0, trace["truth"], color="tab:green", alpha=0.2, label="speech (truth)")
    for variant, color in (("stock", "tab:gray"), ("fixed", "tab:blue"), ("livekit", "tab:red")):
        p = trace.get(variant, [])
        ax2.plot(t[: len(p)], p, color=color, linewidth=0.8, label=variant)
    ax2.axhline(THRESHOLD, color="k", linestyle=":", linewidth=0.8)
    ax2.set_xlabel("s")
    ax2.set_ylabel("VADStream probability")
    ax2.set_title("pink noise, 5 dB SNR")
    ax2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("docs/bench/vad_quality.json"))
    parser.add_argument("--png", type=Path, default=None, help="chart (default: next to --json)")
    parser.add_argument("--seeds", type=int, default=3, help="noise seeds per noisy condition")
    parser.add_argument(
        "--fixed-min-silence",
        type=float,
        action="append",
        help="extra fixed-VAD variant with this min_silence_duration (repeatable; default 0.45)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Unpaced input makes the plugin's "slower than realtime" warning meaningless here.
    logging.getLogger("livekit.plugins.silero").setLevel(logging.ERROR)

    extra = args.fixed_min_silence if args.fixed_min_silence is not None else [0.45]
    report = asyncio.run(measure(args.seeds, extra))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    png = args.png if args.png is not None else args.json.with_suffix(".png")
    draw(report, png)
    print(json.dumps(report["time_per_window"]))
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
