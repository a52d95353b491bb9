"""LANGUAGE, DEEPGRAM_STT_MODEL, DEEPGRAM_TTS_VOICE and LLM_MAX_TOKENS reach the providers: what
the loopback Deepgram (listen and speak query) and the loopback LLM receive."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import SessionFactory
from tests.loopback.openai_server import Reply
from worker.config import ConfigError, load_settings
from worker.providers.segmenting_tts import SegmenterOptions, TextSegmenter

pytestmark = pytest.mark.timeout(60)


async def test_language_model_voice_and_max_tokens_reach_the_providers(
    make_session: SessionFactory,
) -> None:
    answer = "Claro. Vive en la calle A. Es muy grande."

    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text=answer, ttft=0.1)

    env = {"LANGUAGE": "es", "DEEPGRAM_STT_MODEL": "nova-3", "LLM_MAX_TOKENS": "120"}
    h = await make_session(respond, env=env)
    await h.utter("where does she live", transcript="dónde vive")
    await h.wait_for_replies(1, timeout=30)

    listen = h.dg.listen_connections[0].query
    assert (listen["model"], listen["language"]) == ("nova-3", "es")
    speak = h.dg.speak_connections[0].query
    assert speak["model"] == "aura-2-celeste-es"  # the Spanish default voice
    body = h.oai.requests[0].body
    assert body["max_completion_tokens"] == 120
    assert "es" in body["messages"][0]["content"]  # the default instructions name the language
    # no English initial rule: "A." ends a Spanish sentence
    assert [f.text.strip() for f in h.dg.flushes] == [
        "Claro. Vive en la calle A.",
        "Es muy grande.",
    ]


async def test_defaults_english_and_a_named_voice(make_session: SessionFactory) -> None:
    def respond(body: dict[str, Any]) -> Reply:
        return Reply(text="Hello there.", ttft=0.1)

    h = await make_session(respond, env={"DEEPGRAM_TTS_VOICE": "aura-2-thalia-en"})
    await h.utter("hello")
    await h.wait_for_replies(1, timeout=30)
    listen = h.dg.listen_connections[0].query
    assert (listen["model"], listen["language"]) == ("nova-2-general", "en")
    assert h.dg.speak_connections[0].query["model"] == "aura-2-thalia-en"
    assert h.oai.requests[0].body["max_completion_tokens"] == 300


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"LANGUAGE": "multi", "DEEPGRAM_STT_MODEL": "nova-2-phonecall"}, "LANGUAGE: multi needs"),
        ({"LANGUAGE": "fr", "DEEPGRAM_STT_MODEL": "nova-2-meeting"}, "DEEPGRAM_STT_MODEL:"),
        ({"LANGUAGE": "de"}, "DEEPGRAM_TTS_VOICE: is not set"),
        ({"LANGUAGE": "de", "DEEPGRAM_TTS_VOICE": "aura-asteria-en"}, "speaks 'en'"),
        ({"LANGUAGE": "es", "STT_PROVIDER": "whisper"}, "Whisper model is English only"),
        ({"LANGUAGE": "es", "TTS_PROVIDER": "piper"}, "PIPER_VOICE: is not set"),
        ({"LANGUAGE": "en_US"}, "LANGUAGE: must be a BCP-47 tag"),
        ({"PIPER_VOICE": "/nonexistent/voice.onnx"}, "PIPER_VOICE: must be a piper .onnx"),
        ({"LLM_MAX_TOKENS": "5"}, "LLM_MAX_TOKENS: must be between"),
        ({"AGENT_MCP_SERVERS": 'http://; "unclosed'}, "AGENT_MCP_SERVERS:"),
    ],
)
def test_combinations_known_not_to_work_are_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(env, dotenv=None)
    assert any(p.startswith(problem) or problem in p for p in err.value.problems), (
        err.value.problems
    )


def test_working_combinations_are_accepted() -> None:
    s = load_settings({"LANGUAGE": "multi", "DEEPGRAM_STT_MODEL": "nova-3"}, dotenv=None)
    assert s.deepgram_tts_voice == ""  # the English default voice speaks
    s = load_settings({"LANGUAGE": "pt-BR", "DEEPGRAM_TTS_VOICE": "aura-2-x-pt"}, dotenv=None)
    assert "pt-BR" in s.instructions
    assert load_settings({}, dotenv=None).llm_max_tokens == 300


def _segments(language: str, text: str) -> list[str]:
    seg = TextSegmenter(SegmenterOptions(language=language, first_clause_min_words=0))
    out: list[str] = []
    for word in text.split(" "):
        out += seg.push(word + " ")
    return out + seg.flush()


def test_english_abbreviation_rules_only_for_english() -> None:
    # English: "Dr." and the initial "A." do not end a sentence
    assert _segments("en", "Plan A. is fine. Ask Dr. Smith today.") == [
        "Plan A. is fine.",
        "Ask Dr. Smith today.",
    ]
    # Spanish: they do (those rules are English); a decimal point never does
    assert _segments("es", "Es el plan A. Cuesta 3.5 euros. Vale.") == [
        "Es el plan A.",
        "Cuesta 3.5 euros. Vale.",
    ]
