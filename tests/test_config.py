"""Configuration: validation, .env, AGENT_INSTRUCTIONS=@file, secrets never printed, log masking."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import redaction
from worker.config import ConfigError, Need, Secret, Settings, load_settings
from worker.redaction import install_log_redaction, redact

SECRET = "s3cr3t-value-that-must-never-print-0123456789"
FULL_ENV = {
    "LIVEKIT_URL": "wss://example.livekit.cloud",
    "LIVEKIT_API_KEY": "APIkey0123",
    "LIVEKIT_API_SECRET": SECRET,
    "AGENT_NAME": "support-agent",
    "DEEPGRAM_API_KEY": "dg-key-0123456789",
    "OPENAI_API_KEY": "sk-key-0123456789",
}
ALL_NEEDS = (Need.LIVEKIT_SERVER, Need.AGENT_NAME, Need.CLOUD_PROVIDERS)


def load(
    env: dict[str, str], *, needs: tuple[Need, ...] = (), dotenv: Path | None = None
) -> Settings:
    return load_settings(env, dotenv=dotenv, needs=needs)


def problems(env: dict[str, str], *, needs: tuple[Need, ...] = ()) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(env, needs=needs)
    return info.value.problems


def variables(lines: list[str]) -> list[str]:
    return [line.split(":", 1)[0] for line in lines]


# --- validation -----------------------------------------------------------------------------


def test_a_complete_environment_parses() -> None:
    s = load(
        {
            **FULL_ENV,
            "LLM_AUDIO_INPUT": "ON",
            "STT_PROVIDER": "whisper",
            "TTS_PROVIDER": "piper",
            "MAX_JOBS": "4",
            "WORKER_PORT": "0",
            "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1/",
            "AGENT_TOOLS": "my_pkg.tools:Weather",
            "METRICS_TOPIC": "lk.metrics",
            "END_OF_TURN_DELAY_MS": "500",
        },
        needs=ALL_NEEDS,
    )
    assert s.livekit_url == "wss://example.livekit.cloud"
    assert s.livekit_api_secret.reveal() == SECRET
    assert (s.llm_audio_input, s.stt_provider, s.tts_provider) == ("on", "whisper", "piper")
    assert (s.max_jobs, s.worker_port) == (4, 0)
    assert s.openai_base_url == "http://127.0.0.1:8000/v1"
    assert s.tools == "my_pkg.tools:Weather"
    assert s.metrics_topic == "lk.metrics"
    assert s.end_of_turn_delay_ms == 500


def test_defaults_without_any_variable() -> None:
    s = load({})
    assert s.metrics_topic == "agent.metrics"
    assert s.llm_audio_input == "auto"
    assert (s.stt_provider, s.tts_provider) == ("deepgram", "deepgram")
    assert s.secrets() == []
    assert s.end_of_turn_delay_ms == 800
    assert load({"STT_PROVIDER": "whisper"}).end_of_turn_delay_ms == 0


def test_every_malformed_variable_is_named_at_once() -> None:
    bad = {
        "LIVEKIT_URL": "localhost:7880",
        "AGENT_NAME": "my agent!",
        "AGENT_IDENTITY": "who/am/i",
        "AGENT_TOOLS": "tools.py",
        "DEEPGRAM_STT_URL": "not a url",
        "DEEPGRAM_TTS_URL": "ftp://deepgram",
        "OPENAI_BASE_URL": "ws://127.0.0.1:8000",
        "LLM_AUDIO_INPUT": "sometimes",
        "STT_PROVIDER": "vosk",
        "TTS_PROVIDER": "espeak",
        "MAX_JOBS": "0",
        "WORKER_PORT": "http",
        "END_OF_TURN_DELAY_MS": "-1",
    }
    found = problems(bad, needs=ALL_NEEDS)
    # Each malformed variable exactly once, plus the keys the needs ask for.
    assert sorted(variables(found)) == sorted(
        [*bad, "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DEEPGRAM_API_KEY", "OPENAI_API_KEY"]
    )
    text = "\n".join(found)
    assert "'sometimes'" in text  # the offending value is shown for non-secrets
    assert "between 1 and 1000" in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_JOBS", "1001"),
        ("MAX_JOBS", "-1"),
        ("MAX_JOBS", "2.5"),
        ("WORKER_PORT", "65536"),
        ("LIVEKIT_URL", "https://"),
        ("LLM_AUDIO_INPUT", "yes"),
        ("VAD_PROVIDER", "webrtc"),
        ("TURN_DETECTOR", "text"),
    ],
)
def test_one_malformed_value_is_one_problem(name: str, value: str) -> None:
    assert variables(problems({name: value})) == [name]


def test_needs_decide_what_must_be_set() -> None:
    assert variables(problems({}, needs=(Need.LIVEKIT_SERVER,))) == [
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
    ]
    assert variables(problems({}, needs=(Need.LIVEKIT_KEYS,))) == [
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
    ]
    assert variables(problems({}, needs=(Need.AGENT_NAME,))) == ["AGENT_NAME"]
    assert variables(problems({}, needs=(Need.CLOUD_PROVIDERS,))) == [
        "DEEPGRAM_API_KEY",
        "OPENAI_API_KEY",
    ]
    # Offline providers and a compatible server need no cloud keys.
    offline = {
        "STT_PROVIDER": "whisper",
        "TTS_PROVIDER": "piper",
        "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
    }
    assert load(offline, needs=(Need.CLOUD_PROVIDERS,)).deepgram_api_key.reveal() == ""
    # Deepgram for only one of STT/TTS still needs its key.
    assert variables(
        problems({**offline, "TTS_PROVIDER": "deepgram"}, needs=(Need.CLOUD_PROVIDERS,))
    ) == ["DEEPGRAM_API_KEY"]


def test_blank_values_count_as_unset() -> None:
    assert variables(problems({"LIVEKIT_API_KEY": "   "}, needs=(Need.LIVEKIT_KEYS,))) == [
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
    ]


def test_a_malformed_agent_name_is_reported_once_even_when_needed() -> None:
    found = problems({**FULL_ENV, "AGENT_NAME": "two words"}, needs=(Need.AGENT_NAME,))
    assert variables(found) == ["AGENT_NAME"]


# --- .env -----------------------------------------------------------------------------------


def test_dotenv_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# LiveKit\n"
        "export LIVEKIT_URL=ws://dotenv:7880\n"
        "LIVEKIT_API_KEY = 'APIfromfile'\n"
        f'LIVEKIT_API_SECRET="{SECRET}"\n'
        "AGENT_NAME=file-agent  # explicit dispatch\n"
        "METRICS_TOPIC=file.topic\n"
        "not a variable line\n"
        "\n"
    )
    s = load({"AGENT_NAME": "env-agent"}, dotenv=dotenv, needs=(Need.LIVEKIT_SERVER,))
    assert s.livekit_url == "ws://dotenv:7880"
    assert s.livekit_api_key.reveal() == "APIfromfile"
    assert s.livekit_api_secret.reveal() == SECRET
    assert s.agent_name == "env-agent"
    assert s.metrics_topic == "file.topic"


def test_a_missing_dotenv_file_is_fine(tmp_path: Path) -> None:
    assert load({}, dotenv=tmp_path / ".env").agent_name == ""


def test_malformed_values_from_dotenv_are_named(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("MAX_JOBS=lots\nTTS_PROVIDER=festival\n")
    with pytest.raises(ConfigError) as info:
        load({}, dotenv=dotenv)
    assert variables(info.value.problems) == ["TTS_PROVIDER", "MAX_JOBS"]


# --- AGENT_INSTRUCTIONS=@file ---------------------------------------------------------------


def test_instructions_inline_or_from_a_file(tmp_path: Path) -> None:
    assert load({"AGENT_INSTRUCTIONS": "Be terse."}).instructions == "Be terse."
    prompt = tmp_path / "prompt.md"
    prompt.write_text("\nYou are a pirate.\nSpeak like one.\n\n", encoding="utf-8")
    assert load({"AGENT_INSTRUCTIONS": f"@{prompt}"}).instructions == (
        "You are a pirate.\nSpeak like one."
    )


def test_instructions_file_missing_or_empty_is_a_problem(tmp_path: Path) -> None:
    missing = tmp_path / "nope.md"
    found = problems({"AGENT_INSTRUCTIONS": f"@{missing}"})
    assert variables(found) == ["AGENT_INSTRUCTIONS"]
    assert str(missing) in found[0]
    empty = tmp_path / "empty.md"
    empty.write_text("  \n")
    found = problems({"AGENT_INSTRUCTIONS": f"@{empty}", "MAX_JOBS": "x"})
    assert variables(found) == ["AGENT_INSTRUCTIONS", "MAX_JOBS"]


# --- secrets never print --------------------------------------------------------------------


def test_secret_never_prints_itself() -> None:
    secret = Secret(SECRET)
    shown = [
        str(secret),
        repr(secret),
        f"{secret}",
        f"{secret!r}",
        "%s %r" % (secret, secret),  # noqa: UP031 - the %-formatting path is the point
        "{}".format(secret),  # noqa: UP032
        str([secret]),
        str({"k": secret}),
    ]
    for text in shown:
        assert SECRET not in text
        assert "***" in text
    assert secret.reveal() == SECRET
    assert secret == Secret(SECRET)
    assert bool(Secret("")) is False


def test_settings_repr_and_errors_hide_secrets() -> None:
    s = load(FULL_ENV, needs=ALL_NEEDS)
    for value in s.secrets():
        assert value not in repr(s)
        assert value not in str(s)
    assert sorted(s.secrets()) == sorted(
        FULL_ENV[k]
        for k in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "DEEPGRAM_API_KEY", "OPENAI_API_KEY")
    )
    # Problems elsewhere never echo a secret.
    with pytest.raises(ConfigError) as info:
        load({**FULL_ENV, "MAX_JOBS": "x"}, needs=ALL_NEEDS)
    assert all(value not in str(info.value) for value in s.secrets())


# --- log redaction --------------------------------------------------------------------------


@pytest.fixture
def clean_redaction(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test installs its own masking; restore the process' logging hooks afterwards."""
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(redaction, "_installed", [])
    monkeypatch.setattr(logging.Logger, "makeRecord", logging.Logger.makeRecord)
    yield
    logging.setLogRecordFactory(factory)


