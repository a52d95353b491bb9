"""TurnTracker: one ``turn`` payload per reply, joined by sequence_id from explicit observations."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit.agents.metrics import (
    PipelineEOUMetrics,
    PipelineLLMMetrics,
    PipelineTTSMetrics,
    PipelineVADMetrics,
)

from worker.metrics.turns import TurnTracker

WALL = 1_700_000_100.0


def eou(seq: str, delay: float = 0.6, transcription: float = 0.18) -> PipelineEOUMetrics:
    return PipelineEOUMetrics(
        sequence_id=seq,
        timestamp=WALL,
        end_of_utterance_delay=delay,
        transcription_delay=transcription,
    )


def llm(seq: str, ttft: float) -> PipelineLLMMetrics:
    return PipelineLLMMetrics(
        request_id="r",
        timestamp=WALL,
        ttft=ttft,
        duration=ttft + 0.5,
        label="llm",
        cancelled=False,
        completion_tokens=10,
        prompt_tokens=100,
        total_tokens=110,
        tokens_per_second=20.0,
        error=None,
        sequence_id=seq,
    )


def tts(seq: str, ttfb: float) -> PipelineTTSMetrics:
    return PipelineTTSMetrics(
        request_id="t",
        timestamp=WALL,
        ttfb=ttfb,
        duration=1.0,
        audio_duration=2.0,
        cancelled=False,
        characters_count=30,
        label="tts",
        streamed=True,
        error=None,
        sequence_id=seq,
    )


@pytest.fixture
def emitted() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def tracker(emitted: list[dict[str, Any]]) -> TurnTracker:
    return TurnTracker(emitted.append, clock=lambda: WALL)


def test_turn_joins_a_replys_metrics(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    t0 = 500.0  # perf_counter moments
    tracker.user_stopped_speaking(t0)
    tracker.metrics(eou("SH_a", delay=0.6, transcription=0.18))
    tracker.first_text("SH_a", t0 + 0.95)
    tracker.metrics(llm("SH_a", ttft=0.3))
    tracker.tool_round("SH_a", 0.5)
    tracker.metrics(llm("SH_a", ttft=0.2))  # second round: not the turn's llm_ttft
    tracker.tool_round("SH_a", 0.25)
    tracker.first_audio("SH_a", t0 + 1.35)
    tracker.metrics(tts("SH_a", ttfb=0.9))
    payload = tracker.reply_finished("SH_a", interrupted=False)
    assert emitted == [payload]
    assert payload == {
        "v": 1,
        "type": "turn",
        "ts": WALL,
        "sequence_id": "SH_a",
        "e2e_latency": 1.35,
        "end_of_utterance_delay": 0.6,
        "transcription_delay": 0.18,
        "llm_ttft": 0.3,
        "tts_ttfb": 0.4,
        "tts_ttfb_source": "first_text",
        "tool_time": 0.75,
        "tool_rounds": 2,
        "interrupted": False,
        "outcome": "answered",
        "error": None,
    }
    assert tracker.counts.turns == 1
    assert tracker.counts.interrupted == 0


def test_e2e_is_measured_not_summed(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    """Components that overlap (or lie) do not change e2e: it is first audio - end of speech."""
    tracker.user_stopped_speaking(10.0)
    tracker.metrics(eou("SH_b", delay=5.0, transcription=5.0))
    tracker.metrics(llm("SH_b", ttft=5.0))
    tracker.first_audio("SH_b", 11.0)
    tracker.reply_finished("SH_b", interrupted=False)
    assert emitted[0]["e2e_latency"] == 1.0


async def test_scripted_timeline_live(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    """Real perf_counter moments with known gaps: e2e covers exactly the scripted span."""
    user_end = time.perf_counter()
    tracker.user_stopped_speaking(user_end)
    await asyncio.sleep(0.2)  # endpointing
    tracker.metrics(eou("SH_c", delay=time.perf_counter() - user_end))
    await asyncio.sleep(0.1)  # LLM to first token
    text_at = time.perf_counter()
    tracker.first_text("SH_c", text_at)
    await asyncio.sleep(0.15)  # TTS to first audio
    audio_at = time.perf_counter()
    tracker.first_audio(None, audio_at)
    tracker.reply_finished(None, interrupted=False)
    turn = emitted[0]
    assert turn["sequence_id"] == "SH_c"
    assert turn["e2e_latency"] == pytest.approx(audio_at - user_end, abs=1e-4)
    assert turn["e2e_latency"] >= 0.45 - 0.005
    assert turn["tts_ttfb"] == pytest.approx(audio_at - text_at, abs=1e-4)
    assert turn["tts_ttfb"] >= 0.15 - 0.005
    assert turn["end_of_utterance_delay"] >= 0.2 - 0.005


def test_framework_ttfb_is_the_labelled_fallback(
    tracker: TurnTracker, emitted: list[dict[str, Any]]
) -> None:
    tracker.metrics(tts("SH_d", ttfb=0.7))
    tracker.metrics(tts("SH_d", ttfb=0.1))  # a later sentence: not the first audio
    tracker.reply_finished("SH_d", interrupted=False)
    assert emitted[0]["tts_ttfb"] == 0.7
    assert emitted[0]["tts_ttfb_source"] == "framework"


def test_interrupted_before_audio(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    tracker.user_stopped_speaking(1.0)
    tracker.metrics(eou("SH_e"))
    tracker.reply_finished("SH_e", interrupted=True)
    turn = emitted[0]
    assert turn["interrupted"] is True
    assert turn["e2e_latency"] is None
    assert turn["tts_ttfb"] is None
    assert turn["tts_ttfb_source"] is None
    assert turn["llm_ttft"] is None
    assert tracker.counts.turns == 1
    assert tracker.counts.interrupted == 1


def test_withdrawn_reply_says_so_and_the_next_one_keeps_its_e2e(
    tracker: TurnTracker, emitted: list[dict[str, Any]]
) -> None:
    """A reply taken back before its first sound (the user spoke again), then the reply to the
    merged turn, confirmed at the next end of speech."""
    tracker.user_stopped_speaking(1.0)
    tracker.metrics(eou("SH_w"))
    tracker.reply_finished("SH_w", interrupted=False, withdrawn=True, llm_failed=False)
    tracker.user_stopped_speaking(5.0)
    tracker.metrics(eou("SH_m"))
    tracker.first_audio("SH_m", 6.5)
    tracker.reply_finished("SH_m", interrupted=False)
    assert [(t["outcome"], t["interrupted"], t["e2e_latency"]) for t in emitted] == [
        ("withdrawn", False, None),
        ("answered", False, 1.5),
    ]


def test_once_per_reply_and_late_metrics_ignored(
    tracker: TurnTracker, emitted: list[dict[str, Any]]
) -> None:
    tracker.metrics(eou("SH_f"))
    assert tracker.reply_finished("SH_f", interrupted=False) is not None
    tracker.metrics(tts("SH_f", ttfb=0.3))  # arrives after the turn was summarised
    tracker.first_audio("SH_f", 99.0)
    assert tracker.reply_finished("SH_f", interrupted=False) is None
    assert tracker.reply_finished(None, interrupted=False) is None
    assert len(emitted) == 1


def test_end_of_speech_is_claimed_once(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    """A reply validated without a fresh end of speech gets no e2e (not a stale huge one)."""
    tracker.user_stopped_speaking(1.0)
    tracker.metrics(eou("SH_g"))
    tracker.first_audio("SH_g", 2.0)
    tracker.reply_finished("SH_g", interrupted=False)
    tracker.metrics(eou("SH_h"))
    tracker.first_audio("SH_h", 30.0)
    tracker.reply_finished("SH_h", interrupted=False)
    assert [t["e2e_latency"] for t in emitted] == [1.0, None]


def test_current_reply_skips_abandoned_preemptive_one(
    tracker: TurnTracker, emitted: list[dict[str, Any]]
) -> None:
    """Preemptive synthesis prepares a reply that is never validated; audio goes to the next."""
    tracker.first_text("SH_stale", 1.0)
    tracker.metrics(llm("SH_stale", ttft=0.3))
    tracker.user_stopped_speaking(2.0)
    tracker.first_text("SH_real", 2.5)
    tracker.metrics(eou("SH_real"))
    tracker.first_audio(None, 3.0)
    tracker.reply_finished(None, interrupted=False)
    assert [t["sequence_id"] for t in emitted] == ["SH_real"]
    assert emitted[0]["e2e_latency"] == 1.0
    # the abandoned reply is forgotten: a later anonymous first audio does not land on it
    tracker.first_audio(None, 4.0)
    assert tracker.reply_finished(None, interrupted=False) is None


def test_greeting_without_user_turn(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    tracker.first_text("SH_hello", 0.0)
    tracker.first_audio(None, 0.2)
    tracker.metrics(tts("SH_hello", ttfb=0.5))
    tracker.reply_finished(None, interrupted=False)
    assert emitted[0]["sequence_id"] == "SH_hello"
    assert emitted[0]["e2e_latency"] is None
    assert emitted[0]["tts_ttfb"] == 0.2


def test_replies_in_order(tracker: TurnTracker, emitted: list[dict[str, Any]]) -> None:
    for i in range(3):
        tracker.user_stopped_speaking(10.0 * i)
        tracker.metrics(eou(f"SH_{i}"))
    for i in range(3):
        tracker.first_audio(None, 10.0 * i + 1.5)
        tracker.reply_finished(None, interrupted=False)
    assert [(t["sequence_id"], t["e2e_latency"]) for t in emitted] == [
        ("SH_0", 1.5),
        ("SH_1", 1.5),
        ("SH_2", 1.5),
    ]


def test_metrics_without_sequence_are_ignored(
    tracker: TurnTracker, emitted: list[dict[str, Any]]
) -> None:
    tracker.metrics(
        PipelineVADMetrics(
            timestamp=WALL,
            idle_time=0.0,
            inference_duration_total=0.01,
            inference_count=10,
            label="v",
        )
    )
    assert tracker.reply_finished(None, interrupted=False) is None
    assert emitted == []


def test_transcripts_only_when_configured(emitted: list[dict[str, Any]]) -> None:
    quiet = TurnTracker(emitted.append)
    quiet.metrics(eou("SH_q"))
    quiet.reply_finished("SH_q", interrupted=False, user_text="my secret", agent_text="ok")
    assert "user_text" not in emitted[-1]
    assert "agent_text" not in emitted[-1]
    chatty = TurnTracker(emitted.append, include_text=True)
    chatty.metrics(eou("SH_t"))
    chatty.reply_finished("SH_t", interrupted=False, user_text="hello", agent_text="hi there")
    assert emitted[-1]["user_text"] == "hello"
    assert emitted[-1]["agent_text"] == "hi there"
