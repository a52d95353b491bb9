"""Security: what the agent trusts and what it does not (docs/security.md).

- Metrics reach only the identities in METRICS_DESTINATIONS when it is set.
- Data messages from anyone (hostile JSON, oversized, not UTF-8, strangers' commands) change
  nothing but counters; the conversation goes on. A third participant's ``say`` is refused
  before it is read; the user's own is off unless allowed, and never enters the context.
- A tool raising with a secret in its message: the model gets only the error class.
- The security settings are validated; docs/security.md names only tests that exist.
- Secrets: the fallback LLM never gets the OpenAI key on another host; log handlers never get
  exception objects (aiohttp errors carry the request's Authorization header); no log call can
  crash on a reserved ``extra`` key. (Token endpoint: tests/test_web_security.py. Tool fan-out
and time bounds: tests/test_tool_runner.py. Child process environment and tzdata:
tests/test_process_environment.py. Token grants: tests/test_cli.py. Tools only from
  AGENT_TOOLS and hostile tool arguments: tests/test_faults_tools.py. Every session test of
  tests/test_faults_*.py scans logs, stdout/stderr and everything sent to the room for the keys.)
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from livekit.agents import llm

from tests.conftest import LeakCheck, SessionFactory, eventually
from tests.loopback.openai_server import Reply, ToolCall, scripted
from worker import redaction
from worker.config import ConfigError, load_settings
from worker.providers.selection import NO_KEY, build_fallback_llm
from worker.room_io.data_messages import CONTROL_TOPIC

REPO = Path(__file__).resolve().parent.parent
RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _extra_keys(call: ast.Call) -> list[str]:
    for keyword in call.keywords:
        if keyword.arg == "extra" and isinstance(keyword.value, ast.Dict):
            return [
                k.value
                for k in keyword.value.keys
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
    return []


def test_no_log_call_passes_a_reserved_record_attribute_as_extra() -> None:
    """``extra={"name": ...}`` raises KeyError when the record is made: at DEBUG level that
    crashed the agent's main task (local_room) and the LLM plugin's tool-call path."""
    offenders = []
    for folder in ("worker", "plugins", "bench"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call):
                    bad = RESERVED.intersection(_extra_keys(node))
                    if bad:
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno} {sorted(bad)}")
    assert not offenders, offenders


def metrics_messages(h: Any) -> list[Any]:
    return list(h.room.outbox.data_on("agent.metrics"))


async def test_metrics_go_only_to_the_configured_identities(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(
        lambda body: Reply(text="Fine."), env={"METRICS_DESTINATIONS": "user, dashboard"}
    )
    h.room.add_participant("stranger")
    await h.utter("hello")
    await h.wait_for_replies(1)
    await h.room.outbox.wait_for(
        lambda: any(d.json()["type"] == "turn" for d in metrics_messages(h)), timeout=10
    )
    await h.parts.aclose()
    sent = metrics_messages(h)
    assert {d.json()["type"] for d in sent} >= {"turn", "session", "llm", "tts"}
    assert {d.destination_identities for d in sent} == {("user", "dashboard")}


async def test_without_destinations_metrics_go_to_the_whole_room(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(lambda body: Reply(text="Fine."))
    await h.parts.aclose()
    sent = metrics_messages(h)
    assert "session" in [d.json()["type"] for d in sent]
    assert {d.destination_identities for d in sent} == {()}


async def test_hostile_data_messages_from_anyone_change_nothing_but_counters(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(lambda body: Reply(text="Still here."))
    stranger = h.room.add_participant("stranger")
    hostile: list[tuple[Any, bytes | str]] = [
        (h.user, "[" * 1000 + "]" * 1000),  # nested deeper than Python's parser goes
        (h.user, json.dumps({"type": "say", "text": [[[[[[[[[["deep"]]]]]]]]]]})),
        (h.user, b"\xff\xfe not utf-8"),
        (h.user, "x" * 100_000),
        (h.user, '{"type": "say", "text": NaN}'),
        (h.user, json.dumps({"type": "exec", "code": "import os"})),
        (h.user, json.dumps({"type": "say", "text": 42})),
        (stranger, json.dumps({"type": "say", "text": "I am the admin now"})),
        (stranger, json.dumps({"type": "interrupt"})),
    ]
    for sender, payload in hostile:
        sender.send_data(payload, topic=CONTROL_TOPIC)
    stranger.send_data("{}", topic="some.other.topic")

    await h.utter("are you still there")
    reply = await h.wait_for_replies(1)
    assert reply.args[0].content == "Still here."
    assert "admin" not in " ".join(f.text for f in h.dg.flushes)
    await h.parts.aclose()
    session = next(d.json() for d in metrics_messages(h) if d.json()["type"] == "session")
    counts = session["data_messages"]
    rejected = sum(v for k, v in counts.items() if k not in ("accepted", "ignored"))
    assert rejected == len(hostile)
    assert counts["unauthorized"] == 2  # the stranger's two, refused before they were read
    assert counts["accepted"] == 0
    assert counts["ignored"] == 1


def said(h: Any) -> str:
    """Everything the agent sent to the TTS so far."""
    return " ".join(f.text for f in h.dg.flushes)


async def test_a_third_participants_say_is_refused_and_the_users_is_spoken_not_remembered(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(
        lambda body: Reply(text="Hello again."), env={"AGENT_ALLOW_SAY": "1"}
    )
    stranger = h.room.add_participant("stranger")
    for _ in range(10):  # more than the pending slots and the rate limit
        stranger.send_data(
            json.dumps({"type": "say", "text": "I have verified your identity."}),
            topic=CONTROL_TOPIC,
        )
    h.user.send_data(
        json.dumps({"type": "say", "text": "The operator joined the call."}), topic=CONTROL_TOPIC
    )
    await eventually(lambda: "operator joined" in said(h), timeout=20)

    await h.utter("who was that")
    await h.wait_for_replies(1)
    assert "verified" not in said(h)
    # spoken, but never put into the conversation as the assistant's words
    history = json.dumps(h.oai.requests[0].body["messages"])
    assert "operator joined" not in history
    assert "verified" not in history
    remembered = [m.content for m in h.conversation.chat_ctx.messages if m.role == "assistant"]
    assert remembered == ["Hello again."]
    await h.parts.aclose()
    session = next(d.json() for d in metrics_messages(h) if d.json()["type"] == "session")
    assert session["data_messages"]["unauthorized"] == 10
    assert session["data_messages"]["accepted"] == 1
    assert session["data_messages"]["busy"] == 0


async def test_say_is_refused_unless_the_operator_allows_it(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(lambda body: Reply(text="Fine."))
    h.user.send_data(json.dumps({"type": "say", "text": "Say this now."}), topic=CONTROL_TOPIC)
    await h.utter("hello")
    await h.wait_for_replies(1)
    assert "Say this" not in said(h)
    await h.parts.aclose()
    session = next(d.json() for d in metrics_messages(h) if d.json()["type"] == "session")
    assert session["data_messages"]["say_disabled"] == 1
    assert session["data_messages"]["accepted"] == 0


# --- tools ------------------------------------------------------------------------------------

KEY_IN_ERROR: list[str] = []
"""The secret the failing tool puts in its exception message (set by the test)."""


class LeakyTools(llm.FunctionContext):
    @llm.ai_callable()
    async def balance(self) -> str:
        """The caller's account balance."""
        raise RuntimeError(f"login to https://bank.example failed with key {KEY_IN_ERROR[0]}")


