"""Start speaking at the first sentence: a streaming-TTS wrapper that flushes per text segment.

Why: VoicePipelineAgent pushes every LLM token into ONE ``tts.stream()`` and calls
``end_input()`` (the only flush) after the last token (pipeline/agent_output.py). The Deepgram
0.7.4 ``SynthesizeStream`` turns each ``flush()`` into one Deepgram ``Flush`` and the provider
synthesises only on ``Flush``, so synthesis starts once the LLM has finished the whole reply:
~0.55 s of end-to-end latency for a two-sentence answer at 50 tokens/s.

:class:`SegmentingTTS` wraps any streaming TTS. Its stream cuts the incoming text into segments
with :class:`TextSegmenter` (the framework's sentence tokenizer, with a small minimum for the
first segment and, optionally, a cut at a clause mark once the first segment has a few words)
and calls the inner stream's ``flush()`` after each one, so the provider synthesises the first
sentence while the LLM is still generating the rest.

Output semantics (what consumers see is as if the inner TTS had been flushed only where the
caller flushed): frames come out in order; ``request_id`` is the inner stream's; ``segment_id``
changes only at the caller's ``flush()``/``end_input()``; ``is_final`` marks the last frame of a
caller segment, not of each internal sentence. Metrics are the inner TTS's (one TTSMetrics per
internal segment, with a TTFB per sentence), re-emitted by the wrapper. Closing the stream
closes the inner stream. Retries are the inner stream's business: the wrapper does not retry.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import re
from collections.abc import AsyncIterable
from dataclasses import dataclass

from livekit.agents import APIConnectOptions, tokenize, tts, utils
from livekit.agents.metrics import TTSMetrics

logger = logging.getLogger("worker.tts_segmenter")

_WHITESPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class SegmenterOptions:
    """Where :class:`TextSegmenter` cuts the text."""

    first_min_chars: int = 8
    """Shortest first segment cut at a sentence end ("Sure." alone waits for more words)."""
    first_clause_min_words: int = 4
    """Cut the first segment at a clause mark once it has this many words (0: never)."""
    clause_marks: str = ",;:"
    min_sentence_len: int = 20
    """Later segments: the framework's default minimum (shorter sentences are merged)."""


class TextSegmenter:
    """Cuts streamed text into TTS segments. Pure and synchronous: push text, get segments.

    A sentence is complete once the next one has begun (the framework's rule, see
    ``tokenize.token_stream.BufferedTokenStream``); a clause mark counts once the next word has
    begun. The first segment uses ``first_min_chars`` and may end at a clause mark; later ones
    are whole sentences of at least ``min_sentence_len`` characters.
    """

    def __init__(self, options: SegmenterOptions | None = None) -> None:
        self._opts = options or SegmenterOptions()
        self._first = tokenize.basic.SentenceTokenizer(min_sentence_len=self._opts.first_min_chars)
        self._rest = tokenize.basic.SentenceTokenizer(min_sentence_len=self._opts.min_sentence_len)
        marks = re.escape(self._opts.clause_marks)
        self._clause = re.compile(rf"[{marks}](?=\s+\S)") if marks else None
        self._buf = ""
        self._emitted = 0

    @property
    def segments_emitted(self) -> int:
        return self._emitted

    def push(self, text: str) -> list[str]:
        """Add streamed text; return the segments it completed (often none)."""
        # One space for any whitespace run: the tokenizer joins merged sentences with one space,
        # so the segment text can be found back in the buffer.
        self._buf = _WHITESPACE.sub(" ", self._buf + text).lstrip()
        segments: list[str] = []
        while (segment := self._cut()) is not None:
            segments.append(segment)
        return segments

    def flush(self) -> list[str]:
        """End of the caller's segment: return whatever text is left as one last segment."""
        rest, self._buf = self._buf.strip(), ""
        if not rest:
            return []
        self._emitted += 1
        return [rest]

    def _cut(self) -> str | None:
        first = self._emitted == 0
        tokenizer = self._first if first else self._rest
        end: int | None = None
        sentences = tokenizer.tokenize(self._buf)
        if len(sentences) >= 2:
            head = sentences[0]
            start = self._buf.find(head)
            # Not found only when the tokenizer rewrote quotes (same length): it starts at 0.
            end = max(start, 0) + len(head)
        if first:
            clause_end = self._clause_end(limit=end)
            if clause_end is not None:
                end = clause_end
        if not end:
            return None
        segment = self._buf[:end].strip()
        self._buf = self._buf[end:].lstrip()
        if not segment:
            return None
        self._emitted += 1
        return segment

    def _clause_end(self, *, limit: int | None) -> int | None:
        if self._clause is None or self._opts.first_clause_min_words <= 0:
            return None
        for match in self._clause.finditer(self._buf):
            end = match.end()
            if limit is not None and end >= limit:
                return None
            if len(self._buf[:end].split()) >= self._opts.first_clause_min_words:
                return end
        return None


