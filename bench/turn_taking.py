"""Barge-in and backchannels, ours vs stock 0.12 side by side (the bench harness's scripted
providers and in-process rooms, as bench/voice).

- Barge-in: while the agent plays a long reply, the user says a short request to stop
  (espeak-ng). Stop time = the last audible frame of the agent's reply after the first sample of
  the user's speech, minus that first sample (p50, p95).
- Backchannels and non-speech sounds while the agent plays a long reply: "mm hmm", "uh huh",
  "yeah" (espeak-ng, 0.2-0.35 s), a cough (a 0.25 s burst of shaped noise) and a laugh ("ha ha"
  at 350 wpm). A reply is lost when it was interrupted (``agent_speech_interrupted``); the
  loopback STT transcribes the spoken ones (as Deepgram would), not the cough.

``VAD_PROVIDER`` / ``TURN_DETECTOR`` in the environment apply to ours (bench/harness.py).
Run: ``.venv/bin/python -m bench turn_taking [--quick]`` (a part of ``python -m bench``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    MIC_RATE,
    PIPELINES,
    BenchSession,
    Pipeline,
    ProviderScript,
    Row,
    first_after,
    first_audible_after,
    ms_row,
    open_session,
    push_speech,
    ratio,
    summarize,
    voiced_clip,
)

logger = logging.getLogger("bench.turn_taking")

QUESTION = ("tell me about Paris", "Tell me about Paris.")
LONG_REPLY = (
    "Paris is the capital of France and its largest city. It sits on the Seine river in the "
    "north of the country. The city is known for its museums, its cafes and its long history. "
    "Millions of people visit it every year to see the Eiffel Tower and the Louvre."
)
SHORT_REPLY = "Sure. What would you like to know?"
BARGE_INS = (
    ("wait, stop, I have another question", "Wait, stop, I have another question."),
    ("hold on, that is not what I asked", "Hold on, that is not what I asked."),
    ("sorry, can I ask something else", "Sorry, can I ask something else?"),
    ("no no, stop please", "No no, stop please."),
)
SOUNDS = ("mm hmm", "uh huh", "yeah", "cough", "laugh")
PLAYING_BEFORE = 1.5
"""Seconds the agent has been audible when the user speaks over it."""


def sound_clip(name: str) -> tuple[np.ndarray, str | None]:
    """(48 kHz clip, the transcript the STT gives it or None) for a backchannel or a noise."""
    if name == "cough":
        rng = np.random.default_rng(3)
        n = int(0.25 * MIC_RATE)
        envelope = np.exp(-np.linspace(0, 6, n)) * np.minimum(1, np.linspace(0, 20, n))
        spectrum = np.fft.rfft(rng.standard_normal(n))
        spectrum *= np.maximum(np.fft.rfftfreq(n, 1 / MIC_RATE), 100.0) ** -0.5
        burst = np.fft.irfft(spectrum, n) * envelope
        burst *= 8000 / np.abs(burst).max()
        return burst.astype(np.int16), None
    text, wpm = {
        "mm hmm": ("mm hmm", 350),
        "uh huh": ("uh huh", 260),
        "yeah": ("yeah", 175),
        "laugh": ("ha ha", 350),
    }[name]
    return voiced_clip(text, wpm), text.capitalize() + "."


async def long_reply_playing(session: BenchSession) -> float:
    """Ask the question, return once the long reply has been audible PLAYING_BEFORE s."""
    prov = session.providers
    prov.dg.listen.default_transcript = QUESTION[1]
    prov.reply_for = lambda body: prov.reply(LONG_REPLY)
    _, e = await push_speech(session.mic, voiced_clip(QUESTION[0]))
    await session.wait_for(
        lambda: first_audible_after(session.recorder, e) is not None, 20.0, "reply audio"
    )
    first = first_audible_after(session.recorder, e)
    assert first is not None
    await asyncio.sleep(max(0.0, first + PLAYING_BEFORE - time.perf_counter()))
    return e


def last_audible_between(session: BenchSession, t0: float, t1: float) -> float | None:
    last = None
    for f in session.recorder.frames:
        if t0 <= f.received_at < t1 and f.audible:
            last = f.received_at
    return last


async def barge_in(session: BenchSession, i: int) -> dict[str, Any]:
    await long_reply_playing(session)
    prov = session.providers
    utterance, transcript = BARGE_INS[i % len(BARGE_INS)]
    prov.dg.listen.default_transcript = transcript
    prov.reply_for = lambda body: prov.reply(SHORT_REPLY)
    start, end = await push_speech(session.mic, voiced_clip(utterance))
    await session.wait_reply_done(end, timeout=20.0)
    await session.wait_quiet(0.5)
    second = first_after(session.probe.events["agent_started_speaking"], end)
    last = last_audible_between(session, start, second if second is not None else end + 2.0)
    return {
        "pipeline": session.kind,
        "kind": "barge_in",
        "stop": None if last is None else round(max(0.0, last - start), 4),
        "speech_seconds": round(end - start, 3),
    }


async def backchannel(session: BenchSession, name: str) -> dict[str, Any]:
    e = await long_reply_playing(session)
    prov = session.providers
    clip, transcript = sound_clip(name)
    if transcript is not None:
        prov.dg.transcripts.append(transcript)
    prov.reply_for = lambda body: prov.reply(SHORT_REPLY)
    start, _ = await push_speech(session.mic, clip)
    await session.wait_reply_done(e, timeout=60.0)
    await session.wait_quiet(1.5)
    prov.dg.transcripts.clear()
    interrupted = first_after(session.probe.events["agent_speech_interrupted"], start)
    return {
        "pipeline": session.kind,
        "kind": "backchannel",
        "sound": name,
        "seconds": round(clip.size / MIC_RATE, 3),
        "lost": interrupted is not None,
    }


async def run(quick: bool = False) -> dict[str, Any]:
    n_barge, n_sounds = (2, len(SOUNDS)) if quick else (16, 20)
    script = ProviderScript(tts_seconds_per_char=0.02)
    sessions: dict[Pipeline, BenchSession] = {}
    rows: list[dict[str, Any]] = []
    try:
        for kind in PIPELINES:
            sessions[kind] = await open_session(kind, script)
        await asyncio.sleep(1.0)
        gc.freeze()
        for i in range(n_barge):
            for kind in PIPELINES if i % 2 == 0 else PIPELINES[::-1]:
                rows.append(await barge_in(sessions[kind], i))
                sessions[kind].trim_records(time.perf_counter())
                logger.info("barge-in", extra=rows[-1])
        for i in range(n_sounds):
            for kind in PIPELINES if i % 2 == 0 else PIPELINES[::-1]:
                rows.append(await backchannel(sessions[kind], SOUNDS[i % len(SOUNDS)]))
                sessions[kind].trim_records(time.perf_counter())
                logger.info("backchannel", extra=rows[-1])
    finally:
        gc.unfreeze()
        for session in sessions.values():
            await session.aclose()
    summary: dict[str, Any] = {}
    for kind in PIPELINES:
        stops = [r["stop"] for r in rows if r["pipeline"] == kind and r["kind"] == "barge_in"]
        sounds = [r for r in rows if r["pipeline"] == kind and r["kind"] == "backchannel"]
        summary[kind] = {
            "barge_in_stop": summarize(stops),
            "backchannels": len(sounds),
            "replies_lost": sum(r["lost"] for r in sounds),
            "lost_by_sound": {s: sum(r["lost"] for r in sounds if r["sound"] == s) for s in SOUNDS},
        }
    return {
        "part": "turn_taking",
        "config": {
            "barge_ins_per_pipeline": n_barge,
            "sounds_per_pipeline": n_sounds,
            "sounds": list(SOUNDS),
            "stop": "the agent's last audible frame after the user's first sample, minus it",
            "lost": "the reply was interrupted (agent_speech_interrupted)",
        },
        "summary": summary,
        "goals": {
            "barge_in_stop_p50_at_most_0.3_s": _p50_at_most(summary["ours"]["barge_in_stop"], 0.3),
            "no_reply_lost_to_a_backchannel": summary["ours"]["replies_lost"] == 0,
        },
        "rows": rows,
    }


def _p50_at_most(stats: dict[str, Any], limit: float) -> bool | None:
    p50 = stats.get("p50")
    return None if p50 is None else bool(p50 <= limit)


def table(result: dict[str, Any]) -> list[Row]:
    s = result["summary"]
    rows: list[Row] = []
    for q in ("p50", "p95"):
        ours, stock = (s[k]["barge_in_stop"].get(q) for k in PIPELINES)
        rows.append(
            ms_row(f"barge-in: user speech -> agent silent {q}", ours, stock, ratio(ours, stock))
        )
    ours_lost, stock_lost = (f"{s[k]['replies_lost']}/{s[k]['backchannels']}" for k in PIPELINES)
    rows.append(("replies lost to short sounds (mm hmm, cough, ...)", ours_lost, stock_lost, ""))
    return rows


def draw(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (stops, lost) = plt.subplots(1, 2, figsize=(9, 4.5))
    for kind, color in (("ours", "tab:blue"), ("stock", "tab:gray")):
        values = [
            r["stop"] * 1000
            for r in result["rows"]
            if r["pipeline"] == kind and r["kind"] == "barge_in"
        ]
        stops.plot(range(1, len(values) + 1), values, "o-", color=color, label=kind)
    stops.axhline(300, color="k", linestyle=":", linewidth=0.8, label="goal 300 ms (p50)")
    stops.set_xlabel("barge-in")
    stops.set_ylabel("ms from the user's first sample to the agent's last frame")
    stops.set_title("barge-in stop time")
    stops.legend()
    sounds = list(result["config"]["sounds"])
    xs = np.arange(len(sounds))
    for off, kind, color in ((-0.2, "ours", "tab:blue"), (0.2, "stock", "tab:gray")):
        by = result["summary"][kind]["lost_by_sound"]
        lost.bar(xs + off, [by[s] for s in sounds], 0.4, color=color, label=kind)
    lost.set_xticks(xs, sounds)
    lost.set_ylabel("replies lost")
    lost.set_title("short sounds during a long reply")
    lost.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
