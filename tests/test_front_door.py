"""README's front door: the two commands it shows first are real, and CI runs the second."""

from __future__ import annotations

import os
import re
import wave
from pathlib import Path

import pytest

from plugins.whisper_stt import load_model
from scripts.sample_question import DEFAULT_QUESTION, write_question
from tests.deploy_files import ROOT, lock_files


def first_code_block(markdown: str) -> list[str]:
    match = re.search(r"```bash\n(.*?)```", markdown, re.S)
    assert match
    return [line.split("#")[0].strip() for line in match[1].splitlines() if line.strip()]


def test_the_first_thing_shown_is_try_and_the_ci_command() -> None:
    readme = (ROOT / "README.md").read_text()
    title, rest = readme.split("\n", 1)
    assert title.startswith("# ")
    assert rest.lstrip().startswith("```bash"), "the commands come right after the title"
    assert first_code_block(readme) == ["./try", ".ci/run"]
    for script in ("try", ".ci/run"):
        assert os.access(ROOT / script, os.X_OK), script


def test_ci_runs_exactly_readmes_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    test_section = readme[readme.index("\n## Test\n") :]
    (command,) = first_code_block(test_section)
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.strip()]
    assert ci[-1] == command
    assert "lock.py --check" in "\n".join(ci)


def test_try_installs_what_the_local_image_installs() -> None:
    script = (ROOT / "try").read_text()
    installed = re.findall(r"-r (requirements/\S+\.txt)", script)
    assert [ROOT / path for path in installed] == lock_files("local")
    assert "python -m worker talk" in script


@pytest.mark.timeout(120)
def test_the_sample_question_is_speech_whisper_understands(tmp_path: Path) -> None:
    path = tmp_path / "question.wav"
    write_question(path)
    with wave.open(str(path)) as wav:
        assert wav.getnframes() / wav.getframerate() > 1.0
    segments, _ = load_model().transcribe(str(path), language="en")
    heard = " ".join(segment.text for segment in segments)
    words = re.findall(r"[a-z]+", heard.lower())
    assert words == re.findall(r"[a-z]+", DEFAULT_QUESTION.lower()), heard