class _JsonLines(logging.Formatter):
    """Like the framework's production formatter: message, exception and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        data = {k: v for k, v in record.__dict__.items() if k not in ("args", "msg", "exc_info")}
        data["message"] = record.getMessage()
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


@pytest.fixture
def third_party_log() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger that is not ours (as aiohttp's or a plugin's), writing JSON lines."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(_JsonLines())
    log = logging.getLogger("thirdparty.client")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log, out
    log.removeHandler(handler)


def test_redact_masks_every_secret() -> None:
    assert redact(f"a {SECRET} b {SECRET}", [SECRET, ""]) == "a *** b ***"
    assert redact("nothing here", [SECRET]) == "nothing here"


@pytest.mark.usefixtures("clean_redaction")
def test_third_party_log_records_are_masked(
    third_party_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = third_party_log
    install_log_redaction([SECRET, "abc"])  # too short to mask safely: ignored
    log.warning("connecting to wss://host/?key=%s", SECRET)
    log.info(f"header Authorization: Token {SECRET}")
    log.info("request", extra={"api_key": SECRET, "attempt": 2})
    try:
        raise RuntimeError(f"server rejected key {SECRET}")
    except RuntimeError:
        log.exception("request failed")
    log.info("abc is a common word")

    text = out.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["message"] == "connecting to wss://host/?key=***"
    assert lines[1]["message"] == "header Authorization: Token ***"
    assert (lines[2]["api_key"], lines[2]["attempt"]) == ("***", 2)
    assert "server rejected key ***" in lines[3]["exc_text"]
    assert lines[4]["message"] == "abc is a common word"


@pytest.mark.usefixtures("clean_redaction")
def test_secrets_added_later_are_masked_too(
    third_party_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = third_party_log
    install_log_redaction(["first-secret-0001"])
    install_log_redaction(["second-secret-0002"])
    log.info("keys first-secret-0001 second-secret-0002")
    assert json.loads(out.getvalue())["message"] == "keys *** ***"


@pytest.mark.usefixtures("clean_redaction")
def test_secret_inside_a_structured_extra_is_masked(
    third_party_log: tuple[logging.Logger, io.StringIO],
) -> None:
    log, out = third_party_log
    install_log_redaction([SECRET])
    log.info("request", extra={"headers": {"Authorization": f"Bearer {SECRET}"}})
    assert SECRET not in out.getvalue()


def test_vad_and_turn_detector_choices() -> None:
    s = load({})
    assert (s.vad_provider, s.turn_detector) == ("livekit", "delay")
    s = load({"VAD_PROVIDER": "Silero", "TURN_DETECTOR": "audio"})
    assert (s.vad_provider, s.turn_detector) == ("silero", "audio")
