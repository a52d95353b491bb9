"""``python -m bench.offline_answers [--repo DIR] [--n 20] [--json PATH]``

How often the offline ``talk`` (Whisper tiny.en, SmolLM2-135M on llama.cpp, Piper) answers a
plain spoken question with the expected word: 20 questions with one-word answers (capitals,
colours, simple sums), spoken by espeak-ng, each through its own ``python -m worker talk --fast``
run (a fresh conversation), with no cloud key in the environment. ``--repo`` runs another
checkout's worker (e.g. an export of an older commit) with the same interpreter, for a
before/after comparison. Prints one line per question and the count; ``--json`` saves them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

QUESTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("What is the capital of France?", ("paris",)),
    ("What is the capital of Italy?", ("rome",)),
    ("What is the capital of Spain?", ("madrid",)),
    ("What is the capital of Japan?", ("tokyo",)),
    ("What is the capital of Germany?", ("berlin",)),
    ("What is the capital of England?", ("london",)),
    ("What is the capital of Russia?", ("moscow",)),
    ("What is the capital of Egypt?", ("cairo",)),
    ("What colour is the sky on a clear day?", ("blue",)),
    ("What colour is grass?", ("green",)),
    ("What colour is snow?", ("white",)),
    ("What colour is a ripe banana?", ("yellow",)),
    ("What colour are strawberries?", ("red",)),
    ("What colour is coal?", ("black",)),
    ("What is two plus two?", ("four", "4")),
    ("What is three plus five?", ("eight", "8")),
    ("What is ten minus three?", ("seven", "7")),
    ("What is two times three?", ("six", "6")),
    ("What is five plus five?", ("ten", "10")),
    ("What is nine minus four?", ("five", "5")),
]
CLOUD_KEYS = ("DEEPGRAM_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL", "AGENT_INSTRUCTIONS")


def contains(answer: str, expected: tuple[str, ...]) -> bool:
    words = set(re.findall(r"[a-z0-9]+", answer.lower()))
    return any(e in words for e in expected)


def ask(repo: Path, question: str, workdir: Path) -> str:
    """The agent's answer to ``question`` spoken by espeak-ng (empty if none)."""
    wav, transcript = workdir / "q.wav", workdir / "t.txt"
    transcript.unlink(missing_ok=True)
    subprocess.run(["espeak-ng", "-w", str(wav), question], check=True)
    env = {k: v for k, v in os.environ.items() if k not in CLOUD_KEYS}
    out = workdir / "r.wav"
    subprocess.run(
        [sys.executable, "-m", "worker", "talk", str(wav), "--fast", "--out", str(out),
         "--transcript", str(transcript)],
        cwd=repo, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if not transcript.is_file():
        return ""
    lines = transcript.read_text("utf-8").splitlines()
    return " ".join(
        line.removeprefix("agent:").strip() for line in lines if line.startswith("agent:")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--n", type=int, default=len(QUESTIONS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for question, expected in QUESTIONS[: args.n]:
            started = time.perf_counter()
            answer = ask(args.repo.resolve(), question, Path(tmp))
            ok = contains(answer, expected)
            rows.append({"question": question, "expected": expected[0], "answer": answer, "ok": ok})
            took = time.perf_counter() - started
            print(f"{'ok ' if ok else '-- '} {question} -> {answer!r} ({took:.0f} s)", flush=True)
    hits = sum(r["ok"] for r in rows)
    print(f"{hits}/{len(rows)} answers contain the expected word")
    if args.json is not None:
        args.json.write_text(json.dumps({"hits": hits, "n": len(rows), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
