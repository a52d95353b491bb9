"""A small labelled set for end-of-turn decisions, spoken by espeak-ng and piper.

Each item is one user turn as the end-of-turn model hears it: speech, then silence. Turns that
are over: finished statements, questions, lists and numbers. Turns that are not: the same kinds
of sentence cut where a speaker pauses mid-thought (after "and", before the object, inside a
list or a phone number), which 0.12's delay rule and a VAD take for the end of the turn.

Every text is spoken by two voices (espeak-ng en-us at two speeds, piper's joe voice), so the
set holds each label in several intonations. Used by bench/turn_tuning.py and the tests of
worker/pipeline/turn_detector.py.

Run: ``.venv/bin/python -m bench.turn_set [--out DIR]`` writes the WAVs and a labels.json.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.speech import resample, speak, write_wav

RATE = 16000

ENDED: dict[str, tuple[str, ...]] = {
    "statement": (
        "I would like to book a table for two people tomorrow evening.",
        "That sounds great, thank you.",
        "The meeting was moved to Thursday afternoon.",
        "I already sent the report to my manager.",
    ),
    "question": (
        "Can you tell me how far it is to the nearest train station?",
        "What time does the pharmacy close today?",
        "Is it going to rain this weekend?",
        "How much does the blue one cost?",
    ),
    "list": (
        "I need eggs, milk, bread and butter.",
        "We visited Paris, Rome and Madrid.",
    ),
    "number": (
        "My phone number is five five five, one two three four.",
        "The total comes to forty two dollars and fifty cents.",
    ),
}

CUT: dict[str, tuple[str, ...]] = {
    "statement": (
        "I would like to book a table for",
        "The meeting was moved to",
        "I already sent the report and",
        "So what I was thinking is that",
    ),
    "question": (
        "Can you tell me how far it is to the",
        "What time does the",
    ),
    "list": (
        "I need eggs, milk,",
        "We visited Paris, Rome and",
    ),
    "number": (
        "My phone number is five five five,",
        "The total comes to forty two dollars and",
    ),
}

VOICES = ("espeak-175", "espeak-140", "piper")


@dataclass(frozen=True)
class Turn:
    text: str
    kind: str  # statement, question, list, number
    ended: bool  # the label: the speaker's turn is over
    voice: str
    speech: np.ndarray  # int16 at 16 kHz, edge silence trimmed


def items() -> Iterator[tuple[str, str, bool]]:
    for label, table in ((True, ENDED), (False, CUT)):
        for kind, texts in table.items():
            for text in texts:
                yield text, kind, label


def build(voices: tuple[str, ...] = VOICES) -> list[Turn]:
    return [
        Turn(text, kind, ended, voice, trim(say(text, voice)))
        for text, kind, ended in items()
        for voice in voices
    ]


def say(text: str, voice: str) -> np.ndarray:
    if voice == "piper":
        return _piper(text)
    return speak(text, RATE, words_per_minute=int(voice.split("-")[1]))


def _piper(text: str) -> np.ndarray:
    voice = _piper_voice()
    chunks = [c.audio_int16_array for c in voice.synthesize(text)]
    return resample(np.concatenate(chunks), voice.config.sample_rate, RATE)


@functools.lru_cache(maxsize=1)
def _piper_voice():  # type: ignore[no-untyped-def]
    from plugins.piper_tts.voice import load_voice

    return load_voice()


def trim(x: np.ndarray, frame: int = 160) -> np.ndarray:
    """Drop the synthesiser's leading and trailing silence (40 dB below the loudest frame)."""
    n = x.size // frame
    rms = np.sqrt((x[: n * frame].reshape(n, frame).astype(np.float64) ** 2).mean(1))
    active = np.flatnonzero(rms > rms.max() * 10 ** (-40 / 20))
    return x[active[0] * frame : (active[-1] + 1) * frame]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/turn_set"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    labels = []
    for i, turn in enumerate(build()):
        name = f"{i:03d}-{turn.voice}-{'ended' if turn.ended else 'cut'}.wav"
        write_wav(str(args.out / name), turn.speech, RATE)
        labels.append({"file": name, "text": turn.text, "kind": turn.kind, "ended": turn.ended})
    (args.out / "labels.json").write_text(json.dumps(labels, indent=1) + "\n")
    print(f"wrote {len(labels)} turns to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
