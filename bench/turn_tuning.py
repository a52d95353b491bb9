"""Tune the audio end-of-turn rule on bench/turn_set.py: threshold, first scoring, longest wait.

Each labelled turn is followed by silence; the end-of-turn model (``livekit.local_inference``)
scores the last 1.2 s every 0.1 s of that silence, as worker/pipeline/turn_detector.py does
in a session. For a rule (first scoring after ``start`` s of silence, i.e. the VAD's
min_silence; reply once P >= ``threshold``; at the latest after ``start + max_wait``) each turn
gets a decision time:
- a finished turn: the reply's wait (lower is better);
- a cut turn: a false cut-off if the decision comes before the speaker resumes (pauses of
  0.8-1.5 s in bench/voice: counted against the longest, 1.5 s, and the shortest, 0.8 s).

Prints every rule on the grid and the chosen one: the fastest p50 wait on finished turns whose
false cut-offs at 1.5 s stay at or below ``--max-cutoff`` of the cut turns.

Run: ``.venv/bin/python -m bench.turn_tuning [--json PATH]``
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from livekit.local_inference import EOT, EOT_MAX_SAMPLES, init_eot

from bench.turn_set import RATE, VOICES, Turn, build

SCORED_AT = (0.0, 0.1, 0.2, 0.3)  # s of silence in the scored audio (scored_silence)
STARTS = (0.3, 0.4, 0.55)  # the decision point: the VAD's min_silence
THRESHOLDS = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6)
LONG_WAITS = (1.2, 1.6)  # extra wait when the score says mid-thought (max_endpointing_delay)
LONG_PAUSE, SHORT_PAUSE = 1.5, 0.8


@dataclass
class Rule:
    scored_silence: float
    start: float
    threshold: float
    long_wait: float
    ended_wait_p50: float
    ended_wait_mean: float
    ended_fast: float  # fraction of finished turns answered at the decision point
    cut_off_before_long_pause: int  # cut turns decided before 1.5 s of silence
    cut_off_before_short_pause: int  # ... before 0.8 s
    cut_turns: int
    ended_turns: int


def scores(turns: list[Turn], model: EOT) -> tuple[np.ndarray, float]:
    """P(turn ended) per turn (rows) from audio ending after each SCORED_AT s of silence."""
    out = np.zeros((len(turns), len(SCORED_AT)))
    started = time.perf_counter()
    for i, turn in enumerate(turns):
        audio = np.concatenate(
            [np.zeros(EOT_MAX_SAMPLES, np.int16), turn.speech, np.zeros(RATE, np.int16)]
        )
        end = EOT_MAX_SAMPLES + turn.speech.size
        for k, silence in enumerate(SCORED_AT):
            stop = end + round(silence * RATE)
            out[i, k] = model.predict(np.ascontiguousarray(audio[stop - EOT_MAX_SAMPLES : stop]))
    return out, (time.perf_counter() - started) / out.size * 1000


def evaluate(p: np.ndarray, ended: np.ndarray) -> list[Rule]:
    rules = []
    for k, scored in enumerate(SCORED_AT):
        for start in STARTS:
            if scored > start:
                continue
            for threshold in THRESHOLDS:
                for long_wait in LONG_WAITS:
                    fast = p[:, k] >= threshold
                    t = np.where(fast, start, start + long_wait)
                    te, tc = t[ended], t[~ended]
                    rules.append(
                        Rule(
                            scored_silence=scored,
                            start=start,
                            threshold=threshold,
                            long_wait=long_wait,
                            ended_wait_p50=round(float(np.median(te)), 2),
                            ended_wait_mean=round(float(np.mean(te)), 2),
                            ended_fast=round(float(np.mean(fast[ended])), 2),
                            cut_off_before_long_pause=int(np.sum(tc < LONG_PAUSE - 1e-9)),
                            cut_off_before_short_pause=int(np.sum(tc < SHORT_PAUSE - 1e-9)),
                            cut_turns=int(tc.size),
                            ended_turns=int(te.size),
                        )
                    )
    return rules


def choose(rules: list[Rule], max_cutoff: float) -> Rule:
    """The rule with the shortest mean wait on finished turns among those that cut off at
    most ``max_cutoff`` of the cut turns before a 1.5 s pause ends."""
    ok = [r for r in rules if r.cut_off_before_long_pause <= max_cutoff * r.cut_turns]
    pool = ok or rules
    return min(pool, key=lambda r: (r.ended_wait_mean, r.cut_off_before_long_pause, -r.start))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("docs/bench/turn_tuning.json"))
    parser.add_argument("--max-cutoff", type=float, default=0.1)
    args = parser.parse_args()

    turns = build()
    init_eot()
    curves, ms_per_call = scores(turns, EOT())
    ended = np.array([t.ended for t in turns])
    rules = evaluate(curves, ended)
    chosen = choose(rules, args.max_cutoff)
    for r in rules:
        mark = "*" if r == chosen else " "
        print(
            f"{mark} scored at {r.scored_silence:.1f} decide at {r.start:.2f} "
            f"thr {r.threshold:.2f} long {r.long_wait:.1f}: ended wait p50 "
            f"{r.ended_wait_p50:.2f} mean {r.ended_wait_mean:.2f} (fast {r.ended_fast:.0%}) | "
            f"cut off <1.5 s {r.cut_off_before_long_pause}/{r.cut_turns}, "
            f"<0.8 s {r.cut_off_before_short_pause}"
        )
    by_kind: dict[str, Any] = {}
    for voice in VOICES:
        for label in (True, False):
            rows = [i for i, t in enumerate(turns) if t.ended == label and t.voice == voice]
            key = f"{voice} {'ended' if label else 'cut'}"
            by_kind[key] = [
                round(float(statistics.median(curves[rows, k])), 2) for k in range(len(SCORED_AT))
            ]
    report = {
        "bench": "turn_tuning",
        "turns": len(turns),
        "voices": list(VOICES),
        "scored_at_s": list(SCORED_AT),
        "model_ms_per_call": round(ms_per_call, 1),
        "median_p_by_voice_and_label_per_scored_at": by_kind,
        "chosen": asdict(chosen),
        "max_cutoff": args.max_cutoff,
        "rules": [asdict(r) for r in rules],
        "machine": {"platform": platform.platform()},
    }
    print(json.dumps({"chosen": report["chosen"], "by_kind": by_kind}, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
