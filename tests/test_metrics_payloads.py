"""Framework metric objects -> protocol payloads, VAD windows, and the 15 KiB bound."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
from livekit.agents.metrics import (
    PipelineEOUMetrics,
    PipelineLLMMetrics,
    PipelineSTTMetrics,
    PipelineTTSMetrics,
    PipelineVADMetrics,
    UsageSummary,
)

from worker.metrics.payloads import (
    MAX_PAYLOAD_BYTES,
    TurnCounts,
    VadAggregator,
    encode_payload,
    metric_payload,
    session_payload,
)

TS = 1_700_000_000.123456


def stt() -> PipelineSTTMetrics:
    return PipelineSTTMetrics(
        request_id="req-1",
        timestamp=TS,
        duration=2.50004,
        label="livekit.plugins.deepgram.stt.STT",
        audio_duration=2.4,
        streamed=True,
        error=None,
    )


def eou() -> PipelineEOUMetrics:
    return PipelineEOUMetrics(
        sequence_id="SH_1", timestamp=TS, end_of_utterance_delay=0.61234, transcription_delay=0.18
    )


def llm(ttft: float = 0.3) -> PipelineLLMMetrics:
    return PipelineLLMMetrics(
        request_id="chatcmpl-1",
        timestamp=TS,
        ttft=ttft,
        duration=0.85,
        label="plugins.openai_llm.LLM",
        cancelled=False,
        completion_tokens=25,
        prompt_tokens=120,
        total_tokens=145,
        tokens_per_second=29.4,
        error=None,
        sequence_id="SH_1",
    )


def tts(ttfb: float = 0.7) -> PipelineTTSMetrics:
    return PipelineTTSMetrics(
        request_id="tts-1",
        timestamp=TS,
        ttfb=ttfb,
        duration=1.2,
        audio_duration=3.1,
        cancelled=False,
        characters_count=42,
        label="livekit.plugins.deepgram.tts.TTS",
        streamed=True,
        error=None,
        sequence_id="SH_1",
    )


def vad(ts: float, count: int = 31, total: float = 0.031) -> PipelineVADMetrics:
    return PipelineVADMetrics(
        timestamp=ts,
        idle_time=0.5,
        inference_duration_total=total,
        inference_count=count,
        label="livekit.plugins.silero.vad.VAD",
    )


def test_stt_payload() -> None:
    assert metric_payload(stt()) == {
        "v": 1,
        "type": "stt",
        "ts": 1700000000.123,
        "duration": 2.5,
        "audio_duration": 2.4,
        "streamed": True,
        "label": "livekit.plugins.deepgram.stt.STT",
        "error": None,
    }


def test_eou_payload() -> None:
    assert metric_payload(eou()) == {
        "v": 1,
        "type": "eou",
        "ts": 1700000000.123,
        "sequence_id": "SH_1",
        "end_of_utterance_delay": 0.6123,
        "transcription_delay": 0.18,
    }


def test_llm_payload() -> None:
    assert metric_payload(llm()) == {
        "v": 1,
        "type": "llm",
        "ts": 1700000000.123,
        "sequence_id": "SH_1",
        "ttft": 0.3,
        "duration": 0.85,
        "prompt_tokens": 120,
        "completion_tokens": 25,
        "cancelled": False,
        "label": "plugins.openai_llm.LLM",
        "error": None,
    }


def test_tts_payload() -> None:
    assert metric_payload(tts()) == {
        "v": 1,
        "type": "tts",
        "ts": 1700000000.123,
        "sequence_id": "SH_1",
        "ttfb": 0.7,
        "duration": 1.2,
        "audio_duration": 3.1,
        "characters": 42,
        "cancelled": False,
        "label": "livekit.plugins.deepgram.tts.TTS",
        "error": None,
    }


def test_framework_not_measured_sentinel_becomes_null() -> None:
    llm_payload = metric_payload(llm(ttft=-1.0))
    tts_payload = metric_payload(tts(ttfb=-1.0))
    assert llm_payload is not None
    assert llm_payload["ttft"] is None
    assert tts_payload is not None
    assert tts_payload["ttfb"] is None


def test_vad_metrics_are_not_one_payload_each() -> None:
    assert metric_payload(vad(TS)) is None


def test_vad_aggregated_per_window() -> None:
    agg = VadAggregator(window=10.0)
    out = [p for i in range(25) if (p := agg.add(vad(TS + i))) is not None]
    assert len(out) == 2  # seconds 0..10 and 11..21
    assert out[0] == {
        "v": 1,
        "type": "vad",
        "ts": round(TS + 10, 3),
        "window": 10.0,
        "reports": 11,
        "inference_count": 11 * 31,
        "inference_duration_total": 0.341,
        "inference_duration_avg": 0.001,
        "idle_time": 0.5,
        "label": "livekit.plugins.silero.vad.VAD",
    }
    rest = agg.flush()
    assert rest is not None
    assert rest["reports"] == 3
    assert rest["window"] == 2.0
    assert agg.flush() is None


def test_session_payload() -> None:
    usage = UsageSummary(
        llm_prompt_tokens=300,
        llm_completion_tokens=60,
        tts_characters_count=120,
        stt_audio_duration=7.25,
    )
    p = session_payload(
        usage,
        TurnCounts(turns=3, interrupted=1),
        duration=42.00001,
        data_messages={"accepted": 2, "schema": 1},
        ts=TS,
    )
    assert p == {
        "v": 1,
        "type": "session",
        "ts": 1700000000.123,
        "duration": 42.0,
        "turns": 3,
        "interrupted_turns": 1,
        "apologised_turns": 0,
        "error_turns": 0,
        "llm_prompt_tokens": 300,
        "llm_completion_tokens": 60,
        "tts_characters": 120,
        "stt_audio_duration": 7.25,
        "data_messages": {"accepted": 2, "schema": 1},
    }


def test_small_payload_encodes_compact_and_unchanged() -> None:
    p = metric_payload(eou())
    assert p is not None
    data = encode_payload(p)
    assert json.loads(data) == p
    assert b" " not in data


HOSTILE_STRINGS = [
    "a" * 1_000_000,
    "é🎤" * 100_000,  # multi-byte: a cut must not split a character
    '"\\' * 50_000,  # doubles in size when escaped
    "\x00\x01\x1f" * 30_000,  # six bytes each when escaped
    "ok\ud800" * 10_000,  # lone surrogates are not UTF-8
]


@pytest.mark.parametrize(
    "huge", HOSTILE_STRINGS, ids=["ascii", "multibyte", "quotes", "control", "surrogate"]
)
def test_huge_strings_are_cut_never_the_structure(huge: str) -> None:
    payload = {
        "v": 1,
        "type": "turn",
        "ts": TS,
        "sequence_id": "SH_1",
        "user_text": huge,
        "agent_text": huge[: len(huge) // 3],
        "e2e_latency": 1.2,
        "nested": {"list": [huge[:5000]] * 20, "n": float("nan")},
    }
    data = encode_payload(payload)
    assert len(data) <= MAX_PAYLOAD_BYTES
    decoded = json.loads(data.decode("utf-8"))
    assert decoded["v"] == 1
    assert decoded["type"] == "turn"
    assert decoded["ts"] == TS
    assert decoded["sequence_id"] == "SH_1"
    assert decoded["e2e_latency"] == 1.2
    assert decoded["truncated"] is True
    assert decoded["user_text"].endswith("…")
    assert decoded["nested"]["n"] is None
    assert len(data) > MAX_PAYLOAD_BYTES // 2  # cut to fit, not emptied


def test_random_payloads_always_fit() -> None:
    rng = random.Random(7)
    alphabet = 'abc"\\\n\x00é漢🎤'
    for _ in range(40):
        payload: dict[str, object] = {"v": 1, "type": "session", "ts": TS}
        for k in range(rng.randint(1, 30)):
            n = rng.choice([0, 10, 1000, 20_000])
            value = "".join(rng.choice(alphabet) for _ in range(n))
            payload[f"k{k}"] = rng.choice([value, [value] * rng.randint(0, 50), {"x": value}])
        data = encode_payload(payload)
        assert len(data) <= MAX_PAYLOAD_BYTES
        assert json.loads(data)["type"] == "session"


def test_long_lists_of_numbers_are_shortened() -> None:
    data = encode_payload({"v": 1, "type": "vad", "ts": TS, "samples": list(range(20_000))})
    decoded = json.loads(data)
    assert len(data) <= MAX_PAYLOAD_BYTES
    assert decoded["truncated"] is True
    assert decoded["samples"][:3] == [0, 1, 2]


def test_session_usage_says_not_measured_until_an_llm_request_reports_usage() -> None:
    from worker.metrics.payloads import SessionUsage

    usage = SessionUsage()
    unreported = replace(llm(), prompt_tokens=0, completion_tokens=0, total_tokens=0)
    usage.add(unreported)
    usage.add(stt())
    p = session_payload(usage, TurnCounts(1, 0), duration=2.0, ts=TS)
    assert (p["llm_prompt_tokens"], p["llm_completion_tokens"]) == (None, None)
    assert p["stt_audio_duration"] == stt().audio_duration
    assert metric_payload(unreported)["prompt_tokens"] is None  # type: ignore[index]
    usage.add(llm())
    usage.add(unreported)  # a cancelled request adds nothing, and does not erase the rest
    p = session_payload(usage, TurnCounts(1, 0), duration=2.0, ts=TS)
    assert (p["llm_prompt_tokens"], p["llm_completion_tokens"]) == (
        llm().prompt_tokens,
        llm().completion_tokens,
    )