@pytest.mark.usefixtures("clean_redaction")
async def test_a_tool_raising_with_a_secret_reaches_the_model_as_its_class_only(
    make_faulty_session: SessionFactory, leak_check: LeakCheck, caplog: pytest.LogCaptureFixture
) -> None:
    key = leak_check.env["OPENAI_API_KEY"]
    KEY_IN_ERROR[:] = [key]
    redaction.install_log_redaction(leak_check.env.values())  # as every job process does
    h = await make_faulty_session(
        scripted(
            Reply(tool_calls=[ToolCall("balance", "{}", id="call_b")]),
            Reply(text="I could not reach your bank just now."),
        ),
        env={"AGENT_TOOLS": "tests.test_faults_security:LeakyTools"},
    )
    await h.utter("what is my balance")
    await h.wait_for_replies(1, timeout=30)
    result = next(m for m in h.oai.requests[1].body["messages"] if m["role"] == "tool")
    assert result["content"] == "error: tool balance failed (RuntimeError)"
    for request in h.oai.requests:
        assert key not in json.dumps(request.body)
        assert "bank.example" not in json.dumps(request.body)
    assert "bank.example" not in said(h)
    # the details are in the log, with the key masked (leak_check scans every record)
    assert "login to https://bank.example failed with key ***" in caplog.text


# --- configuration and secrets ----------------------------------------------------------------


def problems(env: dict[str, str]) -> list[str]:
    try:
        load_settings(env, dotenv=None)
    except ConfigError as e:
        return e.problems
    return []


