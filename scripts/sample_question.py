"""Write a spoken question to a WAV file with the bundled Piper voice (offline), for ``./try``.

python -m scripts.sample_question OUT.wav ["question text"]
"""

from __future__ import annotations

import sys
import wave
from pathlib import Path

from plugins.piper_tts import load_voice

DEFAULT_QUESTION = "What is the capital of France?"


def write_question(path: Path, text: str = DEFAULT_QUESTION) -> None:
    voice = load_voice()
    with wave.open(str(path), "wb") as out:
        voice.synthesize_wav(text, out)


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        raise SystemExit(__doc__)
    write_question(Path(sys.argv[1]), *sys.argv[2:])
