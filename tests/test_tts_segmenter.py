"""SegmentingTTS: the provider gets the first sentence while the LLM is still generating.

Everything runs through the real livekit-plugins-deepgram 0.7.4 TTS against the loopback speak
server; text is pushed like an LLM streaming 50 tokens/s.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator

import aiohttp
import numpy as np
import pytest
from livekit.agents import tts
from livekit.agents.metrics import TTSMetrics
from livekit.plugins import deepgram

from tests.loopback.deepgram_server import DeepgramLoopback
from worker.providers.segmenting_tts import SegmenterOptions, SegmentingTTS, TextSegmenter

SENTENCES = [
    "Sure, I can help you with that right away.",
    "The weather in Paris is sunny and warm today.",
    "Do you want the forecast for tomorrow as well?",
]
TOKEN_INTERVAL = 0.02  # 50 tokens/s


def _tokens(text: str) -> list[str]:
    """LLM-like tokens: words with their leading space."""
    words = text.split(" ")
    return [words[0]] + [" " + w for w in words[1:]]


REPLY_TOKENS = _tokens(" ".join(SENTENCES))


@pytest.fixture
async def server() -> AsyncIterator[DeepgramLoopback]:
    async with DeepgramLoopback() as srv:
        yield srv


@pytest.fixture
async def deepgram_tts(server) -> AsyncIterator[deepgram.TTS]:
    async with aiohttp.ClientSession() as http:
        client = deepgram.TTS(base_url=server.tts_url, http_session=http, api_key="fake-key")
        try:
            yield client
        finally:
            await client.aclose()


async def _speak_like_an_llm(
    stream: tts.SynthesizeStream, tokens: list[str]
) -> tuple[float, list[tts.SynthesizedAudio]]:
    """Push ``tokens`` at 50 tokens/s, then end_input (what VoicePipelineAgent does).

    Returns when the last token was pushed and every audio event, read concurrently.
    """

    async def read() -> list[tts.SynthesizedAudio]:
        return [ev async for ev in stream]

    reader = asyncio.create_task(read())
    for token in tokens:
        stream.push_text(token)
        await asyncio.sleep(TOKEN_INTERVAL)
    last_push_at = time.monotonic()
    stream.end_input()
    events = await reader
    await stream.aclose()
    return last_push_at, events


def _pcm(events: list[tts.SynthesizedAudio]) -> np.ndarray:
    return np.concatenate([np.frombuffer(ev.frame.data, dtype=np.int16) for ev in events])


def _words(text: str) -> list[str]:
    return text.split()


async def test_stock_deepgram_stream_flushes_once_after_the_whole_reply(server, deepgram_tts):
    """Baseline fact (livekit-plugins-deepgram 0.7.4): one Flush, only after end_input().

    The words go out as they arrive, but Deepgram synthesises on Flush, so TTS waits for the
    whole LLM reply. If this starts failing, the plugin changed and SegmentingTTS may be moot.
    """
    last_push_at, events = await _speak_like_an_llm(deepgram_tts.stream(), REPLY_TOKENS)

    flushes = server.flushes
    assert len(flushes) == 1
    assert flushes[0].flush_at > last_push_at
    assert _words(flushes[0].text) == _words(" ".join(SENTENCES))
    first_speak = next(m for m in server.speak_messages if m.type == "Speak")
    assert first_speak.at < last_push_at
    assert events


async def test_segmenting_tts_flushes_the_first_sentence_while_text_still_streams(
    server, deepgram_tts
):
    segmenting = SegmentingTTS(deepgram_tts)
    # VoicePipelineAgent tags TTS metrics with a context variable read inside the handler:
    # the forwarded metrics must be emitted in the context the stream was created in.
    reply_id = contextvars.ContextVar[str]("reply_id")
    metrics: list[tuple[TTSMetrics, str | None]] = []
    segmenting.on("metrics_collected", lambda m: metrics.append((m, reply_id.get(None))))

    token = reply_id.set("reply-1")
    stream = segmenting.stream()
    reply_id.reset(token)
    last_push_at, events = await _speak_like_an_llm(stream, REPLY_TOKENS)

    flushes = server.flushes
    # Synthesis of the first segment was requested before the LLM had finished.
    assert flushes[0].flush_at < last_push_at
    assert len(flushes) >= 3
    # The segments are the whole reply, in order, nothing lost or repeated ...
    assert _words(" ".join(f.text for f in flushes)) == _words(" ".join(SENTENCES))
    # ... and the audio is exactly what the server spoke for them, in that order.
    expected = np.concatenate(
        [await server.synthesize(f.text, deepgram_tts.sample_rate) for f in flushes]
    )
    np.testing.assert_array_equal(_pcm(events), expected)

    # The caller flushed once (end_input): one segment id, one final frame, at the end.
    assert len({ev.segment_id for ev in events}) == 1
    assert [ev.is_final for ev in events].count(True) == 1
    assert events[-1].is_final
    assert len({ev.request_id for ev in events}) == 1

    # The inner TTS's metrics are re-emitted: one per internal segment, with its text length.
    assert [m.characters_count for m, _ in metrics] == [len(f.text.strip()) for f in flushes]
    assert all(m.ttfb > 0 for m, _ in metrics)
    assert {ctx for _, ctx in metrics} == {"reply-1"}
    assert segmenting.sample_rate == deepgram_tts.sample_rate
    assert segmenting.num_channels == deepgram_tts.num_channels
    assert segmenting.capabilities.streaming


async def test_caller_flushes_still_delimit_segments(server, deepgram_tts):
    segmenting = SegmentingTTS(deepgram_tts)
    stream = segmenting.stream()
    stream.push_text(SENTENCES[0] + " " + SENTENCES[1])
    stream.flush()
    stream.push_text(SENTENCES[2])
    stream.end_input()
    events = [ev async for ev in stream]
    await stream.aclose()

    segment_ids = list(dict.fromkeys(ev.segment_id for ev in events))
    assert len(segment_ids) == 2
    for seg_id in segment_ids:
        finals = [ev.is_final for ev in events if ev.segment_id == seg_id]
        assert finals.count(True) == 1
        assert finals[-1]
    # Each caller segment was still split for the provider: the first into two sentences.
    assert [f.text.strip() for f in server.flushes] == SENTENCES


def _tts_tasks() -> set[asyncio.Task[object]]:
    """Tasks running livekit's or the worker's code (not the loopback server's, not pytest's)."""
    current = asyncio.current_task()
    found = set()
    for task in asyncio.all_tasks():
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        if task is not current and ("/livekit/" in filename or "/worker/" in filename):
            found.add(task)
    return found


async def test_closing_mid_reply_closes_the_inner_stream(server, deepgram_tts):
    segmenting = SegmentingTTS(deepgram_tts)
    before = _tts_tasks()
    stream = segmenting.stream()
    first_audio = asyncio.Event()

    async def read() -> None:
        async for _ in stream:
            first_audio.set()

    reader = asyncio.create_task(read())
    for token in REPLY_TOKENS[: len(REPLY_TOKENS) // 2]:
        stream.push_text(token)
        await asyncio.sleep(TOKEN_INTERVAL)
    await asyncio.wait_for(first_audio.wait(), timeout=10)

    await stream.aclose()  # an interruption: the pipeline closes the stream mid-reply
    await asyncio.wait_for(reader, timeout=10)

    assert _tts_tasks() - before == set()
    with pytest.raises(RuntimeError):
        stream.push_text(" more")


def _segments(text: str, options: SegmenterOptions | None = None) -> list[str]:
    segmenter = TextSegmenter(options)
    out: list[str] = []
    for token in _tokens(text):
        out += segmenter.push(token)
    return out + segmenter.flush()


def test_segmenter_cuts_the_first_segment_early_and_later_ones_at_sentences():
    text = "Well, I can help you with that, of course. The weather is nice today. Bye!"
    assert _segments(text) == [
        "Well, I can help you with that,",  # a clause of 4+ words: goes out first
        "of course. The weather is nice today.",  # short sentences merge (20 chars min)
        "Bye!",
    ]
    # A short first sentence is merged with the next; numbers and abbreviations are not cuts.
    assert _segments("Yes. I can do that. It takes a minute.") == [
        "Yes. I can do that.",
        "It takes a minute.",
    ]
    assert _segments("It costs about 3,000 dollars, Dr. Smith says. OK then.") == [
        "It costs about 3,000 dollars,",
        "Dr. Smith says. OK then.",
    ]
    no_clauses = SegmenterOptions(first_clause_min_words=0)
    assert _segments("Well, I can help you with that, of course. Bye now.", no_clauses) == [
        "Well, I can help you with that, of course.",
        "Bye now.",
    ]


def test_segmenter_waits_for_the_next_word_and_normalises_whitespace():
    segmenter = TextSegmenter()
    assert segmenter.push("Hello there, my good friend,") == []  # the clause may go on
    assert segmenter.push(" how") == ["Hello there, my good friend,"]
    assert segmenter.push(" are you doing today?\n\nI am") == ["how are you doing today?"]
    assert segmenter.push(" fine.") == []
    assert segmenter.flush() == ["I am fine."]
    assert segmenter.flush() == []
    assert segmenter.segments_emitted == 3


def test_the_first_sentence_goes_out_at_its_mark_unless_it_may_go_on():
    segmenter = TextSegmenter()
    assert segmenter.push("The weather looks good.") == ["The weather looks good."]
    assert segmenter.push(" It is") == []  # later sentences still wait for the next one
    # An abbreviation, an initial or a digit before the period may be mid-sentence.
    for head in ("Ask Dr.", "Ask John F.", "It costs 3."):
        segmenter = TextSegmenter()
        assert segmenter.push(head) == [], head
    waiting = TextSegmenter(SegmenterOptions(first_cut_at_sentence_mark=False))
    assert waiting.push("The weather looks good.") == []
    assert waiting.push(" It") == ["The weather looks good."]
    assert TextSegmenter().push("Yes.") == []  # shorter than first_min_chars: merged


async def test_non_streaming_tts_is_rejected(server):
    async with aiohttp.ClientSession() as http:
        rest = deepgram.TTS(
            base_url=server.tts_url, http_session=http, api_key="fake-key", use_streaming=False
        )
        with pytest.raises(ValueError, match="streaming"):
            SegmentingTTS(rest)
        await rest.aclose()
