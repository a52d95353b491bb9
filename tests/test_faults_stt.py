"""STT faults: the Deepgram listen socket dropped mid-utterance, or refused (HTTP 500 on the
websocket upgrade), with the real Deepgram plugin in front of the loopback server.

The plugin reconnects a dropped socket by itself; a refused one ends its stream for good (the
agent would go deaf), which ``ReconnectingSTT`` (worker.providers.reconnecting_stt) turns into a
replacement
stream after a backoff, keeping the audio spoken meanwhile. Through a whole session: the
agent keeps hearing, answers the next turn, reports the failures in the metrics, leaks no key.
"""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiohttp
import numpy as np
import pytest
from livekit import rtc
from livekit.agents import stt
from livekit.plugins import deepgram

from tests.conftest import Harness, SessionFactory
from tests.loopback.deepgram_server import DeepgramLoopback
from tests.loopback.openai_server import Reply
from tests.speech import speak
from worker.providers.reconnecting_stt import ReconnectingSTT, ReconnectingSTTOptions


def answer(body: dict[str, Any]) -> Reply:
    content = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    text = content if isinstance(content, str) else content[0]["text"]
    return Reply(text=f"You said {text}.")


def stt_errors(h: Harness) -> list[str]:
    messages = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
    return [m["error"] for m in messages if m["type"] == "stt" and m["error"]]


def resilient(h: Harness) -> ReconnectingSTT:
    wrapper = h.parts.stt
    assert isinstance(wrapper, ReconnectingSTT)
    return wrapper


def reconnect_now(h: Harness) -> None:
    """Make every live Deepgram stream open a new connection (the plugin's public
    update_options reconnects), so a fault set for new connections applies right away."""
    inner = resilient(h).inner
    assert isinstance(inner, deepgram.STT)
    inner.update_options(language="en-US")