class SegmentingTTS(tts.TTS):
    """Wraps a streaming TTS so its streams flush at every text segment (see module docstring).

    The wrapper owns ``inner``: :meth:`aclose` closes it. ``synthesize()`` and ``prewarm()`` go
    straight to ``inner``; capabilities, sample rate and channels are ``inner``'s.
    """

    def __init__(self, inner: tts.TTS, *, options: SegmenterOptions | None = None) -> None:
        if not inner.capabilities.streaming:
            raise ValueError(
                "SegmentingTTS needs a streaming TTS (wrap others in tts.StreamAdapter instead)"
            )
        super().__init__(
            capabilities=inner.capabilities,
            sample_rate=inner.sample_rate,
            num_channels=inner.num_channels,
        )
        self._inner = inner
        self._opts = options or SegmenterOptions()
        inner.on("metrics_collected", self._forward_metrics)

    @property
    def inner(self) -> tts.TTS:
        return self._inner

    @property
    def options(self) -> SegmenterOptions:
        return self._opts

    @property
    def sample_rate(self) -> int:
        return self._inner.sample_rate

    @property
    def num_channels(self) -> int:
        return self._inner.num_channels

    def _forward_metrics(self, metrics: TTSMetrics) -> None:
        self.emit("metrics_collected", metrics)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions | None = None
    ) -> tts.ChunkedStream:
        return self._inner.synthesize(text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions | None = None) -> SegmentingStream:
        return SegmentingStream(tts=self, conn_options=conn_options)

    def prewarm(self) -> None:
        self._inner.prewarm()

    async def aclose(self) -> None:
        self._inner.off("metrics_collected", self._forward_metrics)
        await self._inner.aclose()


class SegmentingStream(tts.SynthesizeStream):
    """One reply: text in, audio out, the inner stream flushed at every segment."""

    def __init__(
        self, *, tts: SegmentingTTS, conn_options: APIConnectOptions | None = None
    ) -> None:
        # The inner stream retries on its own; a retry here would replay nothing (the input is
        # consumed) and multiply the attempts, so this level never retries.
        own = dataclasses.replace(conn_options or tts._conn_options, max_retry=0)
        super().__init__(tts=tts, conn_options=own)
        self._wrapper = tts
        self._inner_conn_options = conn_options

    async def _metrics_monitor_task(self, event_aiter: AsyncIterable[tts.SynthesizedAudio]) -> None:
        # Metrics come from the inner TTS (forwarded by SegmentingTTS). Drain this copy of the
        # events so the tee does not keep every frame of the reply buffered.
        async for _ in event_aiter:
            pass

    async def _run(self) -> None:
        inner = self._wrapper.inner.stream(conn_options=self._inner_conn_options)
        segmenter = TextSegmenter(self._wrapper.options)
        # One entry per inner flush, True when it also ends a caller segment.
        ends_caller_segment: collections.deque[bool] = collections.deque()

        def send(segments: list[str], *, caller_flush: bool) -> None:
            for i, text in enumerate(segments):
                inner.push_text(text)
                inner.flush()
                ends_caller_segment.append(caller_flush and i == len(segments) - 1)
                logger.debug(
                    "tts segment flushed",
                    extra={"segment": segmenter.segments_emitted, "chars": len(text)},
                )

        async def forward_input() -> None:
            try:
                async for data in self._input_ch:
                    if isinstance(data, self._FlushSentinel):
                        send(segmenter.flush(), caller_flush=True)
                    else:
                        send(segmenter.push(data), caller_flush=False)
                send(segmenter.flush(), caller_flush=True)
                inner.end_input()
            except RuntimeError:
                # The inner stream closed (it failed): forward_output raises its error.
                logger.debug("inner tts stream closed before the input ended")

        async def forward_output() -> None:
            segment_id = utils.shortuuid()
            async for ev in inner:
                is_final = False
                if ev.is_final:
                    is_final = ends_caller_segment.popleft() if ends_caller_segment else True
                self._event_ch.send_nowait(
                    tts.SynthesizedAudio(
                        frame=ev.frame,
                        request_id=ev.request_id,
                        is_final=is_final,
                        segment_id=segment_id,
                        delta_text=ev.delta_text,
                    )
                )
                if is_final:
                    segment_id = utils.shortuuid()

        tasks = [
            asyncio.create_task(forward_input(), name="SegmentingStream.forward_input"),
            asyncio.create_task(forward_output(), name="SegmentingStream.forward_output"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.gracefully_cancel(*tasks)
            await inner.aclose()