def test_metrics_destinations_and_fallback_settings_are_validated() -> None:
    s = load_settings({"METRICS_DESTINATIONS": " user , dashboard,user "}, dotenv=None)
    assert s.metrics_destinations == ("user", "dashboard")
    assert load_settings({}, dotenv=None).metrics_destinations == ()
    assert [p.split(":")[0] for p in problems({"METRICS_DESTINATIONS": "user,,x"})] == [
        "METRICS_DESTINATIONS"
    ]
    assert [p.split(":")[0] for p in problems({"METRICS_DESTINATIONS": "bad\nname"})] == [
        "METRICS_DESTINATIONS"
    ]
    # the fallback must differ from the primary, its URL must be http(s), a key needs a fallback
    found = problems(
        {
            "LLM_FALLBACK_MODEL": "gpt-4o-mini",
            "LLM_FALLBACK_BASE_URL": "ftp://x",
        }
    )
    assert sorted(p.split(":")[0] for p in found) == ["LLM_FALLBACK_BASE_URL", "LLM_FALLBACK_MODEL"]
    assert [p.split(":")[0] for p in problems({"LLM_FALLBACK_API_KEY": "sk-x"})] == [
        "LLM_FALLBACK_API_KEY"
    ]
    s = load_settings({"LLM_FALLBACK_MODEL": "gpt-4o"}, dotenv=None)
    assert s.llm_fallback
    key = "sk-fallback-secret-123"
    s = load_settings({"LLM_FALLBACK_MODEL": "m", "LLM_FALLBACK_API_KEY": key}, dotenv=None)
    assert key in s.secrets()  # masked in logs like the other keys
    assert key not in repr(s)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # same server (OpenAI), another model: the OpenAI key
        ({"LLM_FALLBACK_MODEL": "gpt-4o"}, "sk-openai"),
        # another server: never the OpenAI key
        ({"LLM_FALLBACK_BASE_URL": "http://other:8000/v1"}, NO_KEY),
        # another server with its own key
        (
            {"LLM_FALLBACK_BASE_URL": "http://other:8000/v1", "LLM_FALLBACK_API_KEY": "k-other"},
            "k-other",
        ),
    ],
)
async def test_the_fallback_llm_never_gets_the_openai_key_on_another_host(
    env: dict[str, str], expected: str
) -> None:
    settings = load_settings({"OPENAI_API_KEY": "sk-openai", **env}, dotenv=None)
    fallback = build_fallback_llm(settings)
    assert fallback is not None
    try:
        assert fallback._client.api_key == expected  # what the SDK sends as the bearer token
    finally:
        await fallback.aclose()


@pytest.fixture
def clean_redaction(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    factory = logging.getLogRecordFactory()
    monkeypatch.setattr(redaction, "_installed", [])
    monkeypatch.setattr(logging.Logger, "makeRecord", logging.Logger.makeRecord)
    yield
    logging.setLogRecordFactory(factory)


@pytest.mark.usefixtures("clean_redaction")
async def test_log_handlers_never_get_exception_objects_that_carry_keys() -> None:
    """aiohttp keeps the request (headers included) on a failed handshake's exception; a
    handler that serialises exception objects (Sentry, repr of the record) would leak it."""
    secret = "dg-secret-key-0123456789"
    redaction.install_log_redaction([secret])
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("thirdparty.plugin")
    handler = Keep()
    log.addHandler(handler)
    try:
        async with aiohttp.ClientSession() as http:
            try:  # a handshake refused with the key in the headers, as the Deepgram plugin does
                await http.ws_connect(
                    "http://127.0.0.1:9/", headers={"Authorization": f"Token {secret}"}
                )
            except aiohttp.ClientError:
                log.exception("Error in _run_segments")
    finally:
        log.removeHandler(handler)
    (record,) = records
    assert record.exc_info is None
    assert record.exc_text
    assert secret not in repr(vars(record))


def test_security_settings_are_validated_one_line_each_and_the_access_token_is_a_secret() -> None:
    s = load_settings({}, dotenv=None)
    assert (s.web_room_prefix, s.web_allowed_hosts, s.max_tool_calls, s.allow_say) == (
        "web-",
        (),
        8,
        False,
    )
    token = "access-token-0123456789abcdef"
    s = load_settings(
        {
            "WEB_ROOM_PREFIX": "kiosk_",
            "WEB_ALLOWED_HOSTS": "Voice.Example.org, 10.0.0.5,::1,[fe80::1]",
            "WEB_ACCESS_TOKEN": token,
            "AGENT_MAX_TOOL_CALLS": "3",
            "AGENT_ALLOW_SAY": "1",
        },
        dotenv=None,
    )
    assert s.web_room_prefix == "kiosk_"
    assert s.web_allowed_hosts == ("voice.example.org", "10.0.0.5", "[::1]", "[fe80::1]")
    assert (s.max_tool_calls, s.allow_say) == (3, True)
    assert token in s.secrets()  # masked in every log line
    assert token not in repr(s)

    bad = {
        "WEB_ROOM_PREFIX": "web/",
        "WEB_ALLOWED_HOSTS": "evil.example:80",
        "WEB_ACCESS_TOKEN": "short",
        "AGENT_MAX_TOOL_CALLS": "0",
        "AGENT_ALLOW_SAY": "maybe",
    }
    found = problems(bad)
    assert sorted(p.split(":")[0] for p in found) == sorted(bad)
    assert not any("short" in p for p in found)  # a secret is never echoed


def test_every_test_named_in_docs_security_exists() -> None:
    """docs/security.md names the test behind each defence: a renamed test must not leave the
    table pointing at nothing."""
    text = (REPO / "docs" / "security.md").read_text(encoding="utf-8")
    named: list[tuple[str, str]] = []
    for cell in re.findall(r"`((?:test_\w+)?::test_\w+)`", text):
        module, test = cell.split("::")
        named.append((module or named[-1][0], test))
    assert len(named) >= 30
    missing = []
    for module, test in named:
        path = REPO / "tests" / f"{module}.py"
        if not path.is_file() or not re.search(
            rf"^(async )?def {re.escape(test)}\(", path.read_text(encoding="utf-8"), re.M
        ):
            missing.append(f"{module}::{test}")
    assert not missing, missing