async def test_a_socket_dropped_mid_utterance_reconnects_and_the_turns_go_on(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(answer)
    await h.utter("good morning")
    assert (await h.wait_for_replies(1)).args[0].content == "You said good morning."

    # the next connection is cut 0.6 s (of audio) after it opens: inside the utterance below
    h.dg.listen_faults.drop_after_audio = 0.6
    h.dg.listen_faults.drop_connections = 1
    before = len(h.dg.listen_connections)
    reconnect_now(h)
    await h.dg.wait_until(lambda: len(h.dg.listen_connections) > before, timeout=10)
    await h.utter("what is the weather like in Paris today", transcript="weather in Paris")

    dropped = h.dg.listen_connections[before]
    assert dropped.dropped
    # the plugin reconnected at once and the rest of the utterance was still recognised
    reply = await h.wait_for_replies(2, timeout=30)
    assert reply.args[0].content == "You said weather in Paris."
    assert len(h.dg.listen_connections) == before + 2

    await h.utter("thank you")
    assert (await h.wait_for_replies(3)).args[0].content == "You said thank you."
    assert resilient(h).failures == 0  # the plugin's own reconnect sufficed


async def test_refused_connections_are_retried_with_backoff_and_the_agent_keeps_hearing(
    make_faulty_session: SessionFactory,
) -> None:
    h = await make_faulty_session(answer)
    await h.utter("good morning")
    await h.wait_for_replies(1)

    # the next three connection attempts are refused: the plugin's stream dies at the first
    h.dg.listen_faults.refuse_connections = 3
    reconnect_now(h)
    await h.dg.wait_until(lambda: len(h.dg.refused) >= 1, timeout=10)
    # spoken while no connection is up: kept, and recognised once one is
    await h.utter("this was said during the outage", transcript="during the outage")
    reply = await h.wait_for_replies(2, timeout=30)
    assert reply.args[0].content == "You said during the outage."
    assert len(h.dg.refused) == 3

    # the replacements waited longer each time (backoff), never hammering the server
    gaps = [b[0] - a[0] for a, b in zip(h.dg.refused, h.dg.refused[1:], strict=False)]
    assert gaps[1] > gaps[0]
    assert resilient(h).failures == 3  # the plugin's own stream, then two replacements

    await h.utter("are you still there")
    assert (await h.wait_for_replies(3)).args[0].content == "You said are you still there."
    await h.room.outbox.wait_for(lambda: len(stt_errors(h)) >= 3, timeout=10)
    assert set(stt_errors(h)) == {"WSServerHandshakeError"}


# --- the wrapper on its own, with the real plugin: nothing of the session in between -------


async def test_a_resilient_stream_outlives_refusals_and_ends_with_its_input() -> None:
    async with DeepgramLoopback() as server, aiohttp.ClientSession() as http:
        server.listen_faults.refuse_connections = 2
        server.transcripts.append("hello there")
        wrapper = ReconnectingSTT(
            deepgram.STT(base_url=server.stt_url, http_session=http, api_key="fake-key"),
            ReconnectingSTTOptions(first_delay=0.05, max_delay=0.2, max_buffer_seconds=10.0),
        )
        errors: list[Any] = []
        wrapper.on("metrics_collected", lambda m: errors.append(m.error) if m.error else None)
        stream = wrapper.stream()
        speech = speak("hello there", 16000)
        silence = np.zeros(16000, dtype=np.int16)
        for samples in (speech, silence):  # pushed at once: kept while the server refuses
            for start in range(0, samples.size, 160):
                chunk = samples[start : start + 160]
                stream.push_frame(rtc.AudioFrame(chunk.tobytes(), 16000, 1, chunk.size))
        events: list[stt.SpeechEvent] = []

        async def read() -> None:
            async for ev in stream:  # ends once the input ended: no error is raised
                events.append(ev)

        reader = asyncio.create_task(read())
        await server.wait_until(lambda: bool(server.finals), timeout=10)
        stream.end_input()
        await reader
        await stream.aclose()
        await wrapper.aclose()

    finals = [e for e in events if e.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [e.alternatives[0].text for e in finals] == ["hello there"]
    assert len(server.refused) == 2
    assert [e.reason for e in errors] == ["WSServerHandshakeError"] * 2
    assert stream.failures == 2


async def test_the_audio_kept_during_an_outage_is_bounded() -> None:
    async with DeepgramLoopback() as server, aiohttp.ClientSession() as http:
        server.listen_faults.refuse_connections = 1
        wrapper = ReconnectingSTT(
            deepgram.STT(base_url=server.stt_url, http_session=http, api_key="fake-key"),
            ReconnectingSTTOptions(first_delay=0.3, max_buffer_seconds=1.0),
        )
        stream = wrapper.stream()
        await server.wait_until(lambda: len(server.refused) == 1)
        for _ in range(300):  # 3 s of audio during a 0.3 s outage: only the newest 1 s is kept
            stream.push_frame(rtc.AudioFrame(bytes(320), 16000, 1, 160))
        await server.wait_until(lambda: bool(server.listen_connections))
        stream.end_input()  # the replacement runs: it got the backlog first
        async for _ in stream:
            pass
        await stream.aclose()
        await wrapper.aclose()
    received = server.listen_connections[0].audio_seconds
    assert 0.9 <= received <= 1.1, received


async def test_a_clean_session_ends_its_stt_stream_cleanly_and_reports_all_its_audio(
    make_session: SessionFactory, loop_errors: list[dict[str, Any]]
) -> None:
    """No fault at all: closing the session ends the Deepgram stream the way the plugin
    expects, so the event loop reports nothing (not even the plugin's unretrieved gather that
    conftest otherwise tolerates), and the usage adds up to all the audio the server got,
    including the last partial 5 s window the plugin never reports itself."""
    h = await make_session(answer)
    await h.utter("good morning")
    assert (await h.wait_for_replies(1)).args[0].content == "You said good morning."
    await h.aclose()
    gc.collect()  # an unretrieved exception is reported when its future is collected
    assert [context.get("message") for context in loop_errors] == []

    messages = [d.json() for d in h.room.outbox.data_on("agent.metrics")]
    sessions = [m for m in messages if m["type"] == "session"]
    assert len(sessions) == 1
    received = h.dg.received_audio_seconds
    assert received > 1.0
    assert sessions[0]["stt_audio_duration"] == pytest.approx(received, abs=0.06)
    reported = sum(m["audio_duration"] for m in messages if m["type"] == "stt" and not m["error"])
    assert reported == pytest.approx(sessions[0]["stt_audio_duration"], abs=0.01)
