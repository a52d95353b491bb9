"""``talk`` waits for the reply to the user's last words, and no longer: an LLM answer with no
text ends in the apology at once (not at --reply-timeout), and a question followed by more
speech is answered as a whole. Offline STT/TTS (Whisper, Piper) in-process, the loopback OpenAI
server as the LLM, so its requests can be read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.loopback.openai_server import OpenAIServer, Reply
from tests.project_env import PROJECT_VARS
from tests.speech import silence, speak, write_wav
from worker import talk
from worker.tools.runner import ToolRunningLLMOptions

pytestmark = pytest.mark.timeout(120)

QUESTION = "What is the capital of France?"
MORE = (
    "And then I also wanted to tell you about my trip to the mountains last summer, where we "
    "walked for many hours every day and saw lakes and forests."
)
ANSWER = "Paris. And the mountains sound lovely."
STALE = "The capital of France is Paris."
RATE = 16000


@pytest.fixture
def workdir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No project variables, no .env: a newcomer's environment, in an empty directory."""
    for name in list(os.environ):
        if name.startswith(PROJECT_VARS):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def last_user_text(body: dict[str, Any]) -> str:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    if isinstance(content, str):
        return content
    return " ".join(p["text"] for p in content if p.get("type") == "text")


async def run(workdir: Path, answer: Any, *pieces: np.ndarray) -> tuple[Any, OpenAIServer]:
    write_wav(str(workdir / "input.wav"), np.concatenate(pieces), RATE)
    async with OpenAIServer(answer) as oai:
        config = talk.talk_config({"OPENAI_BASE_URL": oai.base_url}, dotenv=None)
        options = talk.TalkOptions(
            input=workdir / "input.wav", out=workdir / "reply.wav", fast=True, reply_timeout=30
        )
        inputs = await talk.load_inputs(options)
        result = await talk.run_talk(options, inputs, config, quiet=True)
    return result, oai


async def test_an_empty_answer_is_apologised_for_and_talk_ends(workdir: Path) -> None:
    result, oai = await run(
        workdir, lambda body: Reply(text=""), speak(QUESTION, RATE), silence(0.6, RATE)
    )
    what = ([last_user_text(r.body) for r in oai.requests], result.transcript, result.turns)
    assert result.answered, what  # not stopped by --reply-timeout
    assert len(oai.requests) == 1, what
    agent = " ".join(line.text for line in result.transcript if line.speaker == "agent")
    assert agent == ToolRunningLLMOptions().apology
    assert [(t["outcome"], t["error"]) for t in result.turns] == [("apologised", "llm")]


async def test_a_question_followed_by_more_speech_is_answered_as_a_whole(workdir: Path) -> None:
    def answer(body: dict[str, Any]) -> Reply:
        heard = last_user_text(body).lower()
        return Reply(text=ANSWER if "mountains" in heard else STALE, ttft=0.1)

    result, oai = await run(
        workdir,
        answer,
        speak(QUESTION, RATE),
        silence(0.8, RATE),  # the VAD ends the question; Whisper's final comes during MORE
        speak(MORE, RATE),
        silence(0.6, RATE),
    )
    what = ([last_user_text(r.body) for r in oai.requests], result.transcript, result.turns)
    assert result.answered, what
    last = oai.requests[-1]
    assert "mountains" in last_user_text(last.body).lower(), what
    assert "france" in last_user_text(last.body).lower(), what
    assert not last.client_disconnected  # talk did not stop while the answer streamed
    agent = [line.text for line in result.transcript if line.speaker == "agent"]
    assert agent == [ANSWER]  # the stale answer to the question alone never played
    # a reply confirmed on the question alone (at the VAD's end of speech) may have been
    # withdrawn silently when the user went on: reported as such, never as an answer
    *before, final = [t["outcome"] for t in result.turns]
    assert final == "answered"
    assert set(before) <= {"withdrawn"}
    assert isinstance(result.turns[-1]["e2e_latency"], float)
